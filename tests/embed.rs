//! `qf-engine embed` through the binary: its files, read back with independent readers
//! (the `safetensors` crate; a `.npy` parser written here), against transformers'
//! `EsmModel(..., output_hidden_states=True)` on the esm_tiny fixture
//! (`tests/fixtures/embed`, made by `tools/make_embed_fixtures.py`): full length, long
//! proteins as windows, fair-esm's truncation; `--resume`; and the errors users get.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::SafeTensors;

/// fp32 parity bound against PyTorch (docs/ARCHITECTURE.md, *Numerics*).
const TOL: f64 = 1e-5;

fn qf(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qf-engine")).args(args).output().expect("run qf-engine");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fixture_fasta() -> PathBuf {
    common::fixture("embed/sequences.fasta")
}

fn model_dir() -> PathBuf {
    common::fixture("esm_tiny")
}

/// Run `embed` on the fixture model and `input` into `out` with extra `args`; panics
/// with stderr on failure.
fn embed(input: &Path, out: &Path, args: &[&str]) -> String {
    let model = model_dir();
    let mut all = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ];
    all.extend_from_slice(args);
    let (ok, err) = qf(&all);
    assert!(ok, "embed {args:?} failed: {err}");
    err
}

/// The error of a run that must fail.
fn embed_error(args: &[&str]) -> String {
    let (ok, err) = qf(args);
    assert!(!ok, "{args:?} succeeded");
    err
}

/// f32 tensors of a safetensors file, by name.
fn read_safetensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let v = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, (view.shape().to_vec(), v))
        })
        .collect()
}

/// A `.npy` v1 file of `<f4` in C order, parsed from its header.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "npy header not aligned");
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let data: Vec<f32> = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{}", path.display());
    (shape, data)
}

/// `index.tsv` rows as maps of column → value.
fn read_index(dir: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("index.tsv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(header, ["name", "length", "embedded", "windows", "file"]);
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split('\t').map(str::to_string)).collect()).collect()
}

/// Every tensor of every shard the index names, by tensor name; each must appear once.
fn read_shards(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut files: Vec<String> = read_index(dir).into_iter().map(|r| r["file"].clone()).collect();
    files.dedup();
    let mut all = BTreeMap::new();
    for f in files {
        for (name, t) in read_safetensors(&dir.join(&f)) {
            assert!(all.insert(name.clone(), t).is_none(), "{name} written twice");
        }
    }
    all
}

fn expected() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_safetensors(&common::fixture("embed/expected.safetensors"))
}

/// Compare every expected tensor of `set` (`full`, `win`, `trunc`) with `got`; returns
/// how many were compared.
fn compare_set(set: &str, got: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> usize {
    let mut n = 0;
    for (key, (shape, want)) in expected() {
        let Some(name) = key.strip_prefix(&format!("{set}/")) else { continue };
        let (gshape, g) = got.get(name).unwrap_or_else(|| panic!("{name} missing from the output"));
        assert_eq!(gshape, &shape, "{name}: shape");
        let e = common::rel_err(g, &want);
        assert!(e <= TOL, "{set}/{name}: relative error {e:.2e} > {TOL:e}");
        n += 1;
    }
    n
}

const ALL_OUTPUTS: [&str; 4] = ["--repr-layers", "0,-2,-1", "--include", "mean,per-tok,bos,contacts"];

#[test]
fn full_length_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    embed(&fixture_fasta(), tmp.path(), &ALL_OUTPUTS);
    let got = read_shards(tmp.path());
    assert_eq!(compare_set("full", &got), 4 * 7 + 3);
    let rows = read_index(tmp.path());
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!((r["length"].as_str(), r["windows"].as_str()), (r["embedded"].as_str(), "1"));
        // 3 layers × (mean, bos, per_tok) + contacts, nothing else.
        assert_eq!(got.keys().filter(|k| k.starts_with(&format!("{}/", r["name"]))).count(), 10);
    }
    assert_eq!(got.len(), 40);
}

