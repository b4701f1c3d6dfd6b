//! The data pipeline after reading: family selection and stratification, class weights,
//! token-budget batching with crops and evaluation windows, packing, and statistics —
//! on constructed examples with hand-computed answers, on the committed real excerpt,
//! and on the real `../shared/data/pfam` when present.

mod common;

use approx::assert_abs_diff_eq;
use std::collections::BTreeSet;

use qf_engine::data::batching::{
    average_by_row, crop_start, eval_plan, eval_plan_by_length, pack, training_plan, BatchConfig, PlanItem,
    PlannedBatch,
};
use qf_engine::data::class_weights::{class_weights, ClassWeighting};
use qf_engine::data::dataset::{LabelledSet, LabelledSetBuilder};
use qf_engine::data::pfam::read_pfam_split;
use qf_engine::data::rng::Rng;
use qf_engine::data::stats::dataset_stats;
use qf_engine::data::stratify::{map_split, stratify, StratifySpec, QUANTAFOLD_SPEC};
use qf_engine::data::tokenizer::encode;

/// A labelled set with `count` rows per family, added in the order given.
fn set_with_families(families: &[(&str, usize)]) -> LabelledSet {
    let mut b = LabelledSetBuilder::new();
    let mut rng = Rng::new(11);
    let mut n = 0;
    for &(id, count) in families {
        let f = b.intern_family(id, None).unwrap();
        for _ in 0..count {
            let len = 5 + rng.below_usize(40);
            let seq: Vec<u8> = (0..len).map(|_| b"ACDEFGHIKLMNPQRSTVWY"[rng.below_usize(20)]).collect();
            b.push(&format!("{id}/{n}"), &seq, Some(f)).unwrap();
            n += 1;
        }
    }
    b.finish()
}

fn fixture_train() -> LabelledSet {
    read_pfam_split(&common::fixture("pfam/split"), "train").unwrap()
}

// ---------------------------------------------------------------- stratification

#[test]
fn two_tier_selection_counts_are_exact_on_a_constructed_set() {
    // Insertion order differs from the ranking; Zeta and Alpha tie at 7, Mu and Beta at 2.
    let set =
        set_with_families(&[("Zeta", 7), ("Mu", 2), ("Big", 10), ("Alpha", 7), ("Four", 3), ("Beta", 2), ("One", 1)]);
    let spec: StratifySpec = "2x5,3x2".parse().unwrap();
    let s = stratify(&set, &spec, 42).unwrap();
    // Ranking: Big 10, Alpha 7, Zeta 7, Four 3, Beta 2, Mu 2, One 1.
    assert_eq!(s.label_map.classes, vec!["Big", "Alpha", "Zeta", "Four", "Beta"]);
    assert_eq!(s.label_map.tier_of_class, vec![0, 0, 1, 1, 1]);
    assert_eq!(s.class_counts(), vec![5, 5, 2, 2, 2]);
    assert_eq!(s.rows.len(), 16);
    assert_eq!((s.tiers[0].families, s.tiers[0].rows_available, s.tiers[0].rows_selected), (2, 17, 10));
    assert_eq!((s.tiers[1].families, s.tiers[1].rows_available, s.tiers[1].rows_selected), (3, 12, 6));
    assert_eq!((s.tiers[1].largest_family, s.tiers[1].smallest_family), (7, 2));
    assert_eq!((s.unselected_families, s.unselected_rows), (2, 3));
    // Every chosen row belongs to its class's family, once.
    assert!(s.rows.windows(2).all(|w| w[0] < w[1]));
    for (&r, &c) in s.rows.iter().zip(&s.labels) {
        assert_eq!(set.family(r).unwrap().id, s.label_map.classes[c as usize]);
    }
    // Deterministic per seed; another seed samples other rows of the capped families.
    assert_eq!(stratify(&set, &spec, 42).unwrap(), s);
    assert_ne!(stratify(&set, &spec, 43).unwrap().rows, s.rows);
    // `all` keeps everything.
    let all = stratify(&set, &StratifySpec::all(), 0).unwrap();
    assert_eq!((all.rows.len(), all.label_map.n_classes()), (32, 7));
    assert_eq!(all.rows, (0..32).collect::<Vec<_>>());
}

