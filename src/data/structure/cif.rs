//! CIF 1.1 syntax, nothing PDBx-specific: the tokenizer (data blocks, `loop_`, bare and
//! quoted values, `;` text fields, `?`/`.` placeholders, comments) and the `loop_` helpers
//! (item names, rows streamed one at a time, loops skipped). `mmcif.rs` decides which
//! categories to read. Kept ours because every error must name the file and line and no
//! input may panic (`tests/fuzz_readers.rs`); pdbtbx panics on a `?` element (see `mod.rs`).

use anyhow::{bail, Result};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenKind {
    Value,
    Tag,
    Loop,
    DataBlock,
    /// `save_`, `global_`, `stop_`: not used by mmCIF data files, skipped.
    Reserved,
}

#[derive(Debug, Clone)]
pub(super) struct Token<'a> {
    pub(super) kind: TokenKind,
    pub(super) text: Cow<'a, str>,
    pub(super) line: usize,
    /// Quoted or text-field values are never `?`/`.` placeholders.
    pub(super) quoted: bool,
}

impl Token<'_> {
    /// `None` for the CIF placeholders `?` (unknown) and `.` (inapplicable).
    pub(super) fn value(&self) -> Option<&str> {
        let text: &str = &self.text;
        if !self.quoted && (text == "?" || text == ".") {
            None
        } else {
            Some(text)
        }
    }
}

pub(super) struct CifTokenizer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    at_line_start: bool,
    source: &'a str,
}

impl<'a> CifTokenizer<'a> {
    pub(super) fn new(text: &'a str, source: &'a str) -> Self {
        CifTokenizer { text, bytes: text.as_bytes(), pos: 0, line: 1, at_line_start: true, source }
    }

    pub(super) fn next_token(&mut self) -> Result<Option<Token<'a>>> {
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                    self.at_line_start = true;
                }
                // every byte `bare` stops at is whitespace here too (form feed included),
                // or the tokenizer would stand still
                b if b.is_ascii_whitespace() => {
                    self.pos += 1;
                    self.at_line_start = false;
                }
                b'#' => self.skip_to_line_end(),
                b';' if self.at_line_start => return self.text_field().map(Some),
                b'\'' | b'"' => return self.quoted(b).map(Some),
                _ => return Ok(Some(self.bare())),
            }
        }
        Ok(None)
    }

    fn skip_to_line_end(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    /// `;` at the start of a line opens a text field that runs to the next line starting
    /// with `;`.
    fn text_field(&mut self) -> Result<Token<'a>> {
        let start_line = self.line;
        let body_start = self.pos + 1;
        let Some(rel_end) = self.text[body_start..].find("\n;") else {
            bail!("{}:{start_line}: text field opened by ';' is never closed by a line starting with ';'", self.source);
        };
        let body = &self.text[body_start..body_start + rel_end];
        self.line += body.matches('\n').count() + 1;
        self.pos = body_start + rel_end + 2;
        self.at_line_start = false;
        Ok(Token {
            kind: TokenKind::Value,
            text: Cow::Borrowed(body.trim_end_matches('\r')),
            line: start_line,
            quoted: true,
        })
    }

    /// A quoted value ends at the same quote followed by whitespace or the end of the line.
    fn quoted(&mut self, quote: u8) -> Result<Token<'a>> {
        let start = self.pos + 1;
        let mut end = start;
        loop {
            match self.bytes.get(end) {
                None | Some(b'\n') => bail!(
                    "{}:{}: quoted value {} is not closed on its line",
                    self.source,
                    self.line,
                    &self.text[self.pos..end].trim_end_matches('\r')
                ),
                Some(&c) if c == quote => {
                    let next = self.bytes.get(end + 1);
                    if next.is_none_or(|n| n.is_ascii_whitespace()) {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        self.pos = end + 1;
        self.at_line_start = false;
        let text = Cow::Borrowed(&self.text[start..end]);
        Ok(Token { kind: TokenKind::Value, text, line: self.line, quoted: true })
    }

    fn bare(&mut self) -> Token<'a> {
        let start = self.pos;
        while self.pos < self.bytes.len() && !self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        self.at_line_start = false;
        let text = &self.text[start..self.pos];
        let lower = text.to_ascii_lowercase();
        let kind = if text.starts_with('_') {
            TokenKind::Tag
        } else if lower == "loop_" {
            TokenKind::Loop
        } else if lower.starts_with("data_") {
            TokenKind::DataBlock
        } else if lower.starts_with("save_") || lower == "global_" || lower == "stop_" {
            TokenKind::Reserved
        } else {
            TokenKind::Value
        };
        Token { kind, text: Cow::Borrowed(text), line: self.line, quoted: false }
    }
}

// ---------------------------------------------------------------------------------------
// loop_ helpers
// ---------------------------------------------------------------------------------------

/// `_category.item` → (`_category`, `item`), lower case (CIF names are case-insensitive).
pub(super) fn split_tag(tag: &str) -> (String, String) {
    let lower = tag.to_ascii_lowercase();
    match lower.split_once('.') {
        Some((c, i)) => (c.to_string(), i.to_string()),
        None => (lower, String::new()),
    }
}

/// The item names after `loop_`, and the first token after them.
pub(super) fn read_loop_header<'a>(
    tokens: &mut CifTokenizer<'a>,
    loop_token: &Token,
    source: &str,
) -> Result<(String, Vec<String>, Option<Token<'a>>)> {
    let mut category = String::new();
    let mut items = Vec::new();
    loop {
        let next = tokens.next_token()?;
        match next {
            Some(t) if t.kind == TokenKind::Tag => {
                let (c, item) = split_tag(&t.text);
                if items.is_empty() {
                    category = c;
                } else if c != category {
                    bail!("{source}:{}: loop_ mixes categories {category} and {c}", t.line);
                }
                items.push(item);
            }
            other => {
                if items.is_empty() {
                    bail!("{source}:{}: loop_ has no data item names", loop_token.line);
                }
                return Ok((category, items, other));
            }
        }
    }
}

