//! A contact map as a reader wants it: the cells of [`render_contact_image`] (prediction
//! above the diagonal, truth below) framed by residue-numbered axes, a colour bar of the
//! probabilities, and a title with the protein, its length and — when the truth is known —
//! its long-range precision at L and MCC (`metrics::contact`).
//!
//! Layout (pixels): the title band on top, the map of `L × scale` pixels with the y axis
//! on its left and the x axis below, the colour bar and the legend of the lower triangle
//! on the right. Residue `k` (1-based) of the chain is the cell centred on coordinate `k`
//! of the x axis and `−k` of the y axis (so the first residue is at the top left, as in a
//! matrix); tick labels show the true residue numbers (the author numbering of a
//! structure, 1…L for a sequence). plotters draws the text and axes; the map and the colour
//! bar are raster images copied in afterwards, so that every cell is exactly `scale`
//! pixels.

use anyhow::{bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

use super::{draw_picture, font, plotting_error, write_picture, RgbImage};
use crate::data::contact_io::{probability_colour, render_contact_image, NOT_EVALUATED, TRUE_CONTACT};
use crate::metrics::contact::{ProteinScores, SeparationRange};

/// Height of the title band.
pub const TITLE_HEIGHT: u32 = 64;
/// Gap between the title band and the map.
pub const TOP_GAP: u32 = 10;
/// Width of the y-axis band (tick labels and axis name) left of the map.
pub const LEFT: u32 = 72;
/// Height of the x-axis band below the map.
pub const BOTTOM: u32 = 64;
/// Gap between the map and the colour-bar band.
pub const MAP_GAP: u32 = 18;
/// Width of the colour-bar band (bar, tick labels, legend).
pub const BAR_BAND: u32 = 132;
/// Offset and width of the colour bar inside its band.
pub const BAR_OFFSET: u32 = 8;
pub const BAR_WIDTH: u32 = 22;
/// The map is drawn at least this many pixels wide (the scale is raised to reach it).
pub const MIN_MAP_SIDE: u32 = 300;

/// A residue's number as the source gives it (author numbering and insertion code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidueNumber {
    pub number: i32,
    pub ins_code: Option<char>,
}

impl ResidueNumber {
    /// Residues 1…len (a sequence without a structure).
    pub fn sequential(len: usize) -> Vec<ResidueNumber> {
        (1..=len as i32).map(|number| ResidueNumber { number, ins_code: None }).collect()
    }

    fn label(self) -> String {
        match self.ins_code {
            Some(c) => format!("{}{c}", self.number),
            None => self.number.to_string(),
        }
    }
}

/// One protein's map and what its picture says about it.
#[derive(Debug, Clone)]
pub struct ContactPicture<'a> {
    pub name: &'a str,
    /// L×L probabilities (the upper triangle is drawn).
    pub probs: &'a [f32],
    /// L×L labels 0 / 1 / other (not scored), e.g. `ContactLabels::masked`.
    pub truth: Option<&'a [u8]>,
    pub len: usize,
    /// The residue numbers of the chain; `None` numbers them 1…L.
    pub residues: Option<&'a [ResidueNumber]>,
    /// Scores against the truth (shown in the title).
    pub scores: Option<&'a ProteinScores>,
    /// Smallest |i − j| scored (shown with the scores).
    pub min_sep: usize,
}

/// Geometry of a picture: where the map and the colour bar go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    /// Pixels per residue.
    pub scale: u32,
    /// Side of the map in pixels (`len × scale`).
    pub side: u32,
    /// Top-left pixel of the map.
    pub map_origin: (u32, u32),
    /// Top-left pixel of the colour bar (its height is `side`).
    pub bar_origin: (u32, u32),
}

impl Layout {
    /// The layout for `len` residues at `scale` pixels each (raised so that the map is at
    /// least [`MIN_MAP_SIDE`] pixels).
    pub fn new(len: usize, scale: u32) -> Result<Layout> {
        if len == 0 || scale == 0 {
            bail!("cannot draw an empty contact map (L = {len}, scale = {scale})");
        }
        let scale = scale.max(MIN_MAP_SIDE.div_ceil(len as u32));
        let side = len as u64 * scale as u64;
        if side > 32_768 {
            bail!("contact picture would be {side} pixels wide; use a smaller --png-scale");
        }
        let side = side as u32;
        let map_origin = (LEFT, TITLE_HEIGHT + TOP_GAP);
        let bar_origin = (LEFT + side + MAP_GAP + BAR_OFFSET, map_origin.1);
        Ok(Layout {
            width: LEFT + side + MAP_GAP + BAR_BAND,
            height: TITLE_HEIGHT + TOP_GAP + side + BOTTOM,
            scale,
            side,
            map_origin,
            bar_origin,
        })
    }
}

