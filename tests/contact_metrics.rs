//! Contact metrics against hand-computed examples, and the contact-map writers (CSV, NPY,
//! PNG) read back.

mod common;

use approx::assert_abs_diff_eq;
use qf_engine::data::contact_io::{
    default_scale, encode_npy, render_contact_image, write_csv, write_npy, write_png, BACKGROUND, DIAGONAL,
    NOT_EVALUATED, PREDICTED_FULL, TRUE_CONTACT,
};
use qf_engine::data::contacts::{ContactSet, CONTACT_CUTOFF, MIN_SEPARATION, UNKNOWN};
use qf_engine::metrics::contact::{ContactMetrics, SeparationRange};

/// An L×L map: `fill` everywhere, then the listed upper-triangle pairs.
fn map(len: usize, fill: f32, pairs: &[(usize, usize, f32)]) -> Vec<f32> {
    let mut m = vec![fill; len * len];
    for &(i, j, v) in pairs {
        m[i * len + j] = v;
    }
    m
}

fn labels(len: usize, contacts: &[(usize, usize)]) -> Vec<u8> {
    let mut l = vec![0u8; len * len];
    for &(i, j) in contacts {
        l[i * len + j] = 1;
        l[j * len + i] = 1;
    }
    l
}

// ---------------------------------------------------------------------------------------
// MCC
// ---------------------------------------------------------------------------------------

/// L = 6, min_sep 2: the 10 pairs with j - i >= 2 are scored.
/// Truth: (0,4), (1,5), (2,5). Predicted > 0.5: (0,4) 0.9, (2,5) 0.7, (0,2) 0.6;
/// (1,5) 0.4 is missed. TP 2, FN 1, FP 1, TN 6: MCC = (2*6 - 1*1) / sqrt(3*3*7*7) = 11/21.
fn protein_a() -> (Vec<f32>, Vec<u8>) {
    let probs = map(6, 0.1, &[(0, 4, 0.9), (2, 5, 0.7), (0, 2, 0.6), (1, 5, 0.4), (0, 1, 0.99)]);
    // the band |i-j| < 2 holds a confident contact that must not count
    (probs, labels(6, &[(0, 4), (1, 5), (2, 5), (0, 1)]))
}

#[test]
fn mcc_of_a_worked_example() {
    let (mut probs, truth) = protein_a();
    let mut metrics = ContactMetrics::with_options(2, 0.5);
    let scores = metrics.add(&probs, &truth, 6).unwrap();
    let c = scores.confusion;
    assert_eq!((c.tp, c.fn_, c.fp, c.tn), (2, 1, 1, 6));
    assert_abs_diff_eq!(scores.mcc.unwrap(), 11.0 / 21.0, epsilon = 1e-12);
    // only the upper triangle is read: garbage below the diagonal changes nothing
    for i in 0..6 {
        for j in 0..i {
            probs[i * 6 + j] = 0.97;
        }
    }
    let again = ContactMetrics::with_options(2, 0.5).add(&probs, &truth, 6).unwrap();
    assert_eq!(again, scores);
    // the threshold is strict: 0.5 exactly is a negative prediction
    let at_threshold = map(6, 0.1, &[(0, 4, 0.5)]);
    let s = ContactMetrics::with_options(2, 0.5).add(&at_threshold, &labels(6, &[(0, 4)]), 6).unwrap();
    assert_eq!((s.confusion.tp, s.confusion.fn_), (0, 1));
}