#[test]
fn mapping_dev_reports_missing_families_and_dropped_rows() {
    let train = fixture_train();
    let dev = read_pfam_split(&common::fixture("pfam/split"), "dev").unwrap();
    let s = stratify(&train, &StratifySpec::all(), 0).unwrap();
    // Ties broken by id: Enolase_C before Radical_SAM, ACR_tran before Trp_dioxygenase.
    assert_eq!(
        s.label_map.classes,
        vec!["ABC_tran", "GTP_EFTU", "Enolase_C", "Radical_SAM", "Pyridoxal_deC", "ACR_tran", "Trp_dioxygenase"]
    );
    let m = map_split(&dev, &s.label_map).unwrap();
    assert_eq!((m.total_rows, m.rows.len(), m.dropped_rows, m.families_kept), (6, 4, 2, 3));
    assert_eq!(m.missing_families.len(), 1);
    assert_eq!((m.missing_families[0].id.as_str(), m.missing_families[0].rows), ("PK_Tyr_Ser-Thr", 2));
    for (&r, &c) in m.rows.iter().zip(&m.labels) {
        assert_eq!(dev.family(r).unwrap().id, s.label_map.classes[c as usize]);
    }
    let text = m.to_string();
    assert!(text.contains("2 rows dropped") && text.contains("PK_Tyr_Ser-Thr (2)"), "{text}");

    let top1 = stratify(&train, &StratifySpec::top(1), 0).unwrap();
    let m = map_split(&dev, &top1.label_map).unwrap();
    assert_eq!((m.rows.len(), m.dropped_rows, m.missing_families.len()), (2, 4, 3));
}

#[test]
fn quantafold_selection_on_the_real_train_split() {
    let Some(dir) = common::shared_data("pfam") else {
        return;
    };
    let train = read_pfam_split(&dir, "train").unwrap();
    let spec: StratifySpec = QUANTAFOLD_SPEC.parse().unwrap();
    let s = stratify(&train, &spec, 7).unwrap();
    // Expected values from the family counts (independently, with a Python script over
    // the CSV): rank 1000 is CofD (33 rows); the next tier starts at DNA_pol_A_exo1 (33).
    assert_eq!((s.tiers[0].families, s.tiers[0].rows_available, s.tiers[0].rows_selected), (1000, 186_350, 129_934));
    assert_eq!((s.tiers[1].families, s.tiers[1].rows_available, s.tiers[1].rows_selected), (1188, 11_317, 11_317));
    assert_eq!(s.tiers[1].families_requested, Some(4000));
    assert_eq!(s.rows.len(), 129_934 + 11_317);
    assert_eq!(s.label_map.n_classes(), 2188);
    assert_eq!(s.label_map.classes[0], "ABC_tran");
    assert_eq!(s.label_map.classes[999], "CofD");
    assert_eq!(s.label_map.classes[1000], "DNA_pol_A_exo1");
    let counts = s.class_counts();
    assert_eq!(counts[0], 200);
    assert!(counts[..1000].iter().all(|&c| c <= 200) && counts[1000..].iter().all(|&c| c <= 50));
    assert_eq!((s.unselected_families, s.unselected_rows), (0, 0));

    let dev = read_pfam_split(&dir, "dev").unwrap();
    let top = stratify(&train, &StratifySpec::top(1000), 7).unwrap();
    let m = map_split(&dev, &top.label_map).unwrap();
    assert_eq!((m.families_kept, m.missing_families.len(), m.dropped_rows), (1000, 941, 1_601));
    assert_eq!(m.rows.len(), 24_943 - 1_601);
}

// ---------------------------------------------------------------- class weights

