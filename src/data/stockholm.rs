//! Stockholm multiple-alignment reader (the format of Pfam's `Pfam-A.seed(.gz)` and
//! `Pfam-A.full`; see <https://en.wikipedia.org/wiki/Stockholm_format> and the Pfam/
//! HMMER user guide), plain or gzip. Each record becomes one family of labelled rows.
//!
//! A record runs up to a `//` line. `#=GF ID <name>` gives the family (required),
//! `#=GF AC <accession>` its accession; other `#` lines (`# STOCKHOLM 1.0`, `#=GF`,
//! `#=GS`, `#=GR`, `#=GC`) are skipped without being decoded (Pfam files carry Latin-1
//! author names). Every other non-blank line is `name aligned-row`, e.g.
//! `Q85A82/1-270  ..MKv.LT--`; an alignment may be split over several blank-line
//! separated blocks, and a name's pieces are concatenated in order. The sequence is the
//! aligned row with gap characters `.` and `-` removed, upper-cased (lower case marks
//! insert states in Pfam).
//!
//! Errors name the file and line: a record without `#=GF ID` or without rows, a row
//! that is not two fields, a name twice in one block, rows of unequal aligned length
//! (an incomplete block), a character that is neither a letter nor a gap, a row that is
//! all gaps, a name seen in two records, a missing final `//`, an empty file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::data::dataset::{describe_char_at, open_input, read_line_bytes, LabelledSet, LabelledSetBuilder};

/// Read every record of a Stockholm file (gzip recognised by content).
pub fn read_stockholm(path: &Path) -> Result<LabelledSet> {
    let mut reader = open_input(path)?;
    let mut parser = StockholmParser::new(path);
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        line_no += 1;
        if !read_line_bytes(&mut *reader, &mut line, path, line_no)? {
            break;
        }
        parser.line(&line, line_no)?;
    }
    parser.finish(line_no - 1)
}

/// One aligned row being assembled from its blocks.
struct AlignedRow {
    name: String,
    aligned: Vec<u8>,
    first_line: usize,
}

/// The record being read.
#[derive(Default)]
struct Record {
    started: bool,
    start_line: usize,
    id: Option<String>,
    accession: Option<String>,
    rows: Vec<AlignedRow>,
    row_index: HashMap<String, usize>,
    names_in_block: HashSet<String>,
}

impl Record {
    fn has_content(&self) -> bool {
        self.id.is_some() || !self.rows.is_empty()
    }
}

/// Line-by-line Stockholm state machine.
struct StockholmParser<'a> {
    path: &'a Path,
    builder: LabelledSetBuilder,
    /// Name → (line, family) of rows already stored, to report duplicates across records.
    first_seen: HashMap<String, (usize, String)>,
    record: Record,
}

impl<'a> StockholmParser<'a> {
    fn new(path: &'a Path) -> Self {
        StockholmParser {
            path,
            builder: LabelledSetBuilder::new(),
            first_seen: HashMap::new(),
            record: Record::default(),
        }
    }