/// Feed the loop's values to `on_row` one row at a time; returns the first token after the
/// loop. When the first row sits on one line (as wwPDB and every common writer do), every row
/// must: a row that runs onto the next line lacks a value, a line with more values has too
/// many, and both are reported at their line rather than as a shifted column much later.
pub(super) fn stream_loop_rows<'a>(
    tokens: &mut CifTokenizer<'a>,
    first: Option<Token<'a>>,
    ncols: usize,
    loop_line: usize,
    source: &str,
    mut on_row: impl FnMut(&[Token<'a>]) -> Result<()>,
) -> Result<Option<Token<'a>>> {
    let mut row: Vec<Token<'a>> = Vec::with_capacity(ncols);
    let mut one_row_per_line: Option<bool> = None;
    let mut previous_row_line = 0usize;
    let mut pending = first;
    while let Some(token) = pending.take() {
        if token.kind != TokenKind::Value {
            pending = Some(token);
            break;
        }
        if row.is_empty() && one_row_per_line == Some(true) && token.line == previous_row_line {
            bail!(
                "{source}:{}: this line has more values than the {ncols} columns of the loop_ \
                 at line {loop_line}",
                token.line
            );
        }
        if let Some(start) = row.first() {
            if one_row_per_line == Some(true) && token.line != start.line {
                bail!(
                    "{source}:{}: row has {} values, but the loop_ at line {loop_line} has {ncols} \
                     columns (a value is missing)",
                    start.line,
                    row.len()
                );
            }
        }
        row.push(token);
        if row.len() == ncols {
            let single_line = row[0].line == row[ncols - 1].line;
            one_row_per_line.get_or_insert(single_line);
            previous_row_line = row[ncols - 1].line;
            on_row(&row)?;
            row.clear();
        }
        pending = tokens.next_token()?;
    }
    if let Some(start) = row.first() {
        bail!(
            "{source}:{}: the last row has {} values, but the loop_ at line {loop_line} has \
             {ncols} columns (a value is missing or the file is truncated)",
            start.line,
            row.len()
        );
    }
    Ok(pending)
}

pub(super) fn skip_loop_values<'a>(
    tokens: &mut CifTokenizer<'a>,
    first: Option<Token<'a>>,
    ncols: usize,
    loop_line: usize,
    source: &str,
) -> Result<Option<Token<'a>>> {
    let mut count = 0usize;
    let mut last_line = loop_line;
    let mut pending = first;
    while let Some(token) = pending.take() {
        if token.kind != TokenKind::Value {
            pending = Some(token);
            break;
        }
        count += 1;
        last_line = token.line;
        pending = tokens.next_token()?;
    }
    if count % ncols != 0 {
        bail!(
            "{source}:{last_line}: the loop_ at line {loop_line} has {count} values, not a \
             multiple of its {ncols} columns"
        );
    }
    Ok(pending)
}
