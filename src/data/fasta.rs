//! FASTA reader (Pearson format, as written by UniProt and most tools), plain or gzip.
//!
//! A record is a header line `>name description…` followed by any number of sequence
//! lines (multi-line sequences are joined; whitespace inside lines is ignored). The name
//! is the first whitespace-separated token after `>`. Labels come from one of:
//!
//! - [`FastaLabels::Header`]: the first token after the name, `>Q9RR60/137-422 Enolase_C`;
//! - [`FastaLabels::Tsv`]: a separate file of `name<TAB>label` lines (blank lines and
//!   lines starting with `#` are skipped; no header row);
//! - [`FastaLabels::None`]: an unlabelled set, for prediction.
//!
//! Residues are letters (see [`crate::data::dataset`]); a single `*` ending a record (a
//! translated stop codon) is dropped; any other non-letter is an error. Errors name the
//! file and 1-based line: sequence before the first header, a header without a name or
//! (when labels are expected) without a label, a record with no sequence, duplicate
//! names, a name missing from the label file, a bad character.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::data::dataset::{
    bad_residue_message, find_bad_residue, open_input, read_line_bytes, LabelledSet, LabelledSetBuilder,
};

/// Where the labels of a FASTA file come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastaLabels {
    /// No labels: a set for prediction.
    None,
    /// `>name label …`: the first token after the name.
    Header,
    /// A `name<TAB>label` file.
    Tsv(PathBuf),
}

/// Labels read from a TSV file: name → (label, line), with the file's path.
type TsvLabels<'a> = (&'a Path, HashMap<String, (String, usize)>);

/// Read a FASTA file (gzip recognised by content) into a set, labelled as `labels` says.
pub fn read_fasta(path: &Path, labels: &FastaLabels) -> Result<LabelledSet> {
    read_fasta_from(open_input(path)?, path, labels)
}

/// Read FASTA text from `reader`; `path` names the source in error messages.
pub fn read_fasta_from(
    mut reader: Box<dyn std::io::BufRead + Send>,
    path: &Path,
    labels: &FastaLabels,
) -> Result<LabelledSet> {
    let tsv = match labels {
        FastaLabels::Tsv(p) => Some((p.as_path(), read_label_tsv(p)?)),
        _ => None,
    };
    let mut parser = FastaParser::new(path, labels, tsv);
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        line_no += 1;
        if !read_line_bytes(&mut *reader, &mut line, path, line_no)? {
            break;
        }
        parser.line(&line, line_no)?;
    }
    parser.finish()
}

/// Read a `name<TAB>label` file into name → (label, line).
pub fn read_label_tsv(path: &Path) -> Result<HashMap<String, (String, usize)>> {
    let mut reader = open_input(path)?;
    let mut labels: HashMap<String, (String, usize)> = HashMap::new();
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        line_no += 1;
        if !read_line_bytes(&mut *reader, &mut line, path, line_no)? {
            break;
        }
        let at = |what: &str| anyhow!("{}:{line_no}: {what}", path.display());
        let text = std::str::from_utf8(&line).map_err(|_| at("not valid UTF-8"))?;
        if text.trim().is_empty() || text.starts_with('#') {
            continue;
        }
        let (name, label) = text.split_once('\t').ok_or_else(|| at("expected `name<TAB>label` (no tab found)"))?;
        let (name, label) = (name.trim(), label.trim());
        if name.is_empty() || label.is_empty() {
            return Err(at("empty name or label (expected `name<TAB>label`)"));
        }
        if let Some((old, old_line)) = labels.get(name) {
            if old != label {
                return Err(at(&format!("`{name}` is labelled `{label}` here but `{old}` at line {old_line}")));
            }
            continue;
        }
        labels.insert(name.to_string(), (label.to_string(), line_no));
    }
    if labels.is_empty() {
        bail!("{}: no `name<TAB>label` lines (empty label file?)", path.display());
    }
    Ok(labels)
}

