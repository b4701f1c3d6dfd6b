//! Pictures: the series read from a `metrics.jsonl` (pure), the curves and contact-map
//! PNGs (decoded back with the `png` crate), `qf-engine plot` and its errors.

mod common;

use std::path::{Path, PathBuf};

use qf_engine::data::contact_io::{default_scale, BACKGROUND, PREDICTED_FULL, TRUE_CONTACT};
use qf_engine::data::contacts::{ContactSet, CONTACT_CUTOFF};
use qf_engine::metrics::contact::ContactMetrics;
use qf_engine::plot::contact_map::{residue_ticks, ContactPicture, Layout, ResidueNumber, BAR_WIDTH};
use qf_engine::plot::curves::{run_colour, CurvesPlot, PANEL_HEIGHT, PANEL_WIDTH, TITLE_HEIGHT};
use qf_engine::plot::series::{default_metrics, parse_log, read_run, RunSeries};

/// A classification run's log as `train` writes it (fields trimmed to the ones read, plus
/// a few that must be ignored).
const CLASSIFY_LOG: &str = r#"{"event":"start","elapsed_s":0.0,"task":"classify","classes":4}
{"event":"step","elapsed_s":0.1,"step":10,"epoch":0,"loss":1.40,"lr":0.001}
{"event":"step","elapsed_s":0.2,"step":20,"epoch":0,"loss":1.20,"lr":0.001}
{"event":"eval","elapsed_s":0.3,"epoch":0,"step":20,"accuracy":0.25,"top5_accuracy":1.0,"macro_f1":0.1,"loss":1.30,"n":40,"per_tier":{"1":0.25}}
{"event":"checkpoint","elapsed_s":0.4,"step":20,"epoch":1,"path":"x"}
{"event":"step","elapsed_s":0.5,"step":30,"epoch":1,"loss":0.90,"lr":0.001}
{"event":"step","elapsed_s":0.6,"step":40,"epoch":1,"loss":null,"lr":0.001}
{"event":"eval","elapsed_s":0.7,"epoch":1,"step":40,"accuracy":0.75,"top5_accuracy":1.0,"macro_f1":0.6,"loss":0.70,"n":40}
{"event":"end","elapsed_s":0.8,"steps":40,"eval_accuracy":0.75}
"#;

/// A contact run's log: MCC and long-range P@L.
const CONTACT_LOG: &str = r#"{"event":"start","elapsed_s":0.0,"task":"contact"}
{"event":"step","elapsed_s":0.1,"step":1,"epoch":0,"loss":0.70}
{"event":"step","elapsed_s":0.2,"step":2,"epoch":0,"loss":0.50}
{"event":"eval","elapsed_s":0.3,"epoch":1,"step":2,"mcc":0.01,"mcc_pooled":0.02,"long_p_at_l":0.05,"loss":0.6,"proteins":2,"mcc_degenerate":1,"seconds":0.1,"uncovered_pairs":0}
{"event":"step","elapsed_s":0.4,"step":3,"epoch":1,"loss":0.30}
{"event":"eval","elapsed_s":0.5,"epoch":2,"step":3,"mcc":0.2,"mcc_pooled":0.3,"long_p_at_l":0.4,"loss":0.4,"proteins":2}
"#;

fn parse(text: &str) -> RunSeries {
    parse_log(text, Path::new("run/metrics.jsonl"), "run").unwrap()
}

fn parse_err(text: &str) -> String {
    format!("{:#}", parse_log(text, Path::new("run/metrics.jsonl"), "run").unwrap_err())
}

#[test]
fn a_classification_log_gives_the_loss_and_every_eval_metric() {
    let run = parse(CLASSIFY_LOG);
    assert_eq!(run.task.as_deref(), Some("classify"));
    assert_eq!(run.train_loss, vec![(10.0, 1.40), (20.0, 1.20), (30.0, 0.90)], "null loss skipped");
    assert_eq!(run.eval_metric("accuracy"), &[(20.0, 0.25), (40.0, 0.75)]);
    assert_eq!(run.eval_metric("loss"), &[(20.0, 1.30), (40.0, 0.70)]);
    let names: Vec<&str> = run.eval.keys().map(String::as_str).collect();
    assert_eq!(names, ["accuracy", "loss", "macro_f1", "top5_accuracy"], "bookkeeping and objects are no metric");
    assert_eq!(run.last_step(), 40.0);
    assert_eq!(default_metrics(&[run]), ["accuracy"]);
}

