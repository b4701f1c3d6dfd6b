//! Training curves: one panel for the loss (training loss as a line, evaluation loss as
//! dots) and one per evaluation metric, all against the optimizer step; several runs are
//! overlaid in distinct colours with a legend.

use anyhow::{bail, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

use super::series::{check_metrics, default_metrics, is_fraction, metric_title, read_run, run_labels, RunSeries};
use super::{draw_picture, font, plotting_error, write_picture, Area, RgbImage};

/// Width and height of one panel, in pixels.
pub const PANEL_WIDTH: u32 = 520;
pub const PANEL_HEIGHT: u32 = 400;
/// Height of the title band above the panels.
pub const TITLE_HEIGHT: u32 = 36;

/// Colours of the runs, in order (Tableau 10).
pub const RUN_COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The colour of the `k`-th run.
pub fn run_colour(k: usize) -> RGBColor {
    RUN_COLOURS[k % RUN_COLOURS.len()]
}

/// What a curves picture shows: runs and the eval metrics (one panel each, after the loss).
#[derive(Debug, Clone)]
pub struct CurvesPlot {
    pub runs: Vec<RunSeries>,
    pub metrics: Vec<String>,
}

impl CurvesPlot {
    /// `metrics` empty picks [`default_metrics`]; named metrics must be logged by some run.
    pub fn new(runs: Vec<RunSeries>, metrics: &[String]) -> Result<CurvesPlot> {
        if runs.is_empty() {
            bail!("no run to plot");
        }
        let metrics = if metrics.is_empty() { default_metrics(&runs) } else { metrics.to_vec() };
        check_metrics(&runs, &metrics)?;
        Ok(CurvesPlot { runs, metrics })
    }

    /// Read the runs at `paths` (run directories or `metrics.jsonl` files).
    pub fn read(paths: &[PathBuf], metrics: &[String]) -> Result<CurvesPlot> {
        let labels = run_labels(paths);
        let runs = paths.iter().zip(&labels).map(|(p, l)| read_run(p, l)).collect::<Result<Vec<_>>>()?;
        Self::new(runs, metrics)
    }

    /// Picture size: one panel per quantity side by side, under the title band.
    pub fn size(&self) -> (u32, u32) {
        (PANEL_WIDTH * (1 + self.metrics.len() as u32), PANEL_HEIGHT + TITLE_HEIGHT)
    }

    fn title(&self) -> String {
        let names: Vec<&str> = self.runs.iter().map(|r| r.label.as_str()).collect();
        let task = self.runs.iter().find_map(|r| r.task.as_deref());
        match task {
            Some(task) if self.runs.len() == 1 => format!("{} — {task} training", names[0]),
            _ => names.join(" vs "),
        }
    }

    /// Draw the picture.
    pub fn render(&self) -> Result<RgbImage> {
        let (width, height) = self.size();
        draw_picture(width, height, |root| {
            let (top, body) = root.split_vertically(TITLE_HEIGHT);
            top.draw_text(&self.title(), &title_style(), (12, 10)).map_err(plotting_error)?;
            if self.runs.len() > 1 {
                self.draw_run_legend(&top)?;
            }
            let panels = body.split_evenly((1, 1 + self.metrics.len()));
            self.draw_loss_panel(&panels[0])?;
            for (metric, panel) in self.metrics.iter().zip(&panels[1..]) {
                self.draw_metric_panel(panel, metric)?;
            }
            Ok(())
        })
    }

    /// Render and write a PNG.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_picture(path, &self.render()?)
    }

    /// The x axis' end: the last step and 3 % more, so that the last dots are whole.
    fn last_step(&self) -> f64 {
        1.03 * self.runs.iter().map(RunSeries::last_step).fold(1.0, f64::max)
    }

    fn draw_loss_panel(&self, area: &Area) -> Result<()> {
        let eval_loss = |r: &RunSeries| r.eval_metric("loss").to_vec();
        let values = self.runs.iter().flat_map(|r| r.train_loss.iter().chain(r.eval_metric("loss")).map(|p| p.1));
        let y = value_range(values, false);
        let mut chart = panel_chart(area, "loss (line: training, dots: eval)", self.last_step(), y)?;
        for (k, run) in self.runs.iter().enumerate() {
            let colour = run_colour(k);
            let several = self.runs.len() > 1;
            let line = chart
                .draw_series(LineSeries::new(run.train_loss.iter().copied(), colour.stroke_width(2)))
                .map_err(plotting_error)?;
            if !several {
                line.label("training loss")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            }
            chart
                .draw_series(eval_loss(run).into_iter().map(|p| Circle::new(p, 5, colour.filled())))
                .map_err(plotting_error)?;
            let rings = chart
                .draw_series(eval_loss(run).into_iter().map(|p| Circle::new(p, 5, BLACK.stroke_width(1))))
                .map_err(plotting_error)?;
            if !several && !run.eval_metric("loss").is_empty() {
                rings.label("eval loss").legend(move |(x, y)| {
                    EmptyElement::at((x + 9, y))
                        + Circle::new((0, 0), 5, colour.filled())
                        + Circle::new((0, 0), 5, BLACK)
                });
            }
        }
        if self.runs.len() == 1 {
            draw_legend(&mut chart)?;
        }
        Ok(())
    }

    fn draw_metric_panel(&self, area: &Area, metric: &str) -> Result<()> {
        let values = self.runs.iter().flat_map(|r| r.eval_metric(metric).iter().map(|p| p.1));
        let y = value_range(values, is_fraction(metric));
        let mut chart = panel_chart(area, &metric_title(metric), self.last_step(), y)?;
        for (k, run) in self.runs.iter().enumerate() {
            let colour = run_colour(k);
            let points = run.eval_metric(metric);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(plotting_error)?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(plotting_error)?;
        }
        Ok(())
    }

    /// Several runs: their colours and names in the title band, right of the title.
    fn draw_run_legend(&self, top: &Area) -> Result<()> {
        let (title_width, _) = top.estimate_text_size(&self.title(), &title_style()).map_err(plotting_error)?;
        let style = (font::FAMILY, 15).into_font().color(&BLACK);
        let mut x = 12 + title_width as i32 + 36;
        for (k, run) in self.runs.iter().enumerate() {
            let colour = run_colour(k);
            top.draw(&PathElement::new(vec![(x, 20), (x + 24, 20)], colour.stroke_width(3))).map_err(plotting_error)?;
            top.draw_text(&run.label, &style, (x + 30, 12)).map_err(plotting_error)?;
            let (w, _) = top.estimate_text_size(&run.label, &style).map_err(plotting_error)?;
            x += 30 + w as i32 + 28;
        }
        Ok(())
    }
}

