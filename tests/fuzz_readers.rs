//! Every reader against mutated real files: Pfam CSV, FASTA, Stockholm, PDB, mmCIF, the
//! safetensors header, config.json. Seeds are the committed fixtures (and, for the long
//! run, `../shared/data/pdb`); each input is a seed with 1–4 mutations (bit flips,
//! interesting bytes and numbers, deleted, duplicated or swapped ranges and lines,
//! truncation, splices of two seeds). No reader may panic or hang, and every failure must
//! be an error that names its file.
//!
//! CI runs `QF_FUZZ_INPUTS` inputs (default 100,000); `tools/fuzz_readers.sh` runs millions,
//! with the structures of `../shared/data/pdb` as seeds too (`QF_FUZZ_SHARED=1`).
//! A failing input is saved under `target/fuzz-failures/` with the reader's name.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, TestRng};
use qf_engine::data::fasta::{read_fasta_from, FastaLabels};
use qf_engine::data::pfam::read_pfam_split;
use qf_engine::data::stockholm::read_stockholm;
use qf_engine::data::structure::{parse_structure, StructureFormat};
use qf_engine::model::checkpoint::MappedSafetensors;
use qf_engine::model::EsmConfig;

/// One reader: its name, the file it reads inside the scratch directory, and how it reads.
struct Reader {
    name: &'static str,
    file: &'static str,
    seeds: Vec<Vec<u8>>,
    read: fn(&Path) -> anyhow::Result<()>,
}

fn read_pfam(path: &Path) -> anyhow::Result<()> {
    let root = path.parent().unwrap().parent().unwrap();
    read_pfam_split(root, "train").map(drop)
}

fn read_fasta(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    read_fasta_from(Box::new(std::io::Cursor::new(bytes)), path, &FastaLabels::Header).map(drop)
}

fn read_sto(path: &Path) -> anyhow::Result<()> {
    read_stockholm(path).map(drop)
}

fn read_pdb(path: &Path) -> anyhow::Result<()> {
    parse_structure(&std::fs::read(path)?, &path.display().to_string(), StructureFormat::Pdb, None).map(drop)
}

fn read_cif(path: &Path) -> anyhow::Result<()> {
    parse_structure(&std::fs::read(path)?, &path.display().to_string(), StructureFormat::Mmcif, None).map(drop)
}

/// The safetensors reader as the model loader uses it: header, names, every tensor as f32.
fn read_safetensors(path: &Path) -> anyhow::Result<()> {
    let file = MappedSafetensors::open(path)?;
    let names = file.names()?;
    file.check_finite(names.iter().map(String::as_str), "the file")?;
    for name in &names {
        file.with_view(name, |v| Ok(v.shape().to_vec()))
            .and_then(|shape| file.read_f32(name, &shape))
            .map(drop)
            .or_else(|e| if format!("{e:#}").contains("dtype") { Ok(()) } else { Err(e) })?;
    }
    Ok(())
}

fn read_config(path: &Path) -> anyhow::Result<()> {
    EsmConfig::from_dir(path.parent().unwrap()).map(drop)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

fn seed_files(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| {
            let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if p.extension().is_some_and(|e| e == "gz") {
                gunzip(&b)
            } else {
                b
            }
        })
        .collect()
}

