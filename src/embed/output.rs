//! The output directory of `embed`: `embed.json` (the settings, checked on `--resume`),
//! `index.tsv` (`name`, `length`, `embedded`, `windows`, `file`; a row is appended only
//! after its file is durably written, i.e. written to a temporary name, synced and
//! renamed), and either safetensors shards or one `.npy` file per protein and output.
//!
//! Tensor names in a shard: `{name}/mean/{layer}` `[hidden]`, `{name}/per_tok/{layer}`
//! `[embedded, hidden]`, `{name}/bos/{layer}` `[hidden]`, `{name}/contacts`
//! `[embedded, embedded]`, all little-endian f32. With `--format npy` the same arrays are
//! `{stem}.mean.{layer}.npy`, …, `{stem}.contacts.npy`, where `stem` is the name when it
//! is made of `A-Za-z0-9._-` only, else the name with other characters as `_` and
//! `-{8 hex digits}` of a hash of the real name (so two names never share files).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::compute::ProteinEmbedding;
use super::input::name_hash;
use crate::model::checkpoint::describe_write_error;

pub const INDEX_FILE: &str = "index.tsv";
pub const SETTINGS_FILE: &str = "embed.json";
pub const LOG_FILE: &str = "log.jsonl";
pub const INDEX_HEADER: &str = "name\tlength\tembedded\twindows\tfile";

/// Memory a buffered tensor or index row takes besides its data and name (its vectors'
/// headers and the allocator's rounding), counted against `--shard-mb` so that the
/// buffer of many small tensors (a mean vector is 1,280 bytes at hidden 320) stays
/// within it.
const BOOKKEEPING_BYTES: usize = 128;

/// Proteins per index append with `--format npy`.
const NPY_ROWS_PER_APPEND: usize = 256;

/// One line of `index.tsv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRow {
    pub name: String,
    pub length: usize,
    pub embedded: usize,
    pub windows: usize,
    /// The shard file, or the protein's file stem (`--format npy`).
    pub file: String,
}

impl IndexRow {
    fn of(p: &ProteinEmbedding, file: String) -> Self {
        IndexRow { name: p.name.clone(), length: p.length, embedded: p.embedded, windows: p.windows, file }
    }
}

/// Read `index.tsv` (header checked).
pub fn read_index(path: &Path) -> Result<Vec<IndexRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h == INDEX_HEADER => {}
        _ => bail!(
            "{}: not an embed index (the first line must be `{}`)",
            path.display(),
            INDEX_HEADER.replace('\t', "<TAB>")
        ),
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let num = |k: usize| {
            f[k].parse::<usize>().with_context(|| format!("{}:{}: bad number `{}`", path.display(), i + 1, f[k]))
        };
        if f.len() != 5 {
            bail!("{}:{}: expected 5 tab-separated fields, found {}", path.display(), i + 1, f.len());
        }
        rows.push(IndexRow {
            name: f[0].to_string(),
            length: num(1)?,
            embedded: num(2)?,
            windows: num(3)?,
            file: f[4].to_string(),
        });
    }
    Ok(rows)
}

/// `index.tsv`, appended with synced writes.
pub struct IndexFile {
    path: PathBuf,
}