impl ContactPicture<'_> {
    fn residue_numbers(&self) -> Result<Vec<ResidueNumber>> {
        match self.residues {
            Some(r) if r.len() != self.len => {
                bail!("{}: {} residue numbers for a map of {} residues", self.name, r.len(), self.len)
            }
            Some(r) => Ok(r.to_vec()),
            None => Ok(ResidueNumber::sequential(self.len)),
        }
    }

    fn title(&self) -> String {
        format!("{} — L = {} residues", self.name, self.len)
    }

    fn subtitle(&self) -> String {
        match (self.truth, self.scores) {
            (Some(_), Some(s)) => format!(
                "long-range P@L {} · MCC {} (p > 0.5, |i − j| ≥ {})   upper: predicted (true contacts outlined), lower: true (Cβ < 8 Å)",
                format_score(s.precision[range_index(SeparationRange::Long)][0]),
                format_score(s.mcc),
                self.min_sep
            ),
            (Some(_), None) => "upper: predicted (true contacts outlined), lower: true contacts (Cβ < 8 Å)".into(),
            _ => "predicted contact probability (no structure given: mirrored below the diagonal)".into(),
        }
    }

    /// Draw the picture at `scale` pixels per residue.
    pub fn render(&self, scale: u32) -> Result<RgbImage> {
        let layout = Layout::new(self.len, scale)?;
        let numbers = self.residue_numbers()?;
        let cells = render_contact_image(self.probs, self.truth, self.len, layout.scale)?;
        let mut image = draw_picture(layout.width, layout.height, |root| {
            root.draw_text(&self.title(), &(font::FAMILY, 22).into_font().color(&BLACK), (12, 10))
                .map_err(plotting_error)?;
            root.draw_text(&self.subtitle(), &(font::FAMILY, 14).into_font().color(&BLACK), (12, 40))
                .map_err(plotting_error)?;
            draw_axes(root, &layout, &numbers, self.residues.is_some())?;
            draw_colour_bar_frame(root, &layout)?;
            if self.truth.is_some() {
                draw_truth_legend(root, &layout)?;
            }
            Ok(())
        })?;
        blit(&mut image, &cells, layout.map_origin);
        if let Some(truth) = self.truth {
            outline_true_contacts(&mut image, truth, self.len, &layout);
        }
        blit(&mut image, &colour_bar(layout.side), layout.bar_origin);
        Ok(image)
    }

    /// Render and write a PNG; `scale` `None` picks [`default_scale`](crate::data::contact_io::default_scale).
    pub fn write(&self, path: &Path, scale: Option<u32>) -> Result<()> {
        let scale = scale.unwrap_or(crate::data::contact_io::default_scale(self.len));
        write_picture(path, &self.render(scale)?)
    }
}

fn range_index(range: SeparationRange) -> usize {
    SeparationRange::ALL.iter().position(|&r| r == range).unwrap_or(0)
}

fn format_score(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into())
}

/// Axes left of and below the map: a line along each edge, ticks at round residue numbers
/// (centred on the residue's cells) and the axis names.
fn draw_axes(root: &super::Area, layout: &Layout, numbers: &[ResidueNumber], author: bool) -> Result<()> {
    let (mx, my) = (layout.map_origin.0 as i32, layout.map_origin.1 as i32);
    let (side, scale) = (layout.side as i32, layout.scale as i32);
    let ink = RGBColor(60, 60, 60);
    let line = |points: Vec<(i32, i32)>| root.draw(&PathElement::new(points, ink)).map_err(plotting_error);
    line(vec![(mx - 1, my - 1), (mx - 1, my + side)])?;
    line(vec![(mx - 1, my + side), (mx + side, my + side)])?;
    let labels = (font::FAMILY, 14).into_font().color(&BLACK);
    for k in residue_ticks(numbers, 8) {
        let centre = k as i32 * scale + scale / 2;
        let text = numbers[k].label();
        let (x, y) = (mx + centre, my + centre);
        line(vec![(x, my + side), (x, my + side + 5)])?;
        root.draw_text(&text, &labels.pos(Pos::new(HPos::Center, VPos::Top)), (x, my + side + 8))
            .map_err(plotting_error)?;
        line(vec![(mx - 6, y), (mx - 1, y)])?;
        root.draw_text(&text, &labels.pos(Pos::new(HPos::Right, VPos::Center)), (mx - 9, y)).map_err(plotting_error)?;
    }
    let desc = if author { "residue (structure numbering)" } else { "residue" };
    let style = (font::FAMILY, 15).into_font().color(&BLACK);
    root.draw_text(desc, &style.pos(Pos::new(HPos::Center, VPos::Top)), (mx + side / 2, my + side + 34))
        .map_err(plotting_error)?;
    let vertical = (font::FAMILY, 15).into_font().transform(FontTransform::Rotate270).color(&BLACK);
    root.draw_text(desc, &vertical.pos(Pos::new(HPos::Center, VPos::Top)), (12, my + side / 2))
        .map_err(plotting_error)?;
    Ok(())
}