/// One record of a FASTA file, validated (a name, at least one residue, letters only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastaRecord {
    pub name: String,
    /// The first token after the name when labels are read from headers.
    pub label: Option<String>,
    /// 1-based line of the `>` header.
    pub header_line: usize,
    pub residues: Vec<u8>,
}

/// The record being read, and the line of a `*` that ended a sequence line (allowed
/// only at the end of the record).
struct OpenRecord {
    record: FastaRecord,
    stop_line: Option<usize>,
}

/// The line-by-line FASTA state machine: lines in, finished records out.
struct RecordLines {
    path: PathBuf,
    labels_in_header: bool,
    current: Option<OpenRecord>,
}

impl RecordLines {
    fn new(path: &Path, labels_in_header: bool) -> Self {
        RecordLines { path: path.to_path_buf(), labels_in_header, current: None }
    }

    fn error(&self, line_no: usize, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}:{line_no}: {what}", self.path.display())
    }

    /// Take one line; returns the previous record when this line starts a new one.
    fn line(&mut self, line: &[u8], line_no: usize) -> Result<Option<FastaRecord>> {
        if let Some(header) = line.strip_prefix(b">") {
            let done = self.end()?;
            self.current = Some(OpenRecord { record: self.parse_header(header, line_no)?, stop_line: None });
            return Ok(done);
        }
        if line.iter().all(u8::is_ascii_whitespace) || line.starts_with(b";") {
            return Ok(None);
        }
        let Some(mut open) = self.current.take() else {
            return Err(self.error(line_no, "sequence data before the first `>` header"));
        };
        let result = self.append_sequence(&mut open, line, line_no);
        self.current = Some(open);
        result.map(|()| None)
    }

    /// The record being read, finished (at the next header or the end of the file).
    fn end(&mut self) -> Result<Option<FastaRecord>> {
        let Some(open) = self.current.take() else {
            return Ok(None);
        };
        if open.record.residues.is_empty() {
            return Err(self.error(open.record.header_line, format!("record `{}` has no sequence", open.record.name)));
        }
        Ok(Some(open.record))
    }

    fn parse_header(&self, header: &[u8], line_no: usize) -> Result<FastaRecord> {
        let text = std::str::from_utf8(header).map_err(|_| self.error(line_no, "header is not valid UTF-8"))?;
        let mut tokens = text.split_whitespace();
        let name = tokens.next().ok_or_else(|| self.error(line_no, "header has no sequence name after `>`"))?;
        let label = if self.labels_in_header {
            Some(tokens.next().ok_or_else(|| {
                self.error(line_no, format!("header of `{name}` has no label (expected `>name label`)"))
            })?)
        } else {
            None
        };
        Ok(FastaRecord {
            name: name.to_string(),
            label: label.map(str::to_string),
            header_line: line_no,
            residues: Vec::new(),
        })
    }

    fn append_sequence(&self, open: &mut OpenRecord, line: &[u8], line_no: usize) -> Result<()> {
        let record = &mut open.record;
        if let Some(stop) = open.stop_line {
            let pos = record.residues.len() + 1;
            return Err(self.error(
                stop,
                format!(
                    "sequence `{}`: invalid residue '*' at position {pos} of the sequence \
                     (a stop '*' may only end a record)",
                    record.name
                ),
            ));
        }
        let mut residues: Vec<u8> = line.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        if residues.last() == Some(&b'*') {
            residues.pop();
            open.stop_line = Some(line_no);
        }
        if let Some(pos) = find_bad_residue(&residues) {
            let mut whole = record.residues.clone();
            whole.extend_from_slice(&residues);
            let message = bad_residue_message(&whole, record.residues.len() + pos);
            return Err(self.error(line_no, format!("sequence `{}`: {message}", record.name)));
        }
        record.residues.extend_from_slice(&residues);
        Ok(())
    }
}

/// The records of a FASTA file one at a time (plain or gzip), validated as
/// [`read_fasta`] validates them, with memory bounded by the longest record. Duplicate
/// names are not checked here (the caller decides what they mean).
pub struct FastaStream {
    reader: Box<dyn std::io::BufRead + Send>,
    lines: RecordLines,
    line: Vec<u8>,
    line_no: usize,
    done: bool,
}