type Panel<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel's chart: step on x from 0, `y` on y, a caption and a light grid.
fn panel_chart<'a, 'b>(area: &'a Area<'b>, caption: &str, last_step: f64, y: (f64, f64)) -> Result<Panel<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (font::FAMILY, 17))
        .margin(10)
        .margin_right(22)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(0.0..last_step, y.0..y.1)
        .map_err(plotting_error)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_labels(6)
        .y_labels(6)
        .label_style((font::FAMILY, 13))
        .axis_desc_style((font::FAMILY, 14))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_label_formatter(&|v| format_step(*v))
        .y_label_formatter(&|v| format_value(*v))
        .draw()
        .map_err(plotting_error)?;
    Ok(chart)
}

fn draw_legend<'a, 'b: 'a>(chart: &mut Panel<'a, 'b>) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((font::FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(plotting_error)
}

fn title_style() -> TextStyle<'static> {
    (font::FAMILY, 20).into_font().color(&BLACK)
}

/// The y range of a panel: the values' range padded by 8 %; a fraction's axis starts at 0
/// and does not pass 1 unless a value does.
pub fn value_range(values: impl Iterator<Item = f64>, fraction: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = if fraction { (lo.min(0.0), hi) } else { (lo, hi) };
    let pad = if hi > lo { 0.08 * (hi - lo) } else { 0.1 * hi.abs().max(0.1) };
    let top = if fraction && hi <= 1.0 { (hi + pad).min(1.0).max(hi + 1e-9) } else { hi + pad };
    let bottom = if fraction && lo >= 0.0 { 0.0 } else { lo - pad };
    (bottom, top)
}

/// Step tick labels: `1500`, `12k`, `1.5M`.
fn format_step(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(v / 1e6)),
        a if a >= 1e4 => format!("{}k", trim(v / 1e3)),
        _ => trim(v),
    }
}

/// Value tick labels with the digits the axis needs.
fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        trim(v)
    } else {
        format!("{v:.1e}")
    }
}

/// At most 3 decimals, trailing zeros dropped.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Write `curves.png` beside a `metrics.jsonl`, from that log (the picture is a function
/// of the log alone).
pub fn write_run_curves(log: &Path) -> Result<PathBuf> {
    let out = log.with_file_name("curves.png");
    CurvesPlot::read(&[log.to_path_buf()], &[])?.write(&out)?;
    Ok(out)
}