#[test]
fn class_weights_match_the_sklearn_formula_by_hand() {
    // counts 6, 3, 1 (10 samples, 3 classes present) and one empty class.
    let counts = [6, 3, 1, 0];
    let w = class_weights(&counts, "balanced".parse().unwrap());
    // sklearn: n_samples / (n_classes * bincount) = 10 / (3 * [6, 3, 1]).
    let expected = [0.555_556, 1.111_111, 3.333_333, 0.0];
    for (a, b) in w.weights.iter().zip(expected) {
        assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
    }
    assert_eq!(w.zero_count_classes, vec![3]);
    assert_abs_diff_eq!(w.mean_over_samples(&counts), 1.0, epsilon = 1e-6);

    // tempered:0.5: c^-0.5 = 0.408248, 0.577350, 1; Σ c^0.5 = 2.449490 + 1.732051 + 1
    // = 5.181541; w = c^-0.5 · 10 / 5.181541 = 0.787890, 1.114245, 1.929929.
    let w = class_weights(&counts, "tempered:0.5".parse().unwrap());
    let expected = [0.787_890, 1.114_245, 1.929_929, 0.0];
    for (a, b) in w.weights.iter().zip(expected) {
        assert_abs_diff_eq!(*a, b, epsilon = 1e-5);
    }
    assert_abs_diff_eq!(w.mean_over_samples(&counts), 1.0, epsilon = 1e-6);

    let none = class_weights(&counts, ClassWeighting::None);
    assert_eq!(none.weights, vec![1.0, 1.0, 1.0, 0.0]);
    // tempered:1 is balanced; tempered:0 is none.
    let t1 = class_weights(&counts, ClassWeighting::Tempered { alpha: 1.0 });
    let b = class_weights(&counts, ClassWeighting::Balanced);
    for (x, y) in t1.weights.iter().zip(&b.weights) {
        assert_abs_diff_eq!(x, y, epsilon = 1e-6);
    }
    assert_eq!(class_weights(&counts, ClassWeighting::Tempered { alpha: 0.0 }).weights, none.weights);
}

// ---------------------------------------------------------------- batching

/// Token lengths of a mixed population: mostly short domains, some over the window.
fn synthetic_token_lens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| if rng.below(20) == 0 { 1100 + rng.below(300) as u32 } else { 14 + rng.below(400) as u32 }).collect()
}

fn item_rows(plan: &[PlannedBatch]) -> Vec<usize> {
    let mut rows: Vec<usize> = plan.iter().flat_map(|b| b.items.iter().map(|i| i.row)).collect();
    rows.sort_unstable();
    rows
}

#[test]
fn training_plan_covers_every_row_once_within_the_budget() {
    let lens = synthetic_token_lens(5000, 1);
    let rows: Vec<usize> = (0..5000).filter(|r| r % 5 != 3).collect();
    let cfg = BatchConfig::new(8192, 1024, 99).unwrap();
    let plan = training_plan(&rows, &lens, &cfg, 0).unwrap();
    assert_eq!(item_rows(&plan), rows);
    for batch in &plan {
        assert!(batch.n_tokens() <= 8192);
        for item in &batch.items {
            let residues = lens[item.row] as usize - 2;
            assert!(item.n_tokens() <= 1024);
            assert_eq!(item.residue_len, residues.min(1022));
            assert!(item.residue_start + item.residue_len <= residues);
        }
    }
    // Packing is tight: batches are on average nearly full.
    let total: usize = plan.iter().map(PlannedBatch::n_tokens).sum();
    assert!(total as f64 / (plan.len() * 8192) as f64 > 0.9, "fill {}", total as f64 / (plan.len() * 8192) as f64);
    // Deterministic per (seed, epoch), different across epochs and seeds.
    assert_eq!(training_plan(&rows, &lens, &cfg, 0).unwrap(), plan);
    let next_epoch = training_plan(&rows, &lens, &cfg, 1).unwrap();
    assert_ne!(next_epoch, plan);
    assert_eq!(item_rows(&next_epoch), rows);
    let other_seed = BatchConfig::new(8192, 1024, 100).unwrap();
    assert_ne!(training_plan(&rows, &lens, &other_seed, 0).unwrap(), plan);
}

