//! From a run's `metrics.jsonl` to the series its curves show — the pure part of the
//! curves picture, tested apart from the drawing.
//!
//! The log (see `train::log`) holds one JSON object per line with an `"event"` field:
//! * `step` events give the **training loss** (`loss`, the mean over the micro-batches since
//!   the previous `step` line) at optimizer step `step`;
//! * `eval` events give the **evaluation metrics** at `step`: every numeric top-level field
//!   except the bookkeeping ones ([`NOT_METRICS`]) — `accuracy`, `top5_accuracy`,
//!   `macro_f1`, `weighted_f1` and `loss` for a classifier, `mcc`, `mcc_pooled`,
//!   `long_p_at_l` and `loss` for a contact model, whatever numbers another task logs;
//! * other events (`start`, `checkpoint`, `end`) are read for the task name only.
//!
//! A resumed run appends to the same log and logs again the steps after the checkpoint it
//! resumed from; a point whose step is not after the previous point of its series replaces
//! the points from that step on, so every series is increasing in step and shows the
//! history the final model actually has. A last line cut short (a run killed mid-write)
//! is skipped; any other line that is not a JSON object is an error naming file and line.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Numeric fields of an `eval` event that are not metrics.
pub const NOT_METRICS: &[&str] = &[
    "step",
    "epoch",
    "elapsed_s",
    "seconds",
    "n",
    "proteins",
    "windowed_rows",
    "windowed_proteins",
    "uncovered_pairs",
    "mcc_degenerate",
];

/// The log file inside a run directory.
pub const LOG_NAME: &str = "metrics.jsonl";

/// (step, value) points, increasing in step.
pub type Points = Vec<(f64, f64)>;

/// Everything the curves of one run show.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunSeries {
    /// The legend's name of the run (its directory name by default).
    pub label: String,
    /// `task` of the `start` event (`classify`, `contact`, …), when logged.
    pub task: Option<String>,
    /// Training loss of the `step` events.
    pub train_loss: Points,
    /// Each evaluation metric by its field name (`accuracy`, `mcc`, `loss`, …).
    pub eval: BTreeMap<String, Points>,
}

impl RunSeries {
    /// The evaluation metric `name`, empty when the run never logged it.
    pub fn eval_metric(&self, name: &str) -> &[(f64, f64)] {
        self.eval.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The largest step of any point.
    pub fn last_step(&self) -> f64 {
        let evals = self.eval.values().flat_map(|p| p.iter());
        self.train_loss.iter().chain(evals).map(|p| p.0).fold(0.0, f64::max)
    }
}

/// Parse the text of a `metrics.jsonl`; `source` names it in errors.
pub fn parse_log(text: &str, source: &Path, label: &str) -> Result<RunSeries> {
    let mut run = RunSeries { label: label.to_string(), ..RunSeries::default() };
    let lines: Vec<&str> = text.lines().collect();
    let cut_short_last = !text.is_empty() && !text.ends_with('\n');
    let mut events = 0usize;
    for (k, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => o,
            Err(_) if cut_short_last && k + 1 == lines.len() => continue,
            Ok(_) => bail!("{}:{}: not a JSON object", source.display(), k + 1),
            Err(e) => bail!("{}:{}: not JSON ({e})", source.display(), k + 1),
        };
        events += 1;
        add_event(&mut run, &object);
    }
    if events == 0 {
        bail!("{} is empty: the run has logged nothing yet, so there is nothing to plot", source.display());
    }
    if run.train_loss.is_empty() && run.eval.is_empty() {
        bail!("{} has no `step` or `eval` event yet ({events} other event(s)): nothing to plot", source.display());
    }
    Ok(run)
}

/// Fold one event into the series.
fn add_event(run: &mut RunSeries, event: &Map<String, Value>) {
    let step = event.get("step").and_then(Value::as_f64);
    match (event.get("event").and_then(Value::as_str), step) {
        (Some("step"), Some(step)) => {
            if let Some(loss) = finite(event.get("loss")) {
                push_point(&mut run.train_loss, step, loss);
            }
        }
        (Some("eval"), Some(step)) => {
            for (name, value) in event {
                if NOT_METRICS.contains(&name.as_str()) {
                    continue;
                }
                if let Some(v) = finite(Some(value)) {
                    push_point(run.eval.entry(name.clone()).or_default(), step, v);
                }
            }
        }
        (Some("start"), _) => {
            if let Some(task) = event.get("task").and_then(Value::as_str) {
                run.task = Some(task.to_string());
            }
        }
        _ => {}
    }
}