#[test]
fn a_contact_log_defaults_to_mcc_and_long_range_p_at_l() {
    let run = parse(CONTACT_LOG);
    assert_eq!(run.task.as_deref(), Some("contact"));
    assert_eq!(run.eval_metric("mcc"), &[(2.0, 0.01), (3.0, 0.2)]);
    assert_eq!(run.eval_metric("long_p_at_l"), &[(2.0, 0.05), (3.0, 0.4)]);
    assert!(run.eval_metric("proteins").is_empty() && run.eval_metric("seconds").is_empty());
    assert_eq!(default_metrics(&[run]), ["mcc", "long_p_at_l"]);
}

#[test]
fn a_resumed_run_keeps_the_history_of_its_final_model() {
    // Crashed after step 30, resumed from the checkpoint at step 20: steps 30 and 40 are
    // logged again and replace the first attempt's step 30.
    let log = r#"{"event":"step","step":10,"loss":3.0}
{"event":"step","step":20,"loss":2.0}
{"event":"step","step":30,"loss":9.0}
{"event":"start","task":"classify","resumed_step":20}
{"event":"step","step":30,"loss":1.5}
{"event":"step","step":40,"loss":1.0}
"#;
    assert_eq!(parse(log).train_loss, vec![(10.0, 3.0), (20.0, 2.0), (30.0, 1.5), (40.0, 1.0)]);
}

#[test]
fn a_line_cut_short_at_the_end_is_skipped_and_a_bad_line_elsewhere_is_an_error() {
    let cut = "{\"event\":\"step\",\"step\":1,\"loss\":2.0}\n{\"event\":\"step\",\"st";
    assert_eq!(parse(cut).train_loss, vec![(1.0, 2.0)]);
    let bad = "{\"event\":\"step\",\"step\":1,\"loss\":2.0}\nnot json\n{\"event\":\"step\",\"step\":2,\"loss\":1.0}\n";
    assert!(parse_err(bad).starts_with("run/metrics.jsonl:2: not JSON"), "{}", parse_err(bad));
    assert_eq!(parse_err("[1, 2]\n"), "run/metrics.jsonl:1: not a JSON object");
}

#[test]
fn an_empty_log_and_a_log_without_steps_are_named_errors() {
    assert_eq!(
        parse_err(""),
        "run/metrics.jsonl is empty: the run has logged nothing yet, so there is nothing to plot"
    );
    assert_eq!(parse_err("\n\n"), parse_err(""));
    assert_eq!(
        parse_err("{\"event\":\"start\",\"task\":\"classify\"}\n"),
        "run/metrics.jsonl has no `step` or `eval` event yet (1 other event(s)): nothing to plot"
    );
}

#[test]
fn missing_runs_and_logs_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert_eq!(
        format!("{:#}", read_run(&missing, "x").unwrap_err()),
        format!("run directory {} does not exist", missing.display())
    );
    assert_eq!(
        format!("{:#}", read_run(tmp.path(), "x").unwrap_err()),
        format!(
            "{} has no metrics.jsonl (is it the --output directory of a `qf-engine train` run?)",
            tmp.path().display()
        )
    );
    let run = parse(CLASSIFY_LOG);
    let err = CurvesPlot::new(vec![run], &["mcc".to_string()]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "no run logged the eval metric `mcc` (logged: accuracy, loss, macro_f1, top5_accuracy)"
    );
}

// ---------------------------------------------------------------------------------------
// Decoding pictures
// ---------------------------------------------------------------------------------------

struct Decoded {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Decoded {
    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let at = 3 * (y * self.width + x) as usize;
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }

    /// Pixels of `colour` in the rectangle [x0, x1) × [y0, y1).
    fn count(&self, colour: [u8; 3], (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
        (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| self.pixel(x, y) == colour).count()
    }

    /// Pixels darker than mid-grey in the rectangle (text, axes).
    fn dark(&self, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| self.pixel(x, y).iter().all(|&c| c < 110))
            .count()
    }
}

fn decode(path: &Path) -> Decoded {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    Decoded { width: info.width, height: info.height, pixels: buf }
}

fn rgb(c: plotters::style::RGBColor) -> [u8; 3] {
    [c.0, c.1, c.2]
}

fn write_log(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    dir.to_path_buf()
}

#[test]
fn curves_of_a_classification_run_show_loss_and_accuracy_panels() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_log(&tmp.path().join("demo"), CLASSIFY_LOG);
    let plot = CurvesPlot::read(std::slice::from_ref(&run), &[]).unwrap();
    assert_eq!(plot.metrics, ["accuracy"]);
    let out = tmp.path().join("curves.png");
    plot.write(&out).unwrap();
    let png = decode(&out);
    assert_eq!((png.width, png.height), (2 * PANEL_WIDTH, PANEL_HEIGHT + TITLE_HEIGHT));
    let colour = rgb(run_colour(0));
    let body = (TITLE_HEIGHT, png.height);
    let (loss_panel, metric_panel) = ((0, PANEL_WIDTH), (PANEL_WIDTH, 2 * PANEL_WIDTH));
    assert!(png.count(colour, loss_panel, body) > 200, "the loss curve is drawn");
    assert!(png.count(colour, metric_panel, body) > 200, "the accuracy curve is drawn");
    assert!(png.dark((0, png.width), (0, TITLE_HEIGHT)) > 100, "the title is drawn");
    assert!(png.dark(loss_panel, body) > 500, "axes and labels are drawn");
    // Accuracy rises from 0.25 to 0.75: the curve's highest pixel is in its right half.
    let top_of_curve =
        |x0: u32, x1: u32| (body.0..body.1).find(|&y| (x0..x1).any(|x| png.pixel(x, y) == colour)).unwrap_or(u32::MAX);
    let mid = PANEL_WIDTH + PANEL_WIDTH / 2;
    assert!(top_of_curve(mid, 2 * PANEL_WIDTH) < top_of_curve(PANEL_WIDTH + 60, mid), "accuracy rises");
}

#[test]
fn curves_of_a_contact_run_have_mcc_and_p_at_l_panels_and_runs_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let crop = write_log(&tmp.path().join("crop"), CONTACT_LOG);
    let full = write_log(&tmp.path().join("full"), &CONTACT_LOG.replace("\"loss\":0.30", "\"loss\":0.45"));
    let plot = CurvesPlot::read(&[crop, full], &[]).unwrap();
    assert_eq!(plot.metrics, ["mcc", "long_p_at_l"]);
    assert_eq!(plot.runs.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["crop", "full"]);
    let image = plot.render().unwrap();
    assert_eq!((image.width, image.height), (3 * PANEL_WIDTH, PANEL_HEIGHT + TITLE_HEIGHT));
    for k in 0..2 {
        let colour = rgb(run_colour(k));
        let n = image.pixels.chunks_exact(3).filter(|p| *p == colour).count();
        assert!(n > 300, "run {k} is drawn ({n} pixels of its colour)");
    }
}

// ---------------------------------------------------------------------------------------
// Contact maps
// ---------------------------------------------------------------------------------------

#[test]
fn residue_ticks_fall_on_round_residue_numbers() {
    let seq = ResidueNumber::sequential(129);
    assert_eq!(residue_ticks(&seq, 8), [19, 39, 59, 79, 99, 119], "residues 20, 40, …, 120");
    assert_eq!(residue_ticks(&ResidueNumber::sequential(5), 8), [0, 1, 2, 3, 4]);
    // Author numbering from 25 with an insertion code: 52A is never a tick.
    let mut author: Vec<ResidueNumber> = (25..=90).map(|number| ResidueNumber { number, ins_code: None }).collect();
    author.insert(28, ResidueNumber { number: 52, ins_code: Some('A') });
    let ticks = residue_ticks(&author, 8);
    let labels: Vec<i32> = ticks.iter().map(|&k| author[k].number).collect();
    assert_eq!(labels, [30, 40, 50, 60, 70, 80, 90]);
}