    fn error(&self, line_no: usize, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}:{line_no}: {what}", self.path.display())
    }

    fn line(&mut self, line: &[u8], line_no: usize) -> Result<()> {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            self.record.names_in_block.clear();
            return Ok(());
        }
        if trimmed == b"//" {
            return self.finish_record(line_no);
        }
        if !self.record.started {
            self.record.started = true;
            self.record.start_line = line_no;
        }
        if let Some(rest) = line.strip_prefix(b"#=GF") {
            return self.feature(rest, line_no);
        }
        if line.starts_with(b"#") {
            return Ok(());
        }
        self.sequence_line(trimmed, line_no)
    }

    fn feature(&mut self, rest: &[u8], line_no: usize) -> Result<()> {
        let text = String::from_utf8_lossy(rest);
        let mut parts = text.trim().splitn(2, char::is_whitespace);
        let tag = parts.next().unwrap_or("");
        let value = parts.next().unwrap_or("").trim().trim_end_matches(';').trim();
        if tag != "ID" && tag != "AC" {
            return Ok(());
        }
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(self.error(line_no, format!("`#=GF {tag}` needs one value, found `{value}`")));
        }
        match tag {
            "ID" => self.record.id = Some(value.to_string()),
            _ => self.record.accession = Some(value.to_string()),
        }
        Ok(())
    }

    fn sequence_line(&mut self, line: &[u8], line_no: usize) -> Result<()> {
        let fields: Vec<&[u8]> = line.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()).collect();
        if fields.len() != 2 {
            return Err(self.error(line_no, format!("expected `name aligned-sequence`, found {} fields", fields.len())));
        }
        let name =
            std::str::from_utf8(fields[0]).map_err(|_| self.error(line_no, "sequence name is not valid UTF-8"))?;
        let aligned = fields[1];
        if let Some(pos) = aligned.iter().position(|&b| !(b.is_ascii_alphabetic() || b == b'.' || b == b'-')) {
            return Err(self.error(
                line_no,
                format!(
                    "sequence `{name}`: invalid character {} at column {} of the aligned row \
                     (letters, '.' and '-' only)",
                    describe_char_at(aligned, pos),
                    pos + 1
                ),
            ));
        }
        if !self.record.names_in_block.insert(name.to_string()) {
            return Err(self.error(line_no, format!("`{name}` appears twice in one alignment block")));
        }
        let record = &mut self.record;
        match record.row_index.get(name) {
            Some(&i) => record.rows[i].aligned.extend_from_slice(aligned),
            None => {
                record.row_index.insert(name.to_string(), record.rows.len());
                record.rows.push(AlignedRow { name: name.to_string(), aligned: aligned.to_vec(), first_line: line_no });
            }
        }
        Ok(())
    }

    fn finish_record(&mut self, end_line: usize) -> Result<()> {
        let record = std::mem::take(&mut self.record);
        let Some(id) = record.id.clone() else {
            return Err(
                self.error(end_line, format!("record starting at line {} has no `#=GF ID` line", record.start_line))
            );
        };
        if record.rows.is_empty() {
            return Err(self.error(end_line, format!("family `{id}` has no sequences")));
        }
        check_equal_widths(&record.rows, &id).map_err(|e| self.error(end_line, e))?;
        let family =
            self.builder.intern_family(&id, record.accession.as_deref()).map_err(|e| self.error(end_line, e))?;
        for row in &record.rows {
            self.store_row(row, &id, family)?;
        }
        Ok(())
    }

    fn store_row(&mut self, row: &AlignedRow, id: &str, family: u32) -> Result<()> {
        if let Some((line, other)) = self.first_seen.get(&row.name) {
            return Err(self.error(
                row.first_line,
                format!("duplicate sequence name `{}` (also in family `{other}` at line {line})", row.name),
            ));
        }
        let residues: Vec<u8> = row.aligned.iter().copied().filter(|&b| b != b'.' && b != b'-').collect();
        if residues.is_empty() {
            return Err(self.error(row.first_line, format!("row `{}` of family `{id}` is all gaps", row.name)));
        }
        self.builder.push(&row.name, &residues, Some(family)).map_err(|e| self.error(row.first_line, e))?;
        self.first_seen.insert(row.name.clone(), (row.first_line, id.to_string()));
        Ok(())
    }

    fn finish(self, last_line: usize) -> Result<LabelledSet> {
        if self.record.has_content() {
            return Err(self.error(
                last_line.max(1),
                format!("file ends inside the record starting at line {} (missing `//`)", self.record.start_line),
            ));
        }
        if self.builder.is_empty() {
            bail!("{}: no Stockholm records (empty file?)", self.path.display());
        }
        Ok(self.builder.finish())
    }
}

/// All aligned rows of a record must have the same number of columns.
fn check_equal_widths(rows: &[AlignedRow], id: &str) -> std::result::Result<(), String> {
    let first = &rows[0];
    match rows.iter().find(|r| r.aligned.len() != first.aligned.len()) {
        None => Ok(()),
        Some(r) => Err(format!(
            "family `{id}`: aligned rows differ in length (`{}` has {} columns, `{}` has {}; \
             is a block incomplete?)",
            first.name,
            first.aligned.len(),
            r.name,
            r.aligned.len()
        )),
    }
}