fn readers(long: bool) -> Vec<Reader> {
    let f = |p: &str| fixture(p);
    let mut pdb = vec![
        f("pdb/1A8O_excerpt.pdb"),
        f("pdb/1osm_excerpt.pdb"),
        f("pdb/2sdf_excerpt.pdb"),
        f("pdb/pdb1ejg_excerpt.pdb"),
    ];
    let mut cif = vec![f("pdb/1A8O_excerpt.cif.gz")];
    if long {
        if let Some(dir) = common::shared_data("pdb") {
            for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()) {
                let n = e.to_string_lossy();
                if n.contains(".pdb") || n.ends_with("pdb1ejg.pdb") {
                    pdb.push(e.clone());
                } else if n.contains(".cif") {
                    cif.push(e.clone());
                }
            }
        }
    }
    vec![
        Reader {
            name: "pfam_csv",
            file: "pfam/train/data-00000-of-00001",
            seeds: seed_files(&[f("pfam/split/train/data-00000-of-00003"), f("pfam/split/dev/data-00000-of-00001")]),
            read: read_pfam,
        },
        Reader {
            name: "fasta",
            file: "x.fasta",
            seeds: seed_files(&[f("pfam/sample.fasta"), f("contacts/mini.fasta")]),
            read: read_fasta,
        },
        Reader { name: "stockholm", file: "x.sto", seeds: seed_files(&[f("pfam/seed.sto")]), read: read_sto },
        Reader { name: "pdb", file: "x.pdb", seeds: seed_files(&pdb), read: read_pdb },
        Reader { name: "mmcif", file: "x.cif", seeds: seed_files(&cif), read: read_cif },
        Reader {
            name: "safetensors",
            file: "x.safetensors",
            seeds: seed_files(&[f("contacts/mini.safetensors"), f("reference/../esm_tiny/model.safetensors")]),
            read: read_safetensors,
        },
        Reader {
            name: "config_json",
            file: "config/config.json",
            seeds: seed_files(&[f("esm_tiny/config.json")]),
            read: read_config,
        },
    ]
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\n",
    b"\r\n",
    b",",
    b".",
    b"-",
    b" ",
    b">",
    b"#",
    b"/",
    b"\"",
    b"{",
    b"}",
    b"[",
    b":",
    b"9",
    b"-1",
    b"0",
    b"99999999999999999999",
    b"-2147483649",
    b"4294967296",
    b"1e309",
    b"NaN",
    b"inf",
    b"\t",
    b"//",
    b"ATOM  ",
    b"HETATM",
    b"MODEL ",
    b"ENDMDL",
    b"loop_\n",
    b"_atom_site.",
    b"#=GF ID ",
    b"data_",
    b"\xc3\xa9",
];

/// A seed with 1–4 random mutations. `other` is another seed of the same reader to splice.
fn mutate(rng: &mut TestRng, seed: &[u8], other: &[u8], focus: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        // Most mutations near the start when `focus` says so (a safetensors header).
        let span = if focus > 0 && rng.below(4) > 0 { focus.min(b.len()) } else { b.len() };
        let pos = |rng: &mut TestRng, n: usize| if n == 0 { 0 } else { rng.below(n) };
        match rng.below(9) {
            0 if !b.is_empty() => {
                let i = pos(rng, span);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = pos(rng, span + 1).min(b.len());
                let s = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(2) == 0 && i < b.len() {
                    let end = (i + s.len()).min(b.len());
                    b.splice(i..end, s.iter().copied());
                } else {
                    b.splice(i..i, s.iter().copied());
                }
            }
            2 if !b.is_empty() => {
                let i = pos(rng, span);
                let n = 1 + rng.below(64.min(b.len() - i));
                b.drain(i..i + n);
            }
            3 if !b.is_empty() => {
                let i = pos(rng, span);
                let n = 1 + rng.below(256.min(b.len() - i));
                let chunk = b[i..i + n].to_vec();
                let j = pos(rng, b.len() + 1);
                b.splice(j..j, chunk);
            }
            4 => b.truncate(pos(rng, b.len() + 1)),
            5 => {
                // swap two lines
                let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
                if lines.len() > 2 {
                    let (x, y) = (rng.below(lines.len()), rng.below(lines.len()));
                    let mut l: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
                    l.swap(x, y);
                    b = l.join(&b'\n');
                }
            }
            6 if !other.is_empty() => {
                // splice: a prefix of this seed and a suffix of the other
                let i = pos(rng, b.len() + 1);
                let j = pos(rng, other.len() + 1);
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            7 if !b.is_empty() => {
                // repeat one line many times
                let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
                let l = lines[rng.below(lines.len())].to_vec();
                let i = pos(rng, b.len() + 1);
                let rep: Vec<u8> = (0..1 + rng.below(50)).flat_map(|_| l.iter().copied().chain([b'\n'])).collect();
                b.splice(i..i, rep);
            }
            _ => {
                // a random digit run, where numbers are parsed
                let i = pos(rng, span + 1).min(b.len());
                let digits: Vec<u8> = (0..1 + rng.below(12)).map(|_| b'0' + rng.below(10) as u8).collect();
                b.splice(i..i, digits);
            }
        }
    }
    b
}