#[test]
fn mcc_of_an_all_negative_prediction_or_no_contacts_is_zero_not_nan() {
    let mut metrics = ContactMetrics::with_options(2, 0.5);
    let none = map(6, 0.1, &[]);
    let s = metrics.add(&none, &labels(6, &[(0, 4)]), 6).unwrap();
    assert_eq!(s.mcc, Some(0.0), "all-negative prediction");
    let s = metrics.add(&none, &labels(6, &[]), 6).unwrap();
    assert_eq!(s.mcc, Some(0.0), "no contacts and nothing predicted");
    let all = map(6, 0.9, &[]);
    let s = metrics.add(&all, &labels(6, &[]), 6).unwrap();
    assert_eq!(s.mcc, Some(0.0), "everything predicted, nothing true");
    // L <= min_sep: no pair is evaluated, so there is no MCC and it does not count
    let tiny = metrics.add(&[0.9; 4], &[1; 4], 2).unwrap();
    assert_eq!(tiny.mcc, None);
    let report = metrics.finish();
    assert_eq!((report.proteins, report.mcc_proteins, report.mcc_degenerate), (4, 3, 3));
    assert_eq!(report.mcc_mean, Some(0.0));
    assert!(report.mcc_pooled.unwrap().is_finite());
}

#[test]
fn pooled_and_per_protein_mcc_differ() {
    let mut metrics = ContactMetrics::with_options(2, 0.5);
    let (probs, truth) = protein_a();
    metrics.add(&probs, &truth, 6).unwrap();
    // protein B: one true contact, nothing predicted: MCC 0; TP 0, FN 1, FP 0, TN 9
    metrics.add(&map(6, 0.1, &[]), &labels(6, &[(1, 4)]), 6).unwrap();
    let report = metrics.finish();
    assert_abs_diff_eq!(report.mcc_mean.unwrap(), (11.0 / 21.0 + 0.0) / 2.0, epsilon = 1e-12);
    // pooled: TP 2, FN 2, FP 1, TN 15: (2*15 - 1*2) / sqrt(3*4*16*17) = 28 / sqrt(3264)
    let p = report.pooled;
    assert_eq!((p.tp, p.fn_, p.fp, p.tn), (2, 2, 1, 15));
    assert_abs_diff_eq!(report.mcc_pooled.unwrap(), 28.0 / 3264f64.sqrt(), epsilon = 1e-12);
    assert!((report.mcc_pooled.unwrap() - report.mcc_mean.unwrap()).abs() > 0.2);
}

// ---------------------------------------------------------------------------------------
// precision at L, L/2, L/5
// ---------------------------------------------------------------------------------------

/// L = 30: k = 30, 15, 6 for P@L, P@L/2, P@L/5.
/// Long range (j - i >= 24) has 21 pairs. Ranked: (0,29) .95 contact, (0,28) .90, (1,29) .85
/// contact, (0,27) .80 contact, (1,28) .75, (2,29) .70 contact; the other 15 at 0.01, tied,
/// in row-major order, with one contact at (3,28), 12th of them.
/// P@L/5 = 4/6; P@L/2 = top 15 = the 6 + 9 tied ones before (3,28): 4/15;
/// P@L = only 21 pairs exist: 5/21.
/// Short range: (0,6) .99 contact, (5,12) .98 not, the rest 0: P@L/5 = 1/6, P@L/2 = 1/15,
/// P@L = 1/30. Medium range: no contact: 0.
/// All (>= 6): top 6 = (0,6), (5,12), (0,29), (0,28), (1,29), (0,27): 4/6, and below.
fn ranked_example() -> (Vec<f32>, Vec<u8>) {
    let mut pairs = vec![
        (0, 29, 0.95),
        (0, 28, 0.90),
        (1, 29, 0.85),
        (0, 27, 0.80),
        (1, 28, 0.75),
        (2, 29, 0.70),
        (0, 6, 0.99),
        (5, 12, 0.98),
    ];
    for i in 0..30 {
        for j in i + 24..30 {
            if !pairs.iter().any(|&(a, b, _)| (a, b) == (i, j)) {
                pairs.push((i, j, 0.01));
            }
        }
    }
    let truth = labels(30, &[(0, 29), (1, 29), (0, 27), (2, 29), (3, 28), (0, 6)]);
    (map(30, 0.0, &pairs), truth)
}