#[test]
fn bucketing_groups_similar_lengths() {
    let lens = synthetic_token_lens(20_000, 2);
    let rows: Vec<usize> = (0..20_000).collect();
    let cfg = BatchConfig::new(4096, 1024, 5).unwrap();
    let plan = training_plan(&rows, &lens, &cfg, 0).unwrap();
    // Within a batch the spread of lengths is far below the population's (14..=1024).
    let spreads: Vec<usize> = plan
        .iter()
        .filter(|b| b.len() > 1)
        .map(|b| {
            let l: Vec<usize> = b.items.iter().map(PlanItem::n_tokens).collect();
            l.iter().max().unwrap() - l.iter().min().unwrap()
        })
        .collect();
    let mean_spread = spreads.iter().sum::<usize>() as f64 / spreads.len() as f64;
    assert!(mean_spread < 60.0, "mean within-batch spread {mean_spread}");
}

#[test]
fn every_crop_start_is_reachable_over_epochs() {
    // One row of 30 residues, window of 20 residues: starts 0..=10.
    let lens = [32u32];
    let cfg = BatchConfig::new(64, 22, 3).unwrap();
    let mut seen = BTreeSet::new();
    for epoch in 0..400 {
        let plan = training_plan(&[0], &lens, &cfg, epoch).unwrap();
        let item = plan[0].items[0];
        assert_eq!(item.residue_len, 20);
        assert_eq!(item.residue_start, crop_start(3, epoch, 0, 30, 20));
        seen.insert(item.residue_start);
    }
    assert_eq!(seen, (0..=10).collect::<BTreeSet<_>>());
}

#[test]
fn eval_windows_cover_every_residue_of_long_rows() {
    let lens = synthetic_token_lens(300, 3);
    let rows: Vec<usize> = (0..300).collect();
    let cfg = BatchConfig::new(2048, 1024, 0).unwrap();
    let plan = eval_plan(&rows, &lens, &cfg).unwrap();
    let mut covered: Vec<Vec<bool>> = lens.iter().map(|&l| vec![false; l as usize - 2]).collect();
    for batch in &plan {
        assert!(batch.n_tokens() <= 2048);
        for item in &batch.items {
            assert!(item.n_tokens() <= 1024);
            for c in &mut covered[item.row][item.residue_start..item.residue_start + item.residue_len] {
                *c = true;
            }
        }
    }
    assert!(covered.iter().all(|row| row.iter().all(|&c| c)));
    let long = lens.iter().position(|&l| l > 1024).unwrap();
    let windows = plan.iter().flat_map(|b| &b.items).filter(|i| i.row == long).count();
    assert!(windows >= 2);
    assert_eq!(eval_plan(&rows, &lens, &cfg).unwrap(), plan);
}

#[test]
fn window_over_budget_and_bad_rows_are_errors() {
    let e = BatchConfig::new(1000, 1024, 0).unwrap_err().to_string();
    assert!(e.contains("max_len 1024 exceeds the token budget max_tokens 1000"), "{e}");
    let cfg = BatchConfig::new(1024, 1024, 0).unwrap();
    let e = training_plan(&[5], &[10, 10], &cfg, 0).unwrap_err().to_string();
    assert!(e.contains("row 5 is out of range: the set has 2 rows"), "{e}");
}

// ---------------------------------------------------------------- packing