impl FastaStream {
    /// Open `path` (gzip recognised by content); names only, headers' labels ignored.
    pub fn open(path: &Path) -> Result<FastaStream> {
        Ok(FastaStream {
            reader: open_input(path)?,
            lines: RecordLines::new(path, false),
            line: Vec::new(),
            line_no: 0,
            done: false,
        })
    }

    fn next_record(&mut self) -> Result<Option<FastaRecord>> {
        loop {
            self.line_no += 1;
            if !read_line_bytes(&mut *self.reader, &mut self.line, &self.lines.path, self.line_no)? {
                return self.lines.end();
            }
            if let Some(record) = self.lines.line(&self.line, self.line_no)? {
                return Ok(Some(record));
            }
        }
    }
}

impl Iterator for FastaStream {
    type Item = Result<FastaRecord>;

    fn next(&mut self) -> Option<Result<FastaRecord>> {
        if self.done {
            return None;
        }
        let next = self.next_record();
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next.transpose()
    }
}

/// FASTA records into a set: duplicate names, labels.
struct FastaParser<'a> {
    path: &'a Path,
    tsv: Option<TsvLabels<'a>>,
    lines: RecordLines,
    builder: LabelledSetBuilder,
    header_lines: Vec<usize>,
}

impl<'a> FastaParser<'a> {
    fn new(path: &'a Path, labels: &'a FastaLabels, tsv: Option<TsvLabels<'a>>) -> Self {
        FastaParser {
            path,
            tsv,
            lines: RecordLines::new(path, *labels == FastaLabels::Header),
            builder: LabelledSetBuilder::new(),
            header_lines: Vec::new(),
        }
    }

    fn error(&self, line_no: usize, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}:{line_no}: {what}", self.path.display())
    }

    fn line(&mut self, line: &[u8], line_no: usize) -> Result<()> {
        match self.lines.line(line, line_no)? {
            Some(record) => self.add(record),
            None => Ok(()),
        }
    }

    fn add(&mut self, record: FastaRecord) -> Result<()> {
        let line = record.header_line;
        if let Some(row) = self.builder.row_of_name(&record.name) {
            return Err(self.error(
                line,
                format!("duplicate sequence name `{}` (first at line {})", record.name, self.header_lines[row]),
            ));
        }
        let label = self.label_of(&record)?;
        let family = match label {
            Some(l) => Some(self.builder.intern_family(&l, None).map_err(|e| self.error(line, e))?),
            None => None,
        };
        self.builder.push(&record.name, &record.residues, family).map_err(|e| self.error(line, e))?;
        self.header_lines.push(line);
        Ok(())
    }

    fn label_of(&self, record: &FastaRecord) -> Result<Option<String>> {
        match (&self.tsv, &record.label) {
            (Some((tsv_path, labels)), _) => match labels.get(&record.name) {
                Some((label, _)) => Ok(Some(label.clone())),
                None => Err(anyhow!(
                    "{}:{}: no label for sequence `{}` in {}",
                    self.path.display(),
                    record.header_line,
                    record.name,
                    tsv_path.display()
                )),
            },
            (None, label) => Ok(label.clone()),
        }
    }

    fn finish(mut self) -> Result<LabelledSet> {
        if let Some(record) = self.lines.end()? {
            self.add(record)?;
        }
        if self.builder.is_empty() {
            bail!("{}: no FASTA records (empty file, or no `>` header)", self.path.display());
        }
        Ok(self.builder.finish())
    }
}

/// Write a set as FASTA, 60 residues per line, with the family id after the name when
/// the set is labelled (so [`read_fasta`] with [`FastaLabels::Header`] reads it back).
pub fn write_fasta(set: &LabelledSet, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for i in 0..set.len() {
        match set.family(i) {
            Some(f) => writeln!(out, ">{} {}", set.name(i), f.id)?,
            None => writeln!(out, ">{}", set.name(i))?,
        }
        for chunk in set.sequence_bytes(i).chunks(60) {
            out.write_all(chunk)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