#[test]
fn precision_at_l_by_range_of_a_worked_example() {
    let (probs, truth) = ranked_example();
    let mut metrics = ContactMetrics::new();
    let scores = metrics.add(&probs, &truth, 30).unwrap();
    let p = |range: SeparationRange| {
        let r = SeparationRange::ALL.iter().position(|&x| x == range).unwrap();
        scores.precision[r].map(|v| v.unwrap())
    };
    let expect = |got: [f64; 3], want: [f64; 3], what: &str| {
        for k in 0..3 {
            assert!(approx::abs_diff_eq!(got[k], want[k], epsilon = 1e-12), "{what} [{k}]: {} vs {}", got[k], want[k]);
        }
    };
    expect(p(SeparationRange::Long), [5.0 / 21.0, 4.0 / 15.0, 4.0 / 6.0], "long");
    expect(p(SeparationRange::Short), [1.0 / 30.0, 1.0 / 15.0, 1.0 / 6.0], "short");
    expect(p(SeparationRange::Medium), [0.0, 0.0, 0.0], "medium");
    // all: top 15 = the 8 ranked pairs + 7 tied long ones before (3,28): 5/15;
    // top 30 = those + the other 8 long ones (with (3,28)) + 7 zeros: 6/30
    expect(p(SeparationRange::All), [6.0 / 30.0, 5.0 / 15.0, 4.0 / 6.0], "all");
    // the report averages over proteins: a second, perfect long-range protein
    let mut perfect = probs.clone();
    let truth2 = truth.clone();
    for i in 0..30 {
        for j in i + 1..30 {
            perfect[i * 30 + j] = if truth2[i * 30 + j] == 1 { 0.9 } else { 0.0 };
        }
    }
    metrics.add(&perfect, &truth2, 30).unwrap();
    let report = metrics.finish();
    let long = report.precision.iter().find(|r| r.range == "long").unwrap();
    // perfect protein: top 6 long pairs = the 5 contacts then one non-contact: 5/6
    assert_abs_diff_eq!(long.p_at_l5.unwrap(), (4.0 / 6.0 + 5.0 / 6.0) / 2.0, epsilon = 1e-12);
    assert_eq!((long.min_sep, long.max_sep, long.proteins), (24, None, 2));
}

#[test]
fn precision_takes_at_least_one_pair_and_ignores_unknown_labels() {
    // L = 4, min_sep 1: L/5 = 0 -> k = 1 (the single best pair)
    let mut metrics = ContactMetrics::with_options(1, 0.5);
    let probs = map(4, 0.0, &[(0, 3, 0.8), (1, 3, 0.9)]);
    let mut truth = labels(4, &[(0, 3)]);
    let s = metrics.add(&probs, &truth, 4).unwrap();
    let all = SeparationRange::ALL.iter().position(|&r| r == SeparationRange::All).unwrap();
    assert_eq!(s.precision[all][2], Some(0.0), "best pair (1,3) is not a contact");
    // with (1,3) unknown it is not ranked at all
    truth[4 + 3] = UNKNOWN;
    truth[3 * 4 + 1] = UNKNOWN;
    let s = metrics.add(&probs, &truth, 4).unwrap();
    assert_eq!(s.precision[all][2], Some(1.0));
    assert_eq!(s.confusion.pairs(), 5, "6 pairs minus the unknown one");
    // no long-range pair in a 4-residue protein: no precision, not zero
    let long = SeparationRange::ALL.iter().position(|&r| r == SeparationRange::Long).unwrap();
    assert_eq!(s.precision[long], [None, None, None]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut metrics = ContactMetrics::new();
    let e = metrics.add(&[0.0; 8], &[0; 9], 3).unwrap_err();
    assert_eq!(e.to_string(), "contact probabilities have 8 values, expected L×L = 9");
    let e = metrics.add(&[0.0; 9], &[0; 8], 3).unwrap_err();
    assert_eq!(e.to_string(), "contact labels have 8 values, expected L×L = 9");
    let mut probs = vec![0.0; 9];
    probs[2] = f32::NAN;
    let e = metrics.add(&probs, &[0; 9], 3).unwrap_err();
    assert_eq!(e.to_string(), "contact probability at (0, 2) is NaN");
    assert_eq!(metrics.finish().proteins, 0, "failed adds leave no trace");
    assert_eq!(metrics.finish().mcc_mean, None);
}

#[test]
fn report_serializes_to_json_and_prints_a_table() {
    let (probs, truth) = ranked_example();
    let mut metrics = ContactMetrics::new();
    metrics.add(&probs, &truth, 30).unwrap();
    let report = metrics.finish();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["proteins"], 1);
    assert_eq!(json["min_sep"], 6);
    assert_eq!(json["precision"][2]["range"], "long");
    assert_abs_diff_eq!(json["precision"][2]["p_at_l5"].as_f64().unwrap(), 4.0 / 6.0, epsilon = 1e-12);
    assert_eq!(json["pooled"]["fn"], report.pooled.fn_);
    let table = report.to_string();
    eprintln!("{table}");
    assert!(table.contains("long >=24"), "{table}");
    assert!(table.contains("0.6667"), "{table}");
    assert!(table.lines().count() >= 7);
}