/// A finite number (JSON `null`, strings and non-finite values are no point).
fn finite(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64).filter(|v| v.is_finite())
}

/// Append (step, value); a step not after the last point replaces the points from it on
/// (a resumed run re-logging the steps after its checkpoint).
pub fn push_point(points: &mut Points, step: f64, value: f64) {
    let keep = points.partition_point(|p| p.0 < step);
    points.truncate(keep);
    points.push((step, value));
}

/// The log of a run: `path` is a run directory (its `metrics.jsonl`) or the log itself.
pub fn log_path(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("run directory {} does not exist", path.display());
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let log = path.join(LOG_NAME);
    if !log.is_file() {
        bail!("{} has no {LOG_NAME} (is it the --output directory of a `qf-engine train` run?)", path.display());
    }
    Ok(log)
}

/// Read and parse the log of a run directory (or a `metrics.jsonl` path).
pub fn read_run(path: &Path, label: &str) -> Result<RunSeries> {
    let log = log_path(path)?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    parse_log(&text, &log, label)
}

/// Legend names of runs: each directory's name (or the log's parent directory's), the path
/// as given where two names would be the same.
pub fn run_labels(paths: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = paths.iter().map(|p| short_name(p)).collect();
    short
        .iter()
        .zip(paths)
        .map(|(s, p)| if short.iter().filter(|o| *o == s).count() > 1 { p.display().to_string() } else { s.clone() })
        .collect()
}

fn short_name(path: &Path) -> String {
    let dir = if path.is_file() { path.parent().unwrap_or(path) } else { path };
    let name = match dir.file_name() {
        Some(n) => Some(n.to_string_lossy().into_owned()),
        None => dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())),
    };
    name.unwrap_or_else(|| path.display().to_string())
}

/// The metrics shown when the user names none: accuracy for a classifier (or any run that
/// logs it), MCC and long-range P@L for a contact model; nothing but the loss otherwise.
pub fn default_metrics(runs: &[RunSeries]) -> Vec<String> {
    let logged = |name: &str| runs.iter().any(|r| !r.eval_metric(name).is_empty());
    let wanted: &[&str] = if logged("accuracy") { &["accuracy"] } else { &["mcc", "long_p_at_l"] };
    wanted.iter().filter(|m| logged(m)).map(|m| m.to_string()).collect()
}

/// Check that every metric the user named is logged by at least one run.
pub fn check_metrics(runs: &[RunSeries], metrics: &[String]) -> Result<()> {
    for metric in metrics {
        if runs.iter().all(|r| r.eval_metric(metric).is_empty()) {
            let mut available: Vec<&str> = runs.iter().flat_map(|r| r.eval.keys().map(String::as_str)).collect();
            available.sort_unstable();
            available.dedup();
            let available =
                if available.is_empty() { "none: no run has an eval event".to_string() } else { available.join(", ") };
            bail!("no run logged the eval metric `{metric}` (logged: {available})");
        }
    }
    Ok(())
}

/// A reader's name of an eval metric.
pub fn metric_title(name: &str) -> String {
    match name {
        "accuracy" => "eval accuracy".into(),
        "top5_accuracy" => "eval top-5 accuracy".into(),
        "macro_f1" => "eval macro-F1".into(),
        "weighted_f1" => "eval weighted F1".into(),
        "loss" => "eval loss".into(),
        "mcc" => "eval MCC (mean per protein)".into(),
        "mcc_pooled" => "eval MCC (pooled)".into(),
        "long_p_at_l" => "eval long-range P@L".into(),
        "perplexity" => "eval perplexity".into(),
        other => format!("eval {other}"),
    }
}

/// Metrics that lie in [0, 1] (their axis is kept inside it).
pub fn is_fraction(name: &str) -> bool {
    matches!(name, "accuracy" | "top5_accuracy" | "macro_f1" | "weighted_f1" | "long_p_at_l")
        || name.starts_with("accuracy")
}