#[test]
fn pack_matches_the_tokenizer_and_carries_labels() {
    let train = fixture_train();
    let s = stratify(&train, &StratifySpec::all(), 0).unwrap();
    let labels = s.labels_by_row(train.len());
    let cfg = BatchConfig::new(1500, 512, 8).unwrap();
    let plan = training_plan(&s.rows, &train.token_lengths(), &cfg, 0).unwrap();
    let mut seen = 0;
    for batch in &plan {
        let packed = pack(&batch.items, &train, |r| labels[r]).unwrap();
        packed.validate().unwrap();
        assert_eq!(packed.n_seqs(), batch.len());
        assert_eq!(packed.n_tokens(), batch.n_tokens());
        for (k, item) in batch.items.iter().enumerate() {
            let (a, b) = (packed.cu_seqlens[k] as usize, packed.cu_seqlens[k + 1] as usize);
            let crop = &train.sequence(item.row)[item.residue_start..item.residue_start + item.residue_len];
            assert_eq!(&packed.tokens[a..b], &encode(crop).unwrap().ids[..]);
            assert_eq!(packed.positions[a..b], (0..(b - a) as u32).collect::<Vec<_>>()[..]);
            assert_eq!(packed.rows[k], item.row);
            assert_eq!(Some(packed.labels[k]), labels[item.row]);
        }
        assert_eq!(pack(&batch.items, &train, |r| labels[r]).unwrap(), packed);
        seen += batch.len();
    }
    assert_eq!(seen, 26);
    // The 1,026-residue row was cropped to the 510-residue window.
    let long = train.name_lookup()["Q8G2M6/1-1026"];
    let item = plan.iter().flat_map(|b| &b.items).find(|i| i.row == long).unwrap();
    assert_eq!(item.residue_len, 510);

    // Unlabelled packing, and a batch mixing labelled and unlabelled rows.
    let unlabelled = pack(&plan[0].items, &train, |_| None).unwrap();
    assert!(unlabelled.labels.is_empty());
    let items =
        [PlanItem { row: 0, residue_start: 0, residue_len: 3 }, PlanItem { row: 1, residue_start: 0, residue_len: 3 }];
    let e = pack(&items, &train, |r| (r == 0).then_some(0)).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("has no class label"), "{e}");
    let bad = [PlanItem { row: 0, residue_start: 1000, residue_len: 3 }];
    assert!(pack(&bad, &train, |_| None).unwrap_err().to_string().contains("outside its"));
}

#[test]
fn eval_windows_pack_and_average_back_per_row() {
    let train = fixture_train();
    let rows: Vec<usize> = (0..train.len()).collect();
    let cfg = BatchConfig::new(2048, 402, 0).unwrap();
    let plan = eval_plan(&rows, &train.token_lengths(), &cfg).unwrap();
    let items: Vec<PlanItem> = plan.iter().flat_map(|b| b.items.iter().copied()).collect();
    // Fake 2-class logits: (window start, 1) so the average is known.
    let logits: Vec<f32> = items.iter().flat_map(|i| [i.residue_start as f32, 1.0]).collect();
    let item_rows: Vec<usize> = items.iter().map(|i| i.row).collect();
    let avg = average_by_row(&item_rows, &logits, 2).unwrap();
    assert_eq!(avg.rows.len(), train.len());
    let long = train.name_lookup()["Q8G2M6/1-1026"];
    let slot = avg.rows.iter().position(|&r| r == long).unwrap();
    // 1,026 residues, window 400, stride 200: starts 0, 200, 400, 600, 626 (mean 365.2).
    assert_eq!(avg.windows[slot], 5);
    assert_eq!(avg.row_values(slot), &[(200 + 400 + 600 + 626) as f32 / 5.0, 1.0]);
    for batch in &plan {
        pack(&batch.items, &train, |_| None).unwrap().validate().unwrap();
    }
}

#[test]
fn length_sorted_eval_plan_has_the_same_items_by_length_with_each_rows_windows_together() {
    let train = fixture_train();
    let rows: Vec<usize> = (0..train.len()).collect();
    let cfg = BatchConfig::new(2048, 402, 0).unwrap();
    let key = |i: &PlanItem| (i.row, i.residue_start, i.residue_len);
    let mut plain: Vec<_> = eval_plan(&rows, &train.token_lengths(), &cfg)
        .unwrap()
        .iter()
        .flat_map(|b| b.items.clone())
        .map(|i| key(&i))
        .collect();
    let sorted: Vec<PlanItem> = eval_plan_by_length(&rows, &train.token_lengths(), &cfg)
        .unwrap()
        .iter()
        .flat_map(|b| b.items.clone())
        .collect();
    assert!(sorted.windows(2).all(|w| w[0].residue_len <= w[1].residue_len), "not sorted by length");
    let mut got: Vec<_> = sorted.iter().map(key).collect();
    plain.sort();
    got.sort();
    assert_eq!(got, plain, "the same windows");
    // The windows of a row are consecutive (the contact evaluation streams rows).
    let mut done = std::collections::HashSet::new();
    for w in sorted.windows(2) {
        if w[0].row != w[1].row {
            assert!(done.insert(w[0].row), "row {} appears in two runs", w[0].row);
        }
    }
}