#[test]
fn true_contacts_as_predictions_score_perfectly_on_the_dataset_fixture() {
    let set = ContactSet::open_prefix(common::fixture("contacts/mini")).unwrap();
    let mut metrics = ContactMetrics::new();
    for i in 0..set.len() {
        let labels = set.labels(i, CONTACT_CUTOFF, MIN_SEPARATION);
        let probs: Vec<f32> = labels.contacts.iter().map(|&c| c as f32).collect();
        let s = metrics.add_labels(&probs, &labels).unwrap();
        assert_eq!(s.mcc, Some(1.0), "{}", set.name(i));
    }
    let report = metrics.finish();
    assert_eq!((report.mcc_mean, report.mcc_pooled), (Some(1.0), Some(1.0)));
    // lysozyme 134 and ubiquitin 81 long-range contacts: more than L/5, so P@L/5 = 1
    let long = report.precision.iter().find(|r| r.range == "long").unwrap();
    assert_eq!(long.p_at_l5, Some(1.0));
}

// ---------------------------------------------------------------------------------------
// CSV, NPY, PNG
// ---------------------------------------------------------------------------------------

#[test]
fn csv_has_one_line_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.csv");
    let values = [0.0, 0.25, 1.0, 0.125, 0.5, 0.75, 1e-7, 2.0, 0.1];
    write_csv(&path, &values, 3).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "0,0.25,1\n0.125,0.5,0.75\n0.0000001,2,0.1\n");
    let back: Vec<f32> = text.lines().flat_map(|l| l.split(',')).map(|v| v.parse().unwrap()).collect();
    assert_eq!(back, values);
}

