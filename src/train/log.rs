//! Run output: a JSON-lines metrics log (one object per event, flushed as written) and
//! progress bars with rate and ETA.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// Appends `{"event": …, "time": …, …}` lines to `metrics.jsonl`.
pub struct MetricsLog {
    file: Option<File>,
    start: std::time::Instant,
}

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
        Ok(MetricsLog { file, start: std::time::Instant::now() })
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
        Ok(())
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