#[test]
fn first_batch_on_the_real_train_split() {
    let Some(dir) = common::shared_data("pfam") else {
        return;
    };
    let train = read_pfam_split(&dir, "train").unwrap();
    let s = stratify(&train, &QUANTAFOLD_SPEC.parse().unwrap(), 1).unwrap();
    let labels = s.labels_by_row(train.len());
    let cfg = BatchConfig::new(16_384, 1024, 1).unwrap();
    let plan = training_plan(&s.rows, &train.token_lengths(), &cfg, 0).unwrap();
    assert_eq!(plan.iter().map(PlannedBatch::len).sum::<usize>(), s.rows.len());
    let packed = pack(&plan[0].items, &train, |r| labels[r]).unwrap();
    packed.validate().unwrap();
    assert!(packed.n_tokens() <= 16_384);
    assert!(packed.labels.iter().all(|&l| (l as usize) < s.label_map.n_classes()));
}

// ---------------------------------------------------------------- statistics

#[test]
fn stats_of_the_fixture_are_exact() {
    let train = fixture_train();
    let st = dataset_stats(&train, &"2x5,rest".parse().unwrap()).unwrap();
    assert_eq!((st.sequences, st.families), (26, 7));
    assert_eq!((st.length.min, st.length.max), (100, 1026));
    assert_eq!((st.long_rows, st.nonstandard_residues), (1, 0));
    assert_eq!(st.largest_families[0], ("ABC_tran".to_string(), 8));
    // Sizes 8, 6, 4, 4, 2, 1, 1 (sum 26): Gini = Σ(2i − n − 1)·x_i / (n·Σx) with x ascending
    // = (−6·1 − 4·1 − 2·2 + 0·4 + 2·4 + 4·6 + 6·8) / (7·26) = 66 / 182.
    assert_abs_diff_eq!(st.gini.unwrap(), 66.0 / 182.0, epsilon = 1e-12);
    assert_eq!((st.tiers[0].families, st.tiers[0].rows, st.tiers[0].rows_capped), (2, 14, 10));
    assert_eq!((st.tiers[1].families, st.tiers[1].rows, st.tiers[1].rows_capped), (5, 12, 12));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["families"], 7);
    assert_eq!(json["tiers"][0]["tier"], "2x5");
    let table = st.to_string();
    assert!(table.contains("Gini of family sizes") && table.contains("2x5"), "{table}");
}

#[test]
fn stats_of_the_real_train_split() {
    let Some(dir) = common::shared_data("pfam") else {
        return;
    };
    let train = read_pfam_split(&dir, "train").unwrap();
    let st = dataset_stats(&train, &QUANTAFOLD_SPEC.parse().unwrap()).unwrap();
    assert_eq!((st.sequences, st.families), (197_667, 2_188));
    assert_eq!((st.length.min, st.length.median, st.length.max), (12, 137.0, 1_271));
    assert_abs_diff_eq!(st.length.mean, 167.175_431, epsilon = 1e-5);
    assert_eq!((st.length.p90, st.length.p99), (316.0, 538.0));
    assert_eq!(st.long_rows, 61);
    assert_abs_diff_eq!(st.gini.unwrap(), 0.693_582_308, epsilon = 1e-8);
    assert_eq!(st.family_size_median, Some(26.0));
    let bands = st.size_bands.as_ref().unwrap();
    assert_eq!((bands.at_least_200, bands.from_50_to_199, bands.from_10_to_49, bands.below_10), (350, 507, 634, 697));
    assert_eq!((st.tiers[0].families, st.tiers[0].rows_capped), (1000, 129_934));
    assert_eq!((st.tiers[1].families, st.tiers[1].rows), (1188, 11_317));
    eprintln!("{st}");
}
