//! The `qf-engine` binary end to end: every command's help, and train → eval → predict →
//! data stats on small real data.

mod common;

use approx::assert_abs_diff_eq;
use std::process::Command;

fn qf(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qf-engine")).args(args).output().expect("run qf-engine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["predict", "--help"],
        vec!["data", "stats", "--help"],
        vec!["bench", "--help"],
        vec!["upgrade-vocab", "--help"],
        vec!["plot", "--help"],
        vec!["predict-contacts", "--help"],
    ] {
        let (ok, out, err) = qf(&cmd);
        assert!(ok, "{cmd:?} failed: {err}");
        assert!(out.contains("Usage:"), "{cmd:?}: {out}");
    }
    let (_, out, _) = qf(&["train", "--help"]);
    for flag in [
        "--data",
        "--checkpoint",
        "--preset",
        "--stratify",
        "--class-weights",
        "--max-tokens",
        "--resume",
        "--precision",
    ] {
        assert!(out.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn train_eval_predict_and_stats_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let fixture = common::fixture("esm_tiny");
    let (ok, stdout, stderr) = qf(&[
        "train",
        "--checkpoint",
        fixture.to_str().unwrap(),
        "--stratify",
        "top:3",
        "--epochs",
        "1",
        "--max-tokens",
        "1024",
        "--max-len",
        "512",
        "--lr",
        "2e-3",
        "--device",
        "cpu",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "train failed: {stderr}");
    assert!(stdout.contains("final evaluation: accuracy"), "{stdout}");
    let model = out.join("model");
    assert!(model.join("model.safetensors").is_file() && out.join("metrics.jsonl").is_file());
    // Every model directory carries ESM-2's tokenizer, as a Hugging Face directory does.
    let checkpoints: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    assert!(!checkpoints.is_empty());
    for dir in checkpoints.iter().chain([&model]) {
        for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
        }
    }

    // eval on labelled FASTA of the same three families (from the committed excerpt).
    let fasta = tmp.path().join("eval.fasta");
    let stats_json = qf(&["data", "stats", "--file", common::fixture("pfam/sample.fasta").to_str().unwrap(), "--json"]);
    assert!(stats_json.0, "data stats failed: {}", stats_json.2);
    let v: serde_json::Value = serde_json::from_str(&stats_json.1).unwrap();
    assert!(v["sequences"].as_u64().unwrap() > 0, "{v}");

    let classes: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(model.join("label_map.json")).unwrap())
            .unwrap()["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
    let seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGGLLLLA", "MSDNEELKKQLEEALRRAGLT"];
    let body: String =
        seqs.iter().enumerate().map(|(i, s)| format!(">s{i} {}\n{s}\n", classes[i % classes.len()])).collect();
    std::fs::write(&fasta, body).unwrap();
    let json = tmp.path().join("eval.json");
    let (ok, stdout, stderr) = qf(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--file",
        fasta.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(ok, "eval failed: {stderr}");
    assert!(stdout.contains("accuracy"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["n_samples"], 3);

    let tsv = tmp.path().join("pred.tsv");
    let (ok, _, stderr) = qf(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        fasta.to_str().unwrap(),
        "--output",
        tsv.to_str().unwrap(),
        "--top-k",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(ok, "predict failed: {stderr}");
    let lines: Vec<String> = std::fs::read_to_string(&tsv).unwrap().lines().map(String::from).collect();
    assert_eq!(lines[0], "name\tfamily_1\tprob_1\tfamily_2\tprob_2");
    assert_eq!(lines.len(), 4);
    for l in &lines[1..] {
        let f: Vec<&str> = l.split('\t').collect();
        let (p1, p2): (f64, f64) = (f[2].parse().unwrap(), f[4].parse().unwrap());
        assert!(classes.iter().any(|c| c == f[1]) && p1 >= p2 && p1 <= 1.0, "{l}");
    }

    // The same model with N and K swapped in its vocab.txt is refused, naming the token.
    let altered = tmp.path().join("altered");
    std::fs::create_dir(&altered).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, altered.join(p.file_name().unwrap())).unwrap();
    }
    let vocab = std::fs::read_to_string(altered.join("vocab.txt")).unwrap();
    let swapped: Vec<&str> = vocab
        .lines()
        .map(|t| {
            if t == "K" {
                "N"
            } else if t == "N" {
                "K"
            } else {
                t
            }
        })
        .collect();
    std::fs::write(altered.join("vocab.txt"), swapped.join("\n")).unwrap();
    let (ok, _, err) =
        qf(&["predict", "--model", altered.to_str().unwrap(), "--input", fasta.to_str().unwrap(), "--device", "cpu"]);
    assert!(!ok, "predict accepted a model whose vocab.txt is not ESM-2's");
    assert!(err.contains("vocab.txt: token id 15 (line 16) is `N` but ESM-2's alphabet has `K` there"), "{err}");
}

#[test]
fn bench_trains_lora_adapters_on_a_frozen_encoder() {
    let (ok, out, err) = qf(&[
        "bench",
        "--preset",
        "esm2_tiny",
        "--classes",
        "20",
        "--max-tokens",
        "512",
        "--max-len",
        "256",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--lora",
        "--lora-targets",
        "query,value,ffn_in",
        "--lora-rank",
        "4",
    ]);
    assert!(ok, "bench --lora failed: {err}");
    let json = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out}"));
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(r["lora"], "r=4 alpha=8 dropout=0.05 on query,value,ffn_in");
    // esm2_tiny: 4 layers, hidden 96, FFN 384; rank 4 on query and value (96 → 96) and
    // ffn_in (96 → 384), plus the classification head (dense 96×96 + out_proj 96×20).
    let per_layer = 2 * 4 * (96 + 96) + 4 * (96 + 384);
    let head = 96 * 96 + 96 + 96 * 20 + 20;
    assert_eq!(r["trainable_parameters"], 4 * per_layer + head, "{json}");
    assert!(r["sequences_per_s"].as_f64().unwrap() > 0.0);
    assert!(out.contains("LoRA r=4 alpha=8 dropout=0.05 on query,value,ffn_in"), "{out}");
}

/// `bench --mode infer` of `esm2_tiny` on the built-in demo set, small and single-threaded.
fn tiny_inference_bench(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "bench",
        "--mode",
        "infer",
        "--preset",
        "esm2_tiny",
        "--classes",
        "20",
        "--max-tokens",
        "512",
        "--max-len",
        "256",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    qf(&args)
}

#[test]
fn bench_reports_inference_with_phases_and_model_flop_utilisation() {
    let (ok, out, err) = tiny_inference_bench(&["--repeats", "3"]);
    assert!(ok, "bench --mode infer failed: {err}");
    let json = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out}"));
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(r["mode"], "infer");
    assert_eq!(r["runs_sequences_per_s"].as_array().unwrap().len(), 3);
    let runs: Vec<f64> = r["runs_sequences_per_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(r["sequences_per_s"].as_f64().unwrap(), sorted[1], "the median run is reported");
    assert!(r["phases_ms"]["forward"].as_f64().unwrap() > 0.0);
    assert_eq!(r["phases_ms"]["backward"].as_f64().unwrap(), 0.0);
    let (flops, peak, mfu) = (
        r["model_flops_per_s"].as_f64().unwrap(),
        r["gemm_peak_flops_per_s"].as_f64().unwrap(),
        r["mfu"].as_f64().unwrap(),
    );
    assert!(flops > 0.0 && peak > 0.0 && (mfu - flops / peak).abs() < 1e-9 * mfu.max(1.0));
    assert!(out.contains("model FLOPs (MFU)") && out.contains("per step"), "{out}");
    // The timed batches sample every length, not only the shortest proteins that a
    // length-sorted plan starts with.
    let lens = qf_engine::data::demo::demo_sets().unwrap().0.token_lengths();
    let set_mean = lens.iter().map(|&l| l as f64).sum::<f64>() / lens.len() as f64;
    let shortest_mean = {
        let mut l = lens.clone();
        l.sort_unstable();
        l[..l.len() / 5].iter().map(|&x| x as f64).sum::<f64>() / (l.len() / 5) as f64
    };
    let timed_mean = r["mean_tokens_per_sequence"].as_f64().unwrap();
    eprintln!("timed batches: {timed_mean:.1} tokens/sequence; set {set_mean:.1}; shortest fifth {shortest_mean:.1}");
    assert!(timed_mean > shortest_mean && timed_mean > 0.5 * set_mean, "{timed_mean} vs {set_mean}");
    assert_eq!(r["pool"], "cls", "{json}");

    // `--pool mean` times the whole encoder; the same batches.
    let (ok, out, err) = tiny_inference_bench(&["--repeats", "1", "--pool", "mean"]);
    assert!(ok, "bench --pool mean failed: {err}");
    let json = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out}"));
    let m: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(m["pool"], "mean", "{json}");
    assert!(out.contains("mean pooling"), "{out}");
    assert_eq!(m["mean_tokens_per_sequence"], r["mean_tokens_per_sequence"], "the same batches are timed");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (ok, _, err) =
        qf(&["train", "--preset", "esm2_t99_huge", "--device", "cpu", "--quiet", "--output", "/tmp/qf-never"]);
    assert!(!ok);
    assert!(err.contains("unknown model preset `esm2_t99_huge`"), "{err}");
    let (ok, _, err) = qf(&["predict", "--model", "/nonexistent", "--input", "/nonexistent.fasta", "--device", "cpu"]);
    assert!(!ok);
    assert!(err.contains("config.json is missing"), "{err}");
    // --from-scratch is for the built-in demo only.
    let (ok, _, err) = qf(&["train", "--from-scratch", "--data", "/nonexistent", "--device", "cpu"]);
    assert!(!ok);
    assert!(err.contains("'--from-scratch' cannot be used with '--data <DIR>'"), "{err}");
}

