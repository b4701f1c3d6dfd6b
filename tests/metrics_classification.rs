//! Tests for the classification report against hand-computed scikit-learn numbers.

use approx::assert_abs_diff_eq;
use qf_engine::metrics::classification::{tiers_by_train_count, ClassificationReport, GroupAccuracy, Predictions};

fn names(n: usize) -> Vec<String> {
    (0..n).map(|c| format!("PF{c:05}")).collect()
}

// Worked example: 8 samples, 8 classes (only 0-3 ever appear as a label or a top-1).
//
//   sample    0  1  2  3  4  5  6  7
//   label     0  0  0  0  1  1  2  2
//   top-1     0  0  0  1  1  0  3  0
//
// Per class (tp, support = #label, predicted = #top-1):
//   class 0: tp 3 (samples 0,1,2), support 4, predicted 5 (0,1,2,5,7)
//            P = 3/5 = 0.6, R = 3/4 = 0.75, F1 = 2·3/(4+5) = 6/9 = 0.666667
//   class 1: tp 1 (sample 4), support 2, predicted 2 (3,4)
//            P = 1/2, R = 1/2, F1 = 2/(2+2) = 0.5
//   class 2: tp 0, support 2, predicted 0 -> P = 0 (ill-defined, sklearn warns), R = 0, F1 = 0
//   class 3: tp 0, support 0, predicted 1 -> P = 0, R = 0 (ill-defined), F1 = 0
// sklearn's labels=None averages over unique_labels(y_true, y_pred) = {0, 1, 2, 3}:
//   macro P  = (0.6 + 0.5 + 0 + 0) / 4 = 0.275
//   macro R  = (0.75 + 0.5 + 0 + 0) / 4 = 0.3125
//   macro F1 = (2/3 + 1/2 + 0 + 0) / 4 = (7/6) / 4 = 7/24 = 0.291667
// Weighted by support (4, 2, 2, 0; total 8):
//   weighted P  = (4·0.6 + 2·0.5) / 8 = 3.4/8 = 0.425
//   weighted R  = (4·0.75 + 2·0.5) / 8 = 4/8 = 0.5  (= accuracy, always)
//   weighted F1 = (4·2/3 + 2·0.5) / 8 = (11/3)/8 = 11/24 = 0.458333
//   accuracy    = 4/8 = 0.5 (samples 0, 1, 2, 4)
// scikit-learn 1.9 `precision_recall_fscore_support` gives exactly
// (0.275, 0.3125, 0.29166666666666663) macro and (0.425, 0.5, 0.4583333333333333) weighted.
//
// Top-5 lists (first entry = top-1): the label is in the first five for samples
// 0,1,2,3,4,6 but not 5 (missing) nor 7 (at rank 6) -> top-5 accuracy 6/8 = 0.75.
fn example_top5() -> Vec<Vec<u32>> {
    vec![
        vec![0, 1, 2, 3, 4],
        vec![0, 2, 1, 5, 6],
        vec![0, 3, 4, 5, 6],
        vec![1, 0, 2, 3, 4],
        vec![1, 0, 2, 3, 4],
        vec![0, 2, 3, 4, 5],
        vec![3, 4, 5, 6, 2],
        vec![0, 1, 3, 4, 5, 2],
    ]
}

const LABELS: [u32; 8] = [0, 0, 0, 0, 1, 1, 2, 2];
const FAMILY_SIZE: [usize; 8] = [250, 60, 12, 3, 0, 0, 1, 9];

fn example_report() -> ClassificationReport {
    let tiers = tiers_by_train_count(&FAMILY_SIZE, &[2]);
    let top5 = example_top5();
    ClassificationReport::compute(8, &LABELS, Predictions::TopK(&top5), &names(8), Some(&tiers), Some(&FAMILY_SIZE))
        .unwrap()
}