impl IndexFile {
    pub fn append(&self, rows: &[IndexRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for r in rows {
            text.push_str(&format!("{}\t{}\t{}\t{}\t{}\n", r.name, r.length, r.embedded, r.windows, r.file));
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| describe_write_error(e, &self.path))
    }
}

/// What an output directory already holds.
pub struct Existing {
    /// Hashes of the names in the index.
    pub done: HashSet<u64>,
    pub rows: usize,
    /// The number the next shard gets.
    pub next_shard: usize,
    pub index: IndexFile,
}

/// Shard file name of shard `k`.
pub fn shard_name(k: usize) -> String {
    format!("shard-{k:05}.safetensors")
}

fn shard_number(file: &str) -> Option<usize> {
    file.strip_prefix("shard-")?.strip_suffix(".safetensors")?.parse().ok()
}

/// Create or reopen the output directory. A fresh run refuses a directory that already
/// has an index with rows; `--resume` requires the same settings (`embed.json`) and
/// deletes shards that no index row refers to (written when the run stopped, before
/// their rows were appended; their proteins are embedded again).
pub fn prepare_output(dir: &Path, settings: &Value, resume: bool) -> Result<Existing> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let index_path = dir.join(INDEX_FILE);
    let settings_path = dir.join(SETTINGS_FILE);
    let rows = if index_path.is_file() { read_index(&index_path)? } else { Vec::new() };
    if !resume && !rows.is_empty() {
        bail!(
            "{} already holds {} embedded sequences ({}): pass --resume to continue that run, or choose another --output",
            dir.display(),
            rows.len(),
            index_path.display()
        );
    }
    if resume && settings_path.is_file() {
        let text = std::fs::read_to_string(&settings_path)?;
        let old: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: unreadable", settings_path.display()))?;
        if &old != settings {
            bail!(
                "--resume: {} was written with other settings than this run's; resume with the same model, layers, \
                 outputs, length handling and format, or choose another --output.\n  before: {old}\n  now:    {settings}",
                settings_path.display()
            );
        }
    }
    if rows.is_empty() {
        crate::model::checkpoint::write_atomic(&settings_path, serde_json::to_string_pretty(settings)?.as_bytes())?;
        crate::model::checkpoint::write_atomic(&index_path, format!("{INDEX_HEADER}\n").as_bytes())?;
    }
    let referenced: HashSet<&str> = rows.iter().map(|r| r.file.as_str()).collect();
    let mut next_shard = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        let Some(k) = shard_number(&name) else { continue };
        next_shard = next_shard.max(k + 1);
        if !referenced.contains(name.as_str()) {
            eprintln!("note: removing {name}: written by an interrupted run before its index rows; its proteins are embedded again");
            std::fs::remove_file(dir.join(&name)).with_context(|| format!("removing {name}"))?;
        }
    }
    Ok(Existing {
        done: rows.iter().map(|r| name_hash(&r.name)).collect(),
        rows: rows.len(),
        next_shard,
        index: IndexFile { path: index_path },
    })
}

/// A file finished by a sink.
#[derive(Clone, Debug)]
pub struct Flushed {
    /// The shard file (or `npy` for a group of `.npy` files).
    pub file: String,
    pub sequences: usize,
    /// What the shard buffer held (data, names, bookkeeping), or the `.npy` files' bytes.
    pub bytes: usize,
}

/// Where finished proteins go.
pub trait Sink {
    /// Take one protein; returns what was written to disk, if anything was.
    fn add(&mut self, p: ProteinEmbedding) -> Result<Option<Flushed>>;
    /// Write what is buffered.
    fn flush(&mut self) -> Result<Option<Flushed>>;
}

/// The arrays of a protein with their names (`mean/{layer}`, …), shapes and values.
fn arrays(p: ProteinEmbedding, layers: &[usize]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let h = |v: &Vec<f32>| v.len();
    for (kind, vs) in [("mean", p.mean), ("bos", p.bos)] {
        for (v, l) in vs.into_iter().zip(layers) {
            out.push((format!("{kind}/{l}"), vec![h(&v)], v));
        }
    }
    for (v, l) in p.per_tok.into_iter().zip(layers) {
        let width = v.len() / p.embedded.max(1);
        out.push((format!("per_tok/{l}"), vec![p.embedded, width], v));
    }
    if let Some(c) = p.contacts {
        out.push(("contacts".to_string(), vec![p.embedded, p.embedded], c));
    }
    out
}

/// Safetensors shards of at most `shard_bytes` of data.
pub struct ShardSink {
    dir: PathBuf,
    layers: Vec<usize>,
    shard_bytes: usize,
    next_shard: usize,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    bytes: usize,
    rows: Vec<IndexRow>,
    index: IndexFile,
}

impl ShardSink {
    pub fn new(dir: &Path, layers: &[usize], shard_bytes: usize, existing: Existing) -> Self {
        ShardSink {
            dir: dir.to_path_buf(),
            layers: layers.to_vec(),
            shard_bytes: shard_bytes.max(1),
            next_shard: existing.next_shard,
            tensors: Vec::new(),
            bytes: 0,
            rows: Vec::new(),
            index: existing.index,
        }
    }
}

impl Sink for ShardSink {
    fn add(&mut self, p: ProteinEmbedding) -> Result<Option<Flushed>> {
        self.rows.push(IndexRow::of(&p, shard_name(self.next_shard)));
        let name = p.name.clone();
        self.bytes += BOOKKEEPING_BYTES + 2 * name.len();
        for (what, shape, v) in arrays(p, &self.layers) {
            let tensor_name = format!("{name}/{what}");
            self.bytes += v.len() * 4 + tensor_name.len() + BOOKKEEPING_BYTES;
            self.tensors.push((tensor_name, shape, v));
        }
        if self.bytes >= self.shard_bytes {
            return self.flush();
        }
        Ok(None)
    }