#[test]
fn long_proteins_as_windows_match_transformers_on_each_window() {
    let tmp = tempfile::tempdir().unwrap();
    embed(&fixture_fasta(), tmp.path(), &[&ALL_OUTPUTS[..], &["--max-len", "42", "--max-tokens", "100"]].concat());
    let got = read_shards(tmp.path());
    assert_eq!(compare_set("win", &got), 4 * 6 + 3, "windowed per_tok or contacts not compared");
    let windows: Vec<(String, String)> =
        read_index(tmp.path()).into_iter().map(|r| (r["length"].clone(), r["windows"].clone())).collect();
    let mut windows = windows;
    windows.sort_by_key(|(l, _)| l.parse::<usize>().unwrap());
    let w: Vec<&str> = windows.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(w[..3], ["1", "1", "2"]);
    assert_eq!(w[3], "4", "{w:?}");
    // Windows are not the full-length run: the long protein's mean differs from it.
    let full = expected();
    let long = read_index(tmp.path()).into_iter().max_by_key(|r| r["length"].parse::<usize>().unwrap()).unwrap();
    let key = format!("{}/mean/2", long["name"]);
    let e = common::rel_err(&got[&key].1, &full[&format!("full/{key}")].1);
    assert!(e > 1e-3, "the windowed mean equals the full-length one ({e:e}): windows not exercised");
}

#[test]
fn truncate_matches_fair_esm_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let err = embed(
        &fixture_fasta(),
        tmp.path(),
        &[&ALL_OUTPUTS[..2], &["--include", "mean,per-tok,bos", "--truncate", "30"]].concat(),
    );
    assert!(err.contains("0 run as windows, 3 truncated"), "{err}");
    let got = read_shards(tmp.path());
    assert_eq!(compare_set("trunc", &got), 4 * 6 + 3);
    for r in read_index(tmp.path()) {
        let len: usize = r["length"].parse().unwrap();
        assert_eq!(r["embedded"], len.min(30).to_string());
        assert_eq!(got[&format!("{}/per_tok/2", r["name"])].0, vec![len.min(30), 64]);
    }
}