/// Indices of the residues to label: those whose number is a multiple of the smallest
/// round step (1, 2, 5 × 10^k) giving at most `max_ticks` labels; the first and last
/// residue when no number is round (unusual numbering).
pub fn residue_ticks(numbers: &[ResidueNumber], max_ticks: usize) -> Vec<usize> {
    let at_step = |step: i32| -> Vec<usize> {
        numbers
            .iter()
            .enumerate()
            .filter(|(_, n)| n.ins_code.is_none() && n.number % step == 0)
            .map(|(k, _)| k)
            .collect()
    };
    let mut base = 1i32;
    while base < 1_000_000 {
        for m in [1, 2, 5] {
            let ticks = at_step(base * m);
            if !ticks.is_empty() && ticks.len() <= max_ticks.max(1) {
                return ticks;
            }
        }
        base *= 10;
    }
    let mut ends = vec![0, numbers.len().saturating_sub(1)];
    ends.dedup();
    ends
}

/// The frame, ticks and labels of the colour bar (the gradient is copied in afterwards).
fn draw_colour_bar_frame(root: &super::Area, layout: &Layout) -> Result<()> {
    let (x0, y0) = (layout.bar_origin.0 as i32, layout.bar_origin.1 as i32);
    let (x1, y1) = (x0 + BAR_WIDTH as i32, y0 + layout.side as i32);
    let frame = RGBColor(90, 90, 90);
    root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x1, y1)], frame)).map_err(plotting_error)?;
    let style = (font::FAMILY, 13).into_font().color(&BLACK);
    for p in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y0 + ((1.0 - p) * (layout.side as f64 - 1.0)).round() as i32;
        root.draw(&PathElement::new(vec![(x1, y), (x1 + 5, y)], frame)).map_err(plotting_error)?;
        root.draw_text(&format!("{p:.2}"), &style, (x1 + 8, y - 6)).map_err(plotting_error)?;
    }
    root.draw_text("P(contact)", &style, (x0 - 4, y1 + 8)).map_err(plotting_error)?;
    Ok(())
}

/// Swatches of the lower triangle's colours, below the colour bar's caption.
fn draw_truth_legend(root: &super::Area, layout: &Layout) -> Result<()> {
    let x = layout.bar_origin.0 as i32 - 4;
    let y = (layout.bar_origin.1 + layout.side) as i32 + 28;
    let style = (font::FAMILY, 12).into_font().color(&BLACK);
    for (k, (colour, text)) in [(TRUE_CONTACT, "true contact"), (NOT_EVALUATED, "not scored")].into_iter().enumerate() {
        let y = y + 16 * k as i32;
        let c = RGBColor(colour[0], colour[1], colour[2]);
        root.draw(&Rectangle::new([(x, y), (x + 10, y + 10)], c.filled())).map_err(plotting_error)?;
        root.draw(&Rectangle::new([(x, y), (x + 10, y + 10)], RGBColor(120, 120, 120))).map_err(plotting_error)?;
        root.draw_text(text, &style, (x + 15, y - 1)).map_err(plotting_error)?;
    }
    Ok(())
}

/// The colour bar: `side` rows from p = 1 (top, `PREDICTED_FULL`) to p = 0 (bottom).
pub fn colour_bar(side: u32) -> RgbImage {
    let mut pixels = Vec::with_capacity(3 * (BAR_WIDTH * side) as usize);
    for row in 0..side {
        let p = if side > 1 { 1.0 - row as f32 / (side - 1) as f32 } else { 1.0 };
        for _ in 0..BAR_WIDTH {
            pixels.extend_from_slice(&probability_colour(p));
        }
    }
    RgbImage { width: BAR_WIDTH, height: side, pixels }
}

/// Smallest scale at which the true contacts are outlined above the diagonal.
pub const OUTLINE_MIN_SCALE: u32 = 4;

/// Outline the cells of the true contacts above the diagonal (one-pixel border in the
/// truth's colour), so that hits and misses of the prediction show; skipped below
/// [`OUTLINE_MIN_SCALE`] pixels per residue, where a border would hide the cell.
fn outline_true_contacts(image: &mut RgbImage, truth: &[u8], len: usize, layout: &Layout) {
    if layout.scale < OUTLINE_MIN_SCALE {
        return;
    }
    let (x0, y0, s) = (layout.map_origin.0, layout.map_origin.1, layout.scale);
    let mut set = |x: u32, y: u32| {
        let at = 3 * (y as usize * image.width as usize + x as usize);
        image.pixels[at..at + 3].copy_from_slice(&TRUE_CONTACT);
    };
    for i in 0..len {
        for j in i + 1..len {
            if truth[i * len + j] != 1 {
                continue;
            }
            let (left, top) = (x0 + j as u32 * s, y0 + i as u32 * s);
            for d in 0..s {
                set(left + d, top);
                set(left + d, top + s - 1);
                set(left, top + d);
                set(left + s - 1, top + d);
            }
        }
    }
}

/// Copy `src` into `dst` with its top-left corner at `at` (clipped to `dst`).
fn blit(dst: &mut RgbImage, src: &RgbImage, at: (u32, u32)) {
    for y in 0..src.height.min(dst.height.saturating_sub(at.1)) {
        let w = src.width.min(dst.width.saturating_sub(at.0)) as usize;
        let from = 3 * (y as usize * src.width as usize);
        let to = 3 * ((at.1 + y) as usize * dst.width as usize + at.0 as usize);
        dst.pixels[to..to + 3 * w].copy_from_slice(&src.pixels[from..from + 3 * w]);
    }
}