/// Parse a .npy v1.0 file: (descr, fortran_order, shape, data).
fn parse_npy(bytes: &[u8]) -> (String, bool, Vec<usize>, Vec<f32>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!((bytes[6], bytes[7]), (1, 0), "version 1.0");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data_start = 10 + header_len;
    assert_eq!(data_start % 64, 0, "data is 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..data_start]).unwrap();
    assert!(header.ends_with('\n'));
    let dict = header.trim_end();
    assert!(dict.starts_with('{') && dict.ends_with('}'), "{dict}");
    let field = |key: &str| {
        let start = dict.find(&format!("'{key}': ")).unwrap() + key.len() + 4;
        dict[start..].to_string()
    };
    let descr = field("descr")[1..4].to_string();
    let fortran = field("fortran_order").starts_with("True");
    let shape_text = field("shape");
    let shape_text = &shape_text[1..shape_text.find(')').unwrap()];
    let shape: Vec<usize> = shape_text.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = bytes[data_start..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (descr, fortran, shape, data)
}

#[test]
fn npy_header_parses_back_and_data_round_trips() {
    for len in [1usize, 3, 76, 129, 1000] {
        let values: Vec<f32> = (0..len * len).map(|k| k as f32 / 7.0).collect();
        let bytes = encode_npy(&values, len).unwrap();
        let (descr, fortran, shape, data) = parse_npy(&bytes);
        assert_eq!((descr.as_str(), fortran, shape), ("<f4", false, vec![len, len]));
        assert_eq!(data, values);
    }
    let bytes = encode_npy(&[0.5; 4], 2).unwrap();
    assert_eq!(bytes.len(), 128 + 16, "header padded from 71 to 128 bytes");
    let header = std::str::from_utf8(&bytes[10..128]).unwrap();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
    assert_eq!(header, format!("{dict}{}\n", " ".repeat(128 - 10 - dict.len() - 1)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.npy");
    write_npy(&path, &[0.5; 4], 2).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(encode_npy(&[0.5; 3], 2).is_err());
}

fn decode_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixel(buf: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let at = 3 * (y * width + x) as usize;
    [buf[at], buf[at + 1], buf[at + 2]]
}

#[test]
fn png_shows_prediction_above_and_truth_below_the_diagonal() {
    // L = 3, scale 4: 12 x 12 pixels. Row i is y, column j is x.
    let pred = map(3, 0.0, &[(0, 1, 1.0), (0, 2, 0.5), (1, 2, 0.0)]);
    let mut truth = labels(3, &[(0, 2)]);
    truth[2 * 3 + 1] = UNKNOWN; // (2,1) not evaluated
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.png");
    write_png(&path, &pred, Some(&truth), 3, Some(4)).unwrap();
    let (w, h, buf) = decode_png(&path);
    assert_eq!((w, h), (12, 12));
    let cell = |i: u32, j: u32| pixel(&buf, w, j * 4 + 1, i * 4 + 2);
    assert_eq!(cell(0, 1), PREDICTED_FULL, "p = 1");
    let half = cell(0, 2);
    assert!(half[2] > half[0] && half[0] < 255 && half[0] > PREDICTED_FULL[0], "p = 0.5: {half:?}");
    assert_eq!(cell(1, 2), BACKGROUND, "p = 0");
    assert_eq!(cell(2, 0), TRUE_CONTACT);
    assert_eq!(cell(1, 0), BACKGROUND, "no contact");
    assert_eq!(cell(2, 1), NOT_EVALUATED);
    assert_eq!(pixel(&buf, w, 5, 5), DIAGONAL, "the diagonal line");
    assert_eq!(pixel(&buf, w, 6, 5), NOT_EVALUATED, "beside the diagonal line");
    // without truth the prediction is mirrored
    let image = render_contact_image(&pred, None, 3, 4).unwrap();
    assert_eq!(image.pixel(1, 5), PREDICTED_FULL);
    assert_eq!(image.pixel(1, 9), image.pixel(9, 1));
}

#[test]
fn png_of_a_real_chain_is_about_1000_pixels() {
    let set = ContactSet::open_prefix(common::fixture("contacts/mini")).unwrap();
    let i = set.find("2VB1_A").unwrap();
    let labels = set.labels(i, CONTACT_CUTOFF, MIN_SEPARATION);
    let probs: Vec<f32> = labels.contacts.iter().map(|&c| c as f32).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("2vb1.png");
    write_png(&path, &probs, Some(&labels.masked()), labels.len, None).unwrap();
    let (w, h, buf) = decode_png(&path);
    let scale = default_scale(129);
    assert_eq!((scale, w, h), (7, 903, 903));
    // C6-C127 disulfide: predicted above the diagonal, true below
    assert_eq!(pixel(&buf, w, 126 * 7 + 3, 5 * 7 + 3), PREDICTED_FULL);
    assert_eq!(pixel(&buf, w, 5 * 7 + 3, 126 * 7 + 3), TRUE_CONTACT);
    assert_eq!(default_scale(1754), 1);
    assert_eq!(default_scale(500), 2);
    assert!(render_contact_image(&probs, None, labels.len, 0).is_err());
}
