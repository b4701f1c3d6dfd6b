//! `qf-engine plot`: the training curves of one or several runs, drawn from their
//! `metrics.jsonl` (the same picture a run writes as `curves.png`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use qf_engine::plot::curves::CurvesPlot;

#[derive(Args, Debug)]
#[command(after_long_help = "\
The picture has one panel for the loss (training loss as a line, evaluation loss as dots)
and one per evaluation metric, against the optimizer step. By default the metric is the
eval accuracy for a classifier, the eval MCC (mean per protein) and long-range P@L for a
contact model. Several runs are overlaid in distinct colours with a legend (named after
their directories). A resumed run's log is read as the history of its final model: steps
logged again after a resume replace the earlier ones.

Examples:
  # redraw runs/demo/curves.png
  qf-engine plot runs/demo

  # crops against whole chains, one picture
  qf-engine plot runs/contact_crop runs/contact_full -o crop_vs_full.png

  # other metrics of the eval events
  qf-engine plot runs/pfam8m --metric top5_accuracy,macro_f1 -o pfam8m_f1.png")]
pub struct PlotArgs {
    /// Run directories (the --output of `qf-engine train`), or their metrics.jsonl files.
    #[arg(value_name = "RUN_DIR", required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,

    /// Output PNG. Default: RUN_DIR/curves.png for one run; required for several.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Eval metrics to draw, one panel each, comma-separated: any numeric field of the
    /// runs' `eval` events (accuracy, top5_accuracy, macro_f1, weighted_f1, loss for a
    /// classifier; mcc, mcc_pooled, long_p_at_l, loss for a contact model).
    #[arg(long, value_name = "NAME[,NAME]", value_delimiter = ',')]
    pub metric: Vec<String>,
}

/// Where the picture goes.
fn output_path(args: &PlotArgs) -> Result<PathBuf> {
    match (&args.output, args.runs.as_slice()) {
        (Some(out), _) => Ok(out.clone()),
        (None, [run]) if run.is_file() => Ok(run.with_file_name("curves.png")),
        (None, [run]) => Ok(run.join("curves.png")),
        (None, _) => bail!("{} runs given: name the picture with -o FILE.png", args.runs.len()),
    }
}

pub fn run(args: PlotArgs) -> Result<()> {
    let output = output_path(&args)?;
    let metrics: Vec<String> = args.metric.iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
    let plot = CurvesPlot::read(&args.runs, &metrics)?;
    plot.write(&output)?;
    let shown = if plot.metrics.is_empty() { "loss".to_string() } else { format!("loss, {}", plot.metrics.join(", ")) };
    eprintln!("curves ({} run(s): {shown}) written to {}", plot.runs.len(), output.display());
    Ok(())
}