/// Rewrite the safetensors file `path` with NaN in the first float tensor whose name passes `pick`.
fn poison_first_tensor(path: &std::path::Path, pick: impl Fn(&str) -> bool) -> String {
    use qf_engine::model::checkpoint::{write_safetensors, MappedSafetensors, NamedTensor};
    let src = MappedSafetensors::open(path).unwrap();
    let meta = src.metadata().unwrap();
    let mut chosen = String::new();
    let mut out = Vec::new();
    // In name order: the file's own order is a hash map's, and a pick that can land on a
    // buffer the loader skips (`rotary_embeddings.inv_freq`) made this test flaky.
    let mut names = src.names().unwrap();
    names.sort();
    for name in names {
        let mut t = src
            .with_view(&name, |v| {
                Ok(NamedTensor {
                    name: name.clone(),
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                })
            })
            .unwrap();
        if chosen.is_empty() && t.dtype == safetensors::Dtype::F32 && !name.ends_with("inv_freq") && pick(&name) {
            t.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            chosen = name;
        }
        out.push(t);
    }
    drop(src);
    write_safetensors(path, &out, Some(meta)).unwrap();
    assert!(!chosen.is_empty());
    chosen
}

#[test]
fn nonfinite_weights_and_optimizer_state_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let fixture = common::fixture("esm_tiny");
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--checkpoint",
            fixture.to_str().unwrap(),
            "--stratify",
            "top:3",
            "--epochs",
            "2",
            "--stop-after",
            "2",
            "--max-tokens",
            "1024",
            "--max-len",
            "512",
            "--device",
            "cpu",
            "--quiet",
            "--output",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        qf(&a)
    };
    let (ok, _, err) = train(&[]);
    assert!(ok, "train failed: {err}");

    // A NaN weight: predict refuses, naming the tensor; --allow-nonfinite loads it.
    let model = out.join("checkpoints").join(std::fs::read_to_string(out.join("checkpoints/latest")).unwrap().trim());
    let fasta = tmp.path().join("x.fasta");
    std::fs::write(&fasta, ">a\nMKTAYIAKQRQISFVKSHFSRQ\n").unwrap();
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, broken.join(p.file_name().unwrap())).unwrap();
    }
    let tensor = poison_first_tensor(&broken.join("model.safetensors"), |n| n.contains("encoder.layer.1"));
    let predict = |extra: &[&str]| {
        let mut a =
            vec!["predict", "--model", broken.to_str().unwrap(), "--input", fasta.to_str().unwrap(), "--device", "cpu"];
        a.extend_from_slice(extra);
        qf(&a)
    };
    let (ok, _, err) = predict(&[]);
    assert!(!ok, "a NaN checkpoint was loaded");
    assert!(err.contains(&format!("`{tensor}`: 1 NaN and 0 infinite of")), "{err}");
    let (ok, stdout, err) = predict(&["--allow-nonfinite"]);
    assert!(ok, "--allow-nonfinite did not load it: {err}");
    assert!(stdout.contains("NaN"), "{stdout}");

    // A NaN optimizer moment: --resume refuses.
    let state = poison_first_tensor(&model.join("training_state.safetensors"), |n| n.ends_with("exp_avg"));
    let (ok, _, err) = train(&["--resume"]);
    assert!(!ok, "resumed from a NaN optimizer state");
    assert!(err.contains("the optimizer state holds non-finite values") && err.contains(&state), "{err}");
}

