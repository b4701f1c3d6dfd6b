//! Pictures: contact maps (`predict-contacts`) and training curves (`curves.png` of a run,
//! `qf-engine plot`), drawn with `plotters` into an RGB buffer and encoded with the `png`
//! crate.
//!
//! Text uses a DejaVu Sans subset compiled into the binary (`assets/fonts`), registered
//! with plotters' `ab_glyph` backend on first use, so rendering needs no fontconfig and no
//! system font.
//!
//! * [`series`] — the pure part: a `metrics.jsonl` log to the series a curve shows.
//! * [`curves`] — drawing those series (one panel per quantity, several runs overlaid).
//! * [`contact_map`] — a contact map with residue-numbered axes, a colour bar and a title.

pub mod contact_map;
pub mod curves;
pub mod font;
pub mod series;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

pub use crate::data::contact_io::{encode_png, RgbImage};

/// A plotters drawing area over an RGB buffer.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draw a `width` × `height` picture on a white background with `draw`.
pub fn draw_picture(width: u32, height: u32, draw: impl FnOnce(&Area) -> Result<()>) -> Result<RgbImage> {
    font::register()?;
    let mut pixels = vec![255u8; 3 * width as usize * height as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plotting_error).context("cannot finish the picture")?;
    }
    Ok(RgbImage { width, height, pixels })
}

/// plotters' errors carry the backend's error type; keep their message.
pub fn plotting_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Encode `image` as PNG and write it to `path` (through a temporary file, so that a
/// reader never sees half a picture).
pub fn write_picture(path: &Path, image: &RgbImage) -> Result<()> {
    let bytes = encode_png(image)?;
    crate::model::checkpoint::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}