#[test]
fn worked_example_matches_sklearn() {
    let r = example_report();
    assert_eq!((r.n_samples, r.n_classes, r.n_classes_seen), (8, 8, 4));
    assert_abs_diff_eq!(r.accuracy, 0.5, epsilon = 1e-12);
    assert_abs_diff_eq!(r.top5_accuracy, 0.75, epsilon = 1e-12);
    assert_abs_diff_eq!(r.macro_precision, 0.275, epsilon = 1e-12);
    assert_abs_diff_eq!(r.macro_recall, 0.3125, epsilon = 1e-12);
    assert_abs_diff_eq!(r.macro_f1, 7.0 / 24.0, epsilon = 1e-12);
    assert_abs_diff_eq!(r.weighted_precision, 0.425, epsilon = 1e-12);
    assert_abs_diff_eq!(r.weighted_recall, 0.5, epsilon = 1e-12);
    assert_abs_diff_eq!(r.weighted_f1, 11.0 / 24.0, epsilon = 1e-12);
    assert!(r.macro_f1 < r.weighted_f1, "the big class does best, so weighting raises F1");
    assert_eq!((r.n_precision_ill_defined, r.n_recall_ill_defined), (1, 1));
    let classes: Vec<u32> = r.per_class.iter().map(|m| m.class).collect();
    assert_eq!(classes, [0, 1, 2, 3]);
    let c0 = &r.per_class[0];
    assert_eq!((c0.support, c0.predicted, c0.train_count, c0.tier), (4, 5, Some(250), Some(0)));
    assert_abs_diff_eq!(c0.precision, 0.6, epsilon = 1e-12);
    assert_abs_diff_eq!(c0.recall, 0.75, epsilon = 1e-12);
    assert_abs_diff_eq!(c0.f1, 2.0 / 3.0, epsilon = 1e-12);
    assert_eq!(c0.name, "PF00000");
}

fn group(r: &[GroupAccuracy], name: &str) -> GroupAccuracy {
    r.iter().find(|g| g.group == name).cloned().unwrap_or_else(|| panic!("no group {name}"))
}