fn save_failure(reader: &str, n: u64, input: &[u8], why: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{reader}-{n}.bin"));
    std::fs::write(&path, input).unwrap();
    std::fs::write(path.with_extension("txt"), why).unwrap();
    path
}

/// Abort the process when one input runs longer than `limit` (a hang), after saving it.
fn watchdog(started: Arc<AtomicU64>, current: Arc<std::sync::Mutex<(String, Vec<u8>)>>, limit: Duration) {
    let t0 = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let s = started.load(Ordering::Relaxed);
        if s != u64::MAX && t0.elapsed().as_millis() as u64 > s + limit.as_millis() as u64 {
            let (name, input) = current.lock().unwrap().clone();
            let path = save_failure(&name, s, &input, "hang");
            eprintln!("HANG: reader {name} ran over {limit:?} on the input saved at {}", path.display());
            std::process::abort();
        }
    });
}

#[test]
fn readers_survive_mutated_real_files() {
    let total: u64 = std::env::var("QF_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    // `tools/fuzz_readers.sh` adds the (large) structures of ../shared/data/pdb as seeds.
    let long = std::env::var("QF_FUZZ_SHARED").is_ok_and(|v| v == "1");
    let readers = readers(long);
    let scratch_root = if Path::new("/dev/shm").is_dir() { Some(PathBuf::from("/dev/shm")) } else { None };
    let scratch = match &scratch_root {
        Some(r) => tempfile::tempdir_in(r).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    for r in &readers {
        assert!(!r.seeds.is_empty(), "{}: no seed files", r.name);
        let p = scratch.path().join(r.file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Every seed must read cleanly, so that failures come from the mutations.
        for s in &r.seeds {
            std::fs::write(&p, s).unwrap();
            (r.read)(&p).unwrap_or_else(|e| panic!("{}: a seed file fails: {e:#}", r.name));
        }
    }
    let started = Arc::new(AtomicU64::new(u64::MAX));
    let current = Arc::new(std::sync::Mutex::new((String::new(), Vec::new())));
    watchdog(started.clone(), current.clone(), Duration::from_secs(10));
    std::panic::set_hook(Box::new(|_| {})); // panics are caught and reported below

    let mut rng = TestRng::new(std::env::var("QF_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7));
    let t0 = Instant::now();
    let mut tried = vec![0u64; readers.len()];
    let mut errors = vec![0u64; readers.len()];
    let mut failures = Vec::new();
    for n in 0..total {
        let k = (n as usize) % readers.len();
        let r = &readers[k];
        let seed = &r.seeds[rng.below(r.seeds.len())];
        let other = &r.seeds[rng.below(r.seeds.len())];
        let focus = if r.name == "safetensors" { 2048 } else { 0 };
        let input = mutate(&mut rng, seed, other, focus);
        let path = scratch.path().join(r.file);
        std::fs::write(&path, &input).unwrap();
        *current.lock().unwrap() = (r.name.to_string(), input.clone());
        started.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| (r.read)(&path)));
        started.store(u64::MAX, Ordering::Relaxed);
        tried[k] += 1;
        let problem = match outcome {
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
                Some(format!("panic: {}", msg.unwrap_or_default()))
            }
            Ok(Err(e)) => {
                errors[k] += 1;
                let text = format!("{e:#}");
                // the file, or the directory it is in (a Pfam split's error names the split)
                let dir = path.parent().unwrap().to_string_lossy();
                let named = text.contains(r.file.rsplit('/').next().unwrap()) || text.contains(&*dir);
                (!named).then(|| format!("error that does not name its file: {text}"))
            }
            Ok(Ok(())) => None,
        };
        if let Some(why) = problem {
            let saved = save_failure(r.name, n, &input, &why);
            failures.push(format!("{}: {why} (input saved at {})", r.name, saved.display()));
            if failures.len() >= 20 {
                break;
            }
        }
    }
    let _ = std::panic::take_hook();
    let secs = t0.elapsed().as_secs_f64();
    let all: u64 = tried.iter().sum();
    println!("fuzzed {all} inputs in {secs:.1} s ({:.0}/s):", all as f64 / secs);
    for (i, r) in readers.iter().enumerate() {
        println!("  {:<12} {:>8} inputs, {:>8} named errors", r.name, tried[i], errors[i]);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(all, total);
}