#[test]
fn npy_files_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    embed(&fixture_fasta(), tmp.path(), &[&ALL_OUTPUTS[..], &["--format", "npy", "--max-len", "42"]].concat());
    let mut got = BTreeMap::new();
    for r in read_index(tmp.path()) {
        let stem = &r["file"];
        assert!(!stem.contains('/'), "unsafe file stem {stem}");
        for what in
            ["mean.0", "mean.1", "mean.2", "bos.0", "bos.1", "bos.2", "per_tok.0", "per_tok.1", "per_tok.2", "contacts"]
        {
            let t = read_npy(&tmp.path().join(format!("{stem}.{what}.npy")));
            got.insert(format!("{}/{}", r["name"], what.replace('.', "/")), t);
        }
    }
    assert_eq!(compare_set("win", &got), 4 * 6 + 3);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn resume_writes_nothing_twice_and_gives_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture_fasta()).unwrap();
    let records: Vec<&str> =
        text.split_inclusive('\n').collect::<String>().leak().split('>').filter(|r| !r.is_empty()).collect();
    assert_eq!(records.len(), 4);
    let first_two: String = records[..2].iter().map(|r| format!(">{r}")).collect();
    let part = tmp.path().join("part.fasta");
    write(&part, &first_two);
    let (whole, resumed) = (tmp.path().join("whole"), tmp.path().join("resumed"));
    let args = [&ALL_OUTPUTS[..], &["--max-len", "42"]].concat();
    embed(&fixture_fasta(), &whole, &args);
    embed(&part, &resumed, &args);
    assert_eq!(read_index(&resumed).len(), 2);
    // An interrupted run's shard with no index rows is removed, not kept beside the redo.
    write(&resumed.join("shard-00007.safetensors"), "partial");
    let err = embed(&fixture_fasta(), &resumed, &[&args[..], &["--resume"]].concat());
    assert!(err.contains("2 sequences embedded (2 already in the index, skipped)"), "{err}");
    assert!(err.contains("removing shard-00007.safetensors"), "{err}");
    assert!(!resumed.join("shard-00007.safetensors").exists());
    let names: Vec<String> = read_index(&resumed).into_iter().map(|r| r["name"].clone()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((names.len(), unique.len()), (4, 4), "{names:?}");
    let (a, b) = (read_shards(&whole), read_shards(&resumed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    // Bit-identical: each packed sequence is computed independently of its batch
    // neighbours, so a different split into batches changes nothing.
    for (k, (shape, v)) in &a {
        assert_eq!(&b[k].0, shape, "{k}");
        let same = b[k].1.iter().zip(v).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{k}: resumed run differs from the whole run by {:e}", common::rel_err(&b[k].1, v));
    }
    // Nothing left: a second resume embeds nothing and appends nothing.
    let err = embed(&fixture_fasta(), &resumed, &[&args[..], &["--resume"]].concat());
    assert!(err.contains("0 sequences embedded (4 already in the index, skipped)"), "{err}");
    assert_eq!(read_index(&resumed).len(), 4);
    // Resuming with other settings is refused.
    let err = embed_error(&[
        "embed",
        "--model",
        model_dir().to_str().unwrap(),
        "-i",
        fixture_fasta().to_str().unwrap(),
        "-o",
        resumed.to_str().unwrap(),
        "--device",
        "cpu",
        "--resume",
        "--include",
        "mean",
    ]);
    assert!(err.contains("was written with other settings than this run's"), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let m = model_dir();
    let m = m.to_str().unwrap();
    let fa = fixture_fasta();
    let fa = fa.to_str().unwrap();
    let base = |input: &str| {
        vec!["embed", "--model", m, "-i", input, "-o", o, "--device", "cpu", "--quiet"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |extra: &[&str], input: &str| {
        let mut a = base(input);
        a.extend(extra.iter().map(|s| s.to_string()));
        embed_error(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let empty = tmp.path().join("empty.fasta");
    write(&empty, "");
    let e = run(&[], empty.to_str().unwrap());
    assert!(e.contains(&format!("error: {}: no FASTA records (empty file, or no `>` header)", empty.display())), "{e}");

    let e = run(&["--repr-layers", "3"], fa);
    assert!(e.contains("error: --repr-layers 3: out of range: the model has 2 layers, so a layer is 0..=2 (0 = the embeddings, 2 = the final output) or -3..=-1 counted from the end"), "{e}");
    let e = run(&["--repr-layers", "-4"], fa);
    assert!(e.contains("--repr-layers -4: out of range"), "{e}");

    let e = run(&["--truncate", "30", "--max-len", "100"], fa);
    assert!(e.contains("error: the argument '--truncate <N>' cannot be used with '--max-len <TOKENS>'"), "{e}");

    let e = run(&["--include", "mean,logits"], fa);
    assert!(e.contains("error: --include: unknown output `logits`; choose from mean, per-tok, bos, contacts"), "{e}");

    let e = run(&["--max-len", "2000", "--max-tokens", "1000"], fa);
    assert!(
        e.contains(
            "error: --max-tokens 1000 is smaller than one item (2000 tokens with --max-len): raise --max-tokens"
        ),
        "{e}"
    );

    let dup = tmp.path().join("dup.fasta");
    write(&dup, ">a\nMKV\n>b\nACD\n>a\nWWW\n");
    let e = run(&[], dup.to_str().unwrap());
    assert!(e.contains(&format!("error: {}:5: duplicate sequence name `a` (first at line 1)", dup.display())), "{e}");
    assert!(!out.join("index.tsv").exists() || read_index(&out).is_empty(), "rows written despite the error");

    let bad = tmp.path().join("bad.fasta");
    write(&bad, ">a\nMK1V\n");
    let e = run(&[], bad.to_str().unwrap());
    assert!(e.contains(&format!("{}:2: sequence `a`", bad.display())), "{e}");

    // A model without a contact head cannot give contacts.
    let headless = tmp.path().join("headless");
    std::fs::create_dir(&headless).unwrap();
    std::fs::copy(model_dir().join("config.json"), headless.join("config.json")).unwrap();
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !n.contains("contact_head")).collect();
    safetensors::serialize_to_file(kept, None, &headless.join("model.safetensors")).unwrap();
    let mut a = vec![
        "embed",
        "--model",
        headless.to_str().unwrap(),
        "-i",
        fa,
        "-o",
        o,
        "--device",
        "cpu",
        "--include",
        "mean,contacts",
    ];
    let e = embed_error(&a);
    assert!(
        e.contains(&format!(
            "error: --include contacts: {} has no contact head (esm.contact_head.regression.weight/bias)",
            headless.display()
        )),
        "{e}"
    );
    // … but embeds the rest; then a second run into the same directory needs --resume.
    let last = a.len() - 1;
    a[last] = "mean";
    let (ok, e) = qf(&a);
    assert!(ok, "{e}");
    let e = embed_error(&a);
    assert!(
        e.contains(&format!("error: {} already holds 4 embedded sequences", out.display()))
            && e.contains("pass --resume"),
        "{e}"
    );
}

#[test]
fn gzip_input_and_help() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let gz = tmp.path().join("seqs.fa.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(&std::fs::read(fixture_fasta()).unwrap()).unwrap();
    enc.finish().unwrap();
    embed(&gz, &tmp.path().join("out"), &["--repr-layers", "0,1,2", "--shard-mb", "1"]);
    let got = read_shards(&tmp.path().join("out"));
    assert_eq!(got.len(), 12);
    let (shape, _) = &got["P19027/375-392/mean/2"];
    assert_eq!(shape, &vec![64]);
    let log = std::fs::read_to_string(tmp.path().join("out/log.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"event\":\"written\"") && l.contains("peak_rss_mb")), "{log}");
    assert!(log.lines().last().unwrap().contains("\"event\":\"embed_done\""), "{log}");

    let out = Command::new(env!("CARGO_BIN_EXE_qf-engine")).args(["embed", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--repr-layers",
        "--include",
        "--max-len",
        "--truncate",
        "--max-tokens",
        "--format",
        "--resume",
        "--device",
        "Examples:",
    ] {
        assert!(help.contains(flag), "embed --help lacks {flag}");
    }
}

/// `--precision bf16` on the CPU (AVX512-BF16): the same files, every tensor within
/// bf16's rounding of the fp32 run (the linear layers take bf16 operands), none equal.
#[test]
fn bf16_embeddings_on_the_cpu_stay_close_to_fp32() {
    if !qf_engine::backend::cpu::matmul_bf16::supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (f32_dir, bf16_dir) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    embed(&fixture_fasta(), &f32_dir, &["--include", "mean,per-tok"]);
    embed(&fixture_fasta(), &bf16_dir, &["--include", "mean,per-tok", "--precision", "bf16"]);
    let (exact, rounded) = (read_shards(&f32_dir), read_shards(&bf16_dir));
    assert_eq!(exact.keys().collect::<Vec<_>>(), rounded.keys().collect::<Vec<_>>());
    let mut worst: f64 = 0.0;
    for (name, (shape, want)) in &exact {
        let (shape2, got) = &rounded[name];
        assert_eq!(shape, shape2, "{name}");
        let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        worst = worst.max((num / den).sqrt());
    }
    assert!(worst < 2e-2, "a bf16 embedding is {worst:.2e} from fp32");
    assert!(worst > 1e-6, "bf16 embeddings equal fp32 ones ({worst:.2e}): the bf16 path did not run");
}