#[test]
fn per_tier_accuracy() {
    // tiers_by_train_count(sizes, [2]): the two largest families (0: 250, 1: 60) are
    // tier 0, the other six tier 1.
    assert_eq!(tiers_by_train_count(&FAMILY_SIZE, &[2]), [0, 0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(tiers_by_train_count(&FAMILY_SIZE, &[2, 4]), [0, 0, 1, 2, 2, 2, 2, 1]);
    let r = example_report();
    assert_eq!(r.per_tier.len(), 2);
    // Tier 0 = samples 0-5: top-1 hits 0,1,2,4 -> 4/6; top-5 hits 0-4 -> 5/6.
    let t0 = group(&r.per_tier, "tier 0");
    assert_eq!((t0.n_classes, t0.support), (2, 6));
    assert_abs_diff_eq!(t0.accuracy.unwrap(), 4.0 / 6.0, epsilon = 1e-12);
    assert_abs_diff_eq!(t0.top5_accuracy.unwrap(), 5.0 / 6.0, epsilon = 1e-12);
    // Tier 1 = samples 6, 7 (class 2): no top-1 hit; top-5 hit for sample 6 only.
    let t1 = group(&r.per_tier, "tier 1");
    assert_eq!((t1.n_classes, t1.support), (6, 2));
    assert_abs_diff_eq!(t1.accuracy.unwrap(), 0.0, epsilon = 1e-12);
    assert_abs_diff_eq!(t1.top5_accuracy.unwrap(), 0.5, epsilon = 1e-12);
}

#[test]
fn accuracy_by_family_size_bins() {
    let r = example_report();
    let bins: Vec<&str> = r.by_family_size.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(bins, ["0", "1-9", "10-49", "50-199", "200+"]);
    // Classes 4, 5 have no training sequences and no samples.
    let b = group(&r.by_family_size, "0");
    assert_eq!((b.n_classes, b.support, b.accuracy), (2, 0, None));
    // Classes 3 (3), 6 (1), 7 (9): no samples either.
    let b = group(&r.by_family_size, "1-9");
    assert_eq!((b.n_classes, b.support, b.accuracy), (3, 0, None));
    // Class 2 (12): samples 6, 7 -> top-1 0/2, top-5 1/2.
    let b = group(&r.by_family_size, "10-49");
    assert_eq!((b.n_classes, b.support), (1, 2));
    assert_abs_diff_eq!(b.accuracy.unwrap(), 0.0, epsilon = 1e-12);
    assert_abs_diff_eq!(b.top5_accuracy.unwrap(), 0.5, epsilon = 1e-12);
    // Class 1 (60): samples 4, 5 -> top-1 1/2, top-5 1/2.
    let b = group(&r.by_family_size, "50-199");
    assert_abs_diff_eq!(b.accuracy.unwrap(), 0.5, epsilon = 1e-12);
    assert_abs_diff_eq!(b.top5_accuracy.unwrap(), 0.5, epsilon = 1e-12);
    // Class 0 (250): samples 0-3 -> top-1 3/4, top-5 4/4.
    let b = group(&r.by_family_size, "200+");
    assert_abs_diff_eq!(b.accuracy.unwrap(), 0.75, epsilon = 1e-12);
    assert_abs_diff_eq!(b.top5_accuracy.unwrap(), 1.0, epsilon = 1e-12);
}

#[test]
fn worst_families_by_recall_with_ties_by_support() {
    let r = example_report();
    let worst: Vec<u32> = r.worst_families.iter().map(|m| m.class).collect();
    assert_eq!(worst, [2, 1, 0], "recall 0, 0.5, 0.75; class 3 has no samples");
    // All recalls 0: larger support first.
    let labels = [0, 1, 1, 2, 2, 2];
    let preds: Vec<Vec<u32>> = vec![vec![1], vec![0], vec![0], vec![0], vec![0], vec![0]];
    let r = ClassificationReport::compute(3, &labels, Predictions::TopK(&preds), &[], None, None).unwrap();
    let worst: Vec<u32> = r.worst_families.iter().map(|m| m.class).collect();
    assert_eq!(worst, [2, 1, 0]);
    assert_eq!(r.worst_families[0].name, "class_2");
    assert!(r.per_tier.is_empty() && r.by_family_size.is_empty());
}

#[test]
fn scores_give_the_same_report_as_ranked_lists() {
    // Scores 10, 9, 8, ... along each ranked list, 0 elsewhere.
    let top5 = example_top5();
    let mut scores = vec![0f32; 8 * 8];
    for (i, list) in top5.iter().enumerate() {
        for (rank, &c) in list.iter().enumerate() {
            scores[i * 8 + c as usize] = 10.0 - rank as f32;
        }
    }
    let tiers = tiers_by_train_count(&FAMILY_SIZE, &[2]);
    let from_scores = ClassificationReport::compute(
        8,
        &LABELS,
        Predictions::Scores(&scores),
        &names(8),
        Some(&tiers),
        Some(&FAMILY_SIZE),
    )
    .unwrap();
    assert_eq!(from_scores, example_report());
    // Ties rank the lower class id first, like argmax.
    let r =
        ClassificationReport::compute(4, &[2], Predictions::Scores(&[0.5, 0.9, 0.9, 0.1]), &[], None, None).unwrap();
    assert_eq!(r.accuracy, 0.0);
    assert_eq!(r.per_class.iter().find(|m| m.class == 1).unwrap().predicted, 1);
}

#[test]
fn json_round_trip_and_table() {
    let r = example_report();
    let json = r.to_json().unwrap();
    let back: ClassificationReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert!(json.contains("\"macro_f1\""));
    let table = r.to_string();
    for needle in ["macro F1", "0.2917", "weighted F1", "0.4583", "tier 1", "200+", "PF00002"] {
        assert!(table.contains(needle), "table lacks {needle}:\n{table}");
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let err = |r: anyhow::Result<ClassificationReport>| r.unwrap_err().to_string();
    let top: Vec<Vec<u32>> = vec![];
    let e = err(ClassificationReport::compute(3, &[], Predictions::TopK(&top), &[], None, None));
    assert!(e.contains("no samples"), "{e}");
    let one = vec![vec![0u32]];
    let e = err(ClassificationReport::compute(3, &[5], Predictions::TopK(&one), &[], None, None));
    assert!(e.contains("label 5") && e.contains("out of range"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0, 1], Predictions::TopK(&one), &[], None, None));
    assert!(e.contains("1 prediction lists for 2 labels"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::TopK(&[vec![]]), &[], None, None));
    assert!(e.contains("empty prediction list"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::TopK(&[vec![0, 9]]), &[], None, None));
    assert!(e.contains("predicted class 9"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::Scores(&[0.1, 0.2]), &[], None, None));
    assert!(e.contains("expected 1 samples × 3 classes"), "{e}");
    let e = err(ClassificationReport::compute(2, &[0], Predictions::Scores(&[0.1, f32::NAN]), &[], None, None));
    assert!(e.contains("NaN"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::TopK(&one), &names(2), None, None));
    assert!(e.contains("2 class names for 3 classes"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::TopK(&one), &[], Some(&[0, 1]), None));
    assert!(e.contains("2 tiers"), "{e}");
    let e = err(ClassificationReport::compute(3, &[0], Predictions::TopK(&one), &[], None, Some(&[1])));
    assert!(e.contains("1 family sizes"), "{e}");
    let e = err(ClassificationReport::compute(0, &[0], Predictions::TopK(&one), &[], None, None));
    assert!(e.contains("n_classes"), "{e}");
}