#[test]
fn mlm_train_eval_then_classify_and_contacts_from_it_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let split = common::fixture("pfam/split");
    let (split, tiny) = (split.to_str().unwrap(), common::fixture("esm_tiny_mlm"));
    let run = tmp.path().join("mlm");
    let small = ["--max-tokens", "1024", "--max-len", "256", "--device", "cpu", "--quiet"];
    let mut args = vec!["train", "--task", "mlm", "--data", split, "--checkpoint", tiny.to_str().unwrap()];
    args.extend(["--max-steps", "4", "--lr", "2e-3", "--eval-limit", "20", "--output", run.to_str().unwrap()]);
    args.extend(small);
    let (ok, stdout, stderr) = qf(&args);
    assert!(ok, "train --task mlm failed: {stderr}");
    assert!(stdout.contains("final evaluation: masked-token loss"), "{stdout}");
    let model = run.join("model");
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(cfg.contains("\"EsmForMaskedLM\""), "{cfg}");

    // eval --task mlm: the same numbers whatever the batch size, and another seed differs.
    let eval = |max_tokens: &str, seed: &str| {
        let json = tmp.path().join(format!("mlm_{max_tokens}_{seed}.json"));
        let (ok, _, stderr) = qf(&[
            "eval",
            "--task",
            "mlm",
            "--model",
            model.to_str().unwrap(),
            "--data",
            split,
            "--split",
            "dev",
            "--mask-seed",
            seed,
            "--max-tokens",
            max_tokens,
            "--max-len",
            "256",
            "--json",
            json.to_str().unwrap(),
            "--device",
            "cpu",
            "--quiet",
        ]);
        assert!(ok, "eval --task mlm failed: {stderr}");
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let (a, b, c) = (eval("1024", "0"), eval("4096", "0"), eval("1024", "1"));
    assert_eq!(a["n_targets"], b["n_targets"]);
    assert_abs_diff_eq!(a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap(), epsilon = 1e-9);
    assert_eq!(a["accuracy"], b["accuracy"]);
    assert_ne!(a["loss"], c["loss"]);
    assert_abs_diff_eq!(a["perplexity"].as_f64().unwrap(), a["loss"].as_f64().unwrap().exp(), epsilon = 1e-9);

    // The MLM model's encoder as the start of a mean-pooled classifier and of a contact model.
    let cls = tmp.path().join("cls");
    let mut args = vec!["train", "--data", split, "--checkpoint", model.to_str().unwrap(), "--stratify", "top:3"];
    args.extend(["--pool", "mean", "--epochs", "1", "--output", cls.to_str().unwrap()]);
    args.extend(small);
    let (ok, stdout, stderr) = qf(&args);
    assert!(ok, "classification from the MLM model failed: {stderr}");
    assert!(stdout.contains("final evaluation: accuracy"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cls.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["qf_engine_pool"], "mean");
    assert_eq!(cfg["model_type"], "qf_engine_esm_mean_pool");
    let pdb = common::fixture("pdb/pdb1ubi_trimmed.pdb");
    let contact = tmp.path().join("contact");
    let mut args = vec!["train", "--task", "contact", "--structures", pdb.to_str().unwrap()];
    args.extend(["--checkpoint", model.to_str().unwrap(), "--max-steps", "2", "--output", contact.to_str().unwrap()]);
    args.extend(small);
    let (ok, _, stderr) = qf(&args);
    assert!(ok, "contact training from the MLM model failed: {stderr}");

    let (_, help, _) = qf(&["train", "--help"]);
    for flag in ["mlm", "--pool", "--mask-prob", "--eval-mask-seed"] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }
    let (_, help, _) = qf(&["eval", "--help"]);
    assert!(help.contains("--mask-seed") && help.contains("mlm"), "eval --help lacks the MLM task");
    // --pool is for classification only.
    let (ok, _, stderr) = qf(&["train", "--task", "mlm", "--data", split, "--pool", "mean", "--device", "cpu"]);
    assert!(!ok && stderr.contains("--pool applies to --task classify"), "{stderr}");
}

