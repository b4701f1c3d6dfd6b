//! Run output: a JSON-lines metrics log (one object per event, flushed as written), the
//! `curves.png` drawn from it beside it at every evaluation and at the end, and progress
//! bars with rate and ETA.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// Appends `{"event": …, "time": …, …}` lines to `metrics.jsonl`.
pub struct MetricsLog {
    file: Option<File>,
    path: Option<PathBuf>,
    start: std::time::Instant,
    curves_failed: bool,
}

/// Events after which `curves.png` is redrawn.
pub const CURVE_EVENTS: &[&str] = &["eval", "end"];

impl MetricsLog {
    /// Open (append) `path`; `None` logs nowhere.
    pub fn open(path: Option<&Path>) -> Result<MetricsLog> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("opening {}", p.display()))?,
                )
            }
            None => None,
        };
        if let Some(p) = path {
            remove_stale_curves(p);
        }
        Ok(MetricsLog {
            file,
            path: path.map(Path::to_path_buf),
            start: std::time::Instant::now(),
            curves_failed: false,
        })
    }

    /// Write one event; `fields` must be a JSON object.
    pub fn event(&mut self, event: &str, fields: Value) -> Result<()> {
        let Some(f) = self.file.as_mut() else { return Ok(()) };
        let mut obj = json!({ "event": event, "elapsed_s": self.start.elapsed().as_secs_f64() });
        if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), fields) {
            o.extend(extra);
        }
        writeln!(f, "{obj}")?;
        f.flush()?;
        if CURVE_EVENTS.contains(&event) {
            self.redraw_curves();
        }
        Ok(())
    }

    /// Redraw `curves.png` beside the log from the log itself. A picture that cannot be
    /// drawn never stops training: the first failure is reported on stderr.
    fn redraw_curves(&mut self) {
        let Some(path) = &self.path else { return };
        if let Err(e) = crate::plot::curves::write_run_curves(path) {
            if !self.curves_failed {
                eprintln!("warning: curves.png not drawn: {e:#}");
                self.curves_failed = true;
            }
        }
    }
}

/// Remove the temporary files of a `curves.png` write that a killed run left beside the
/// log (`write_atomic` names them `.curves.png.tmp-<pid>`); best effort.
fn remove_stale_curves(log: &Path) {
    let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().starts_with(".curves.png.tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A bar over `len` items showing position, rate, ETA and a message (hidden when stderr
/// is not a terminal or `show` is false).
pub fn progress_bar(len: u64, prefix: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}