#[test]
fn a_contact_map_has_numbered_axes_a_colour_bar_and_its_scores_in_the_title() {
    let set = ContactSet::open_prefix(common::fixture("contacts/mini")).unwrap();
    let i = set.find("2VB1_A").unwrap();
    let labels = set.labels(i, CONTACT_CUTOFF, 6);
    let probs: Vec<f32> = labels.contacts.iter().map(|&c| c as f32).collect();
    let masked = labels.masked();
    let scores = ContactMetrics::new().add_labels(&probs, &labels).unwrap();
    let picture = ContactPicture {
        name: "2VB1_A",
        probs: &probs,
        truth: Some(&masked),
        len: labels.len,
        residues: None,
        scores: Some(&scores),
        min_sep: 6,
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("2vb1.png");
    picture.write(&path, None).unwrap();
    let png = decode(&path);
    let layout = Layout::new(129, default_scale(129)).unwrap();
    assert_eq!((layout.scale, layout.side), (7, 903));
    assert_eq!((png.width, png.height), (layout.width, layout.height));
    let (mx, my) = layout.map_origin;
    // C6-C127 disulfide: predicted above the diagonal, true below.
    assert_eq!(png.pixel(mx + 126 * 7 + 3, my + 5 * 7 + 3), PREDICTED_FULL);
    assert_eq!(png.pixel(mx + 5 * 7 + 3, my + 126 * 7 + 3), TRUE_CONTACT);
    // The true contacts are outlined above the diagonal: the cell's border, not its centre.
    assert_eq!(png.pixel(mx + 126 * 7, my + 5 * 7 + 3), TRUE_CONTACT, "left border of cell (5, 126)");
    let (non_contact_i, non_contact_j) = (0u32, 100u32);
    assert_eq!(masked[(non_contact_i * 129 + non_contact_j) as usize], 0);
    assert_eq!(png.pixel(mx + non_contact_j * 7, my + non_contact_i * 7 + 3), BACKGROUND, "no border");
    // Colour bar: p = 1 at the top, p = 0 (white) at the bottom.
    let (bx, by) = layout.bar_origin;
    assert_eq!(png.pixel(bx + BAR_WIDTH / 2, by), PREDICTED_FULL);
    assert_eq!(png.pixel(bx + BAR_WIDTH / 2, by + layout.side - 1), BACKGROUND);
    assert_eq!(png.pixel(bx - 1, by + 10), [90, 90, 90], "the bar's frame");
    // Axes and tick labels left of and below the map, the title above it.
    assert!(png.dark((0, mx), (my, my + layout.side)) > 300, "y axis and its labels");
    assert!(png.dark((mx, mx + layout.side), (my + layout.side, png.height)) > 300, "x axis and its labels");
    assert!(png.dark((0, png.width), (0, my)) > 600, "title and scores");
    assert!(png.dark((bx + BAR_WIDTH, png.width), (by, by + layout.side)) > 100, "colour-bar tick labels");
}

#[test]
fn small_maps_are_enlarged_and_bad_maps_are_errors() {
    let layout = Layout::new(3, 4).unwrap();
    assert_eq!((layout.scale, layout.side), (100, 300), "at least 300 pixels");
    assert!(Layout::new(0, 4).is_err());
    assert!(Layout::new(2000, 20).is_err(), "over 32,768 pixels");
    let probs = vec![0.5f32; 9];
    let numbers = ResidueNumber::sequential(4);
    let picture = ContactPicture {
        name: "p",
        probs: &probs,
        truth: None,
        len: 3,
        residues: Some(&numbers),
        scores: None,
        min_sep: 6,
    };
    assert_eq!(format!("{:#}", picture.render(4).unwrap_err()), "p: 4 residue numbers for a map of 3 residues");
    let picture = ContactPicture { residues: None, ..picture };
    let image = picture.render(4).unwrap();
    let (mx, my) = layout.map_origin;
    assert_eq!(image.pixel(mx + 250, my + 50), image.pixel(mx + 50, my + 250), "mirrored without truth");
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

fn qf(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qf-engine")).args(args).output().unwrap()
}

#[test]
fn plot_command_draws_one_run_or_several_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_log(&tmp.path().join("a"), CLASSIFY_LOG);
    let b = write_log(&tmp.path().join("b"), CLASSIFY_LOG);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let one = qf(&["plot", &s(&a)]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert_eq!(decode(&a.join("curves.png")).width, 2 * PANEL_WIDTH);

    let out = tmp.path().join("both.png");
    let both = qf(&["plot", &s(&a), &s(&b), "-o", &s(&out), "--metric", "accuracy,macro_f1"]);
    assert!(both.status.success(), "{}", String::from_utf8_lossy(&both.stderr));
    assert_eq!(decode(&out).width, 3 * PANEL_WIDTH);

    let error = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    };
    assert_eq!(error(qf(&["plot", &s(&a), &s(&b)])), "error: 2 runs given: name the picture with -o FILE.png");
    let missing = tmp.path().join("missing");
    assert_eq!(
        error(qf(&["plot", &s(&missing)])),
        format!("error: run directory {} does not exist", missing.display())
    );
    let empty = write_log(&tmp.path().join("empty"), "");
    assert_eq!(
        error(qf(&["plot", &s(&empty)])),
        format!(
            "error: {} is empty: the run has logged nothing yet, so there is nothing to plot",
            empty.join("metrics.jsonl").display()
        )
    );
    let help = qf(&["plot", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Examples:") && help.contains("--metric"), "{help}");
}

#[test]
fn text_needs_no_system_font() {
    // plotters' `ttf` feature (font-kit, fontconfig, FreeType) stays out of the build: text
    // comes from the embedded DejaVu subset through `ab_glyph`.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for system in ["font-kit", "yeslogic-fontconfig-sys", "freetype-sys", "servo-fontconfig"] {
        assert!(!lock.contains(&format!("name = \"{system}\"")), "{system} is in Cargo.lock");
    }
    assert!(lock.contains("name = \"ab_glyph\""));
    let font = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans-subset.ttf")).unwrap();
    assert!(font.len() < 300_000, "the embedded font stays small ({} bytes)", font.len());
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/LICENSE-DejaVu.txt")).is_file());
    // The title of a curves picture is drawn with it: dark pixels in the title band.
    let image = CurvesPlot::new(vec![parse(CLASSIFY_LOG)], &[]).unwrap().render().unwrap();
    let dark = (0..TITLE_HEIGHT)
        .flat_map(|y| (0..image.width).map(move |x| (x, y)))
        .filter(|&(x, y)| image.pixel(x, y).iter().all(|&c| c < 110))
        .count();
    assert!(dark > 100, "title text drawn ({dark} dark pixels)");
}

#[test]
fn the_log_redraws_curves_at_each_evaluation_and_clears_a_killed_write() {
    use qf_engine::train::log::MetricsLog;
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join(".curves.png.tmp-4242");
    std::fs::write(&stale, b"half a picture").unwrap();
    let mut log = MetricsLog::open(Some(&tmp.path().join("metrics.jsonl"))).unwrap();
    assert!(!stale.exists(), "a killed run's temporary picture is removed on open");
    log.event("step", serde_json::json!({ "step": 1, "loss": 2.0 })).unwrap();
    assert!(!tmp.path().join("curves.png").exists(), "not drawn at a step");
    log.event("eval", serde_json::json!({ "step": 1, "accuracy": 0.5 })).unwrap();
    let png = decode(&tmp.path().join("curves.png"));
    assert_eq!(png.width, 2 * PANEL_WIDTH, "loss and accuracy after the first evaluation");
}