    fn flush(&mut self) -> Result<Option<Flushed>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let file = shard_name(self.next_shard);
        write_safetensors_streamed(&self.dir.join(&file), &self.tensors)?;
        self.index.append(&self.rows)?;
        let flushed = Flushed { file, sequences: self.rows.len(), bytes: self.bytes };
        self.tensors.clear();
        self.rows.clear();
        self.bytes = 0;
        self.next_shard += 1;
        Ok(Some(flushed))
    }
}

/// Write `path` under a temporary name with `write`, sync it and rename it into place.
fn write_atomic_with(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(describe_write_error(e, path));
    }
    Ok(())
}

/// The safetensors layout written directly from the buffered arrays (no second copy of
/// the shard in memory): 8-byte little-endian header length, the JSON header padded
/// with spaces to a multiple of 8, then the f32 data in the header's order.
fn write_safetensors_streamed(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "qf-engine embed", "dtype": "float32" }));
    let mut offset = 0usize;
    let mut seen = HashMap::new();
    for (name, shape, v) in tensors {
        if seen.insert(name.as_str(), ()).is_some() {
            bail!("internal: tensor `{name}` twice in one shard");
        }
        let end = offset + v.len() * 4;
        header.insert(name.clone(), json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    let mut text = serde_json::to_string(&Value::Object(header))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    write_atomic_with(path, |w| {
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(text.as_bytes())?;
        for (_, _, v) in tensors {
            w.write_all(bytemuck::cast_slice(v))?;
        }
        Ok(())
    })
}

/// The file stem of a protein's `.npy` files (see the module documentation).
pub fn npy_stem(name: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !name.is_empty() && name.chars().all(safe) && !name.starts_with('.') {
        return name.to_string();
    }
    let cleaned: String = name.chars().map(|c| if safe(c) { c } else { '_' }).collect();
    format!("{}-{:08x}", cleaned.trim_start_matches('.'), name_hash(name) as u32)
}

/// A `.npy` v1.0 file of little-endian f32 in C order.
pub fn npy_bytes(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + dict.len() + 1;
    let header = format!("{dict}{}\n", " ".repeat((64 - unpadded % 64) % 64));
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytemuck::cast_slice(values));
    out
}

/// One `.npy` file per protein and array; index rows appended every
/// [`NPY_ROWS_PER_APPEND`] proteins.
pub struct NpySink {
    dir: PathBuf,
    layers: Vec<usize>,
    rows: Vec<IndexRow>,
    bytes: usize,
    index: IndexFile,
}

impl NpySink {
    pub fn new(dir: &Path, layers: &[usize], existing: Existing) -> Self {
        NpySink { dir: dir.to_path_buf(), layers: layers.to_vec(), rows: Vec::new(), bytes: 0, index: existing.index }
    }
}

impl Sink for NpySink {
    fn add(&mut self, p: ProteinEmbedding) -> Result<Option<Flushed>> {
        let stem = npy_stem(&p.name);
        self.rows.push(IndexRow::of(&p, stem.clone()));
        for (what, shape, v) in arrays(p, &self.layers) {
            let path = self.dir.join(format!("{stem}.{}.npy", what.replace('/', ".")));
            let bytes = npy_bytes(&shape, &v);
            self.bytes += bytes.len();
            write_atomic_with(&path, |w| w.write_all(&bytes))?;
        }
        if self.rows.len() >= NPY_ROWS_PER_APPEND {
            return self.flush();
        }
        Ok(None)
    }

    fn flush(&mut self) -> Result<Option<Flushed>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        self.index.append(&self.rows)?;
        let flushed = Flushed { file: "npy".into(), sequences: self.rows.len(), bytes: self.bytes };
        self.rows.clear();
        self.bytes = 0;
        Ok(Some(flushed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_to_64_bytes() {
        let b = npy_bytes(&[2, 3], &[0.0; 6]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), "{header}");
        assert!(std::str::from_utf8(&npy_bytes(&[5], &[0.0; 5])[10..]).unwrap().contains("'shape': (5,)"));
        assert_eq!(b.len(), 10 + hlen + 24);
    }

    #[test]
    fn stems_are_safe_and_distinct() {
        assert_eq!(npy_stem("P12345_x-1.2"), "P12345_x-1.2");
        let (a, b) = (npy_stem("Q9/1-50"), npy_stem("Q9_1-50"));
        assert!(a.starts_with("Q9_1-50-") && a.len() == "Q9_1-50-".len() + 8, "{a}");
        assert_ne!(a, b);
        assert!(!npy_stem("../x").contains('/'));
        assert!(!npy_stem(".hidden").starts_with('.'));
    }
}