/// The built-in demo fine-tunes the built-in pretrained encoder with <cls> pooling (a
/// model transformers loads); `--from-scratch` trains from random weights and then pools
/// the mean unless `--pool cls` is asked.
#[test]
fn the_builtin_demo_fine_tunes_the_builtin_encoder_and_from_scratch_pools_the_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, flags: &[&str]| {
        let out = tmp.path().join(name);
        let mut a = vec!["train", "--max-steps", "2", "--eval-limit", "8", "--device", "cpu", "--quiet", "--output"];
        a.push(out.to_str().unwrap());
        a.extend_from_slice(flags);
        let (ok, stdout, err) = qf(&a);
        assert!(ok, "demo failed: {err}");
        let text = std::fs::read_to_string(out.join("model/config.json")).unwrap();
        (out, stdout, serde_json::from_str::<serde_json::Value>(&text).unwrap())
    };
    let (out, stdout, pretrained) = run("pretrained", &[]);
    let encoder = out.join(qf_engine::data::demo::ENCODER_DIR);
    assert!(encoder.join("model.safetensors").is_file() && encoder.join("config.json").is_file());
    assert!(stdout.contains(&format!("loaded 69 tensors from {}", encoder.display())), "{stdout}");
    assert!(stdout.contains("initialised fresh: classifier."), "{stdout}");
    assert_eq!(pretrained["architectures"][0], "EsmForSequenceClassification", "{pretrained}");
    assert!(pretrained.get(qf_engine::model::classifier::POOL_KEY).is_none(), "{pretrained}");

    let (out, stdout, mean) = run("scratch", &["--from-scratch"]);
    assert!(!out.join(qf_engine::data::demo::ENCODER_DIR).exists());
    assert!(!stdout.contains("loaded "), "{stdout}");
    assert_eq!(mean[qf_engine::model::classifier::POOL_KEY], "mean", "{mean}");
    let (_, _, cls) = run("scratch_cls", &["--from-scratch", "--pool", "cls"]);
    assert!(cls.get(qf_engine::model::classifier::POOL_KEY).is_none(), "{cls}");
    let (_, _, preset) = run("preset", &["--preset", "esm2_tiny"]);
    assert_eq!(preset[qf_engine::model::classifier::POOL_KEY], "mean", "{preset}");
}

/// `train --precision bf16` on the CPU: trains where the CPU has AVX512-BF16 and says so in
/// the run's log, and otherwise fails with the reason.
#[test]
fn the_demo_trains_in_bf16_on_a_cpu_that_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    let (ok, _, err) = qf(&[
        "train",
        "--max-steps",
        "3",
        "--eval-limit",
        "8",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--log-every",
        "1",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]);
    if !qf_engine::backend::cpu::matmul_bf16::supported() {
        assert!(!ok && err.contains("needs AVX512-BF16"), "{err}");
        return;
    }
    assert!(ok, "bf16 demo failed: {err}");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(start["dtype"], "bf16 (linear layers and attention; fp32 sums and elsewhere)", "{start}");
    let losses: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().unwrap())
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite()), "{losses:?}");
}
