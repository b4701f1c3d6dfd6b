//! PDBx/mmCIF: the two categories the structure reader uses, read by column name through
//! the CIF tokenizer of `cif.rs`: `_atom_site` (first model only; rows whose `label_seq_id`
//! is `.` are non-polymer and dropped here; author chain, number and insertion code, with the
//! `label_` items as fallback) and `_pdbx_struct_mod_residue` (the parents of modified
//! residues). Ours rather than pdbtbx's: pdbtbx reads neither the polymer flag nor
//! `_pdbx_struct_mod_residue` (see `mod.rs`).

use super::cif::{read_loop_header, skip_loop_values, split_tag, stream_loop_rows, CifTokenizer, Token, TokenKind};
use super::record::{optional_char, parse_finite, AtomRecord, ParsedAtoms, ResidueKey};
use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, HashSet};

/// The `_atom_site` items we read, as column indices (some optional).
struct AtomSiteColumns {
    group: Option<usize>,
    atom_name: usize,
    alt_id: Option<usize>,
    res_name: usize,
    chain: usize,
    label_seq: Option<usize>,
    number: usize,
    ins_code: Option<usize>,
    xyz: [usize; 3],
    occupancy: Option<usize>,
    model: Option<usize>,
}

impl AtomSiteColumns {
    /// Column indices by item name (`items` lower case, without the `_atom_site.` prefix).
    fn find(items: &[String], line: usize, source: &str) -> Result<Self> {
        let index = |name: &str| items.iter().position(|i| i.eq_ignore_ascii_case(name));
        let required = |names: &[&str]| -> Result<usize> {
            names
                .iter()
                .find_map(|n| index(n))
                .ok_or_else(|| anyhow!("{source}:{line}: the _atom_site loop has no _atom_site.{} column", names[0]))
        };
        Ok(AtomSiteColumns {
            group: index("group_PDB"),
            atom_name: required(&["label_atom_id", "auth_atom_id"])?,
            alt_id: index("label_alt_id").or_else(|| index("auth_alt_id")),
            res_name: required(&["label_comp_id", "auth_comp_id"])?,
            chain: required(&["auth_asym_id", "label_asym_id"])?,
            label_seq: index("label_seq_id"),
            number: required(&["auth_seq_id", "label_seq_id"])?,
            ins_code: index("pdbx_PDB_ins_code"),
            xyz: [required(&["Cartn_x"])?, required(&["Cartn_y"])?, required(&["Cartn_z"])?],
            occupancy: index("occupancy"),
            model: index("pdbx_PDB_model_num"),
        })
    }
}

/// Collects `_atom_site` rows of the first model as [`AtomRecord`]s.
struct AtomSiteReader<'s> {
    source: &'s str,
    first_model: Option<i64>,
    models: HashSet<i64>,
    atoms: Vec<AtomRecord>,
}

impl<'s> AtomSiteReader<'s> {
    fn row(&mut self, cols: &AtomSiteColumns, row: &[Token]) -> Result<()> {
        if let Some(model) = self.model_of(cols, row)? {
            self.models.insert(model);
            if *self.first_model.get_or_insert(model) != model {
                return Ok(());
            }
        }
        let polymer = cols.label_seq.map(|i| row[i].value().is_some());
        if polymer == Some(false) {
            return Ok(()); // ligand or water: not part of a polymer chain
        }
        let text = |i: usize| row[i].value().unwrap_or("");
        let chain = text(cols.chain).to_string();
        let number = self.residue_number(&row[cols.number])?;
        let mut xyz = [0f32; 3];
        for ((axis, &i), item) in xyz.iter_mut().zip(&cols.xyz).zip(["Cartn_x", "Cartn_y", "Cartn_z"]) {
            *axis = self.number(&row[i], item)?;
        }
        let occupancy = match cols.occupancy.and_then(|i| row[i].value().map(|_| i)) {
            Some(i) => self.number(&row[i], "occupancy")?,
            None => 1.0,
        };
        self.atoms.push(AtomRecord {
            line: row[0].line,
            hetatm: cols.group.is_some_and(|i| text(i).eq_ignore_ascii_case("HETATM")),
            polymer,
            after_ter: false,
            chain,
            number,
            ins_code: cols.ins_code.and_then(|i| row[i].value()).and_then(optional_char),
            res_name: text(cols.res_name).to_ascii_uppercase(),
            atom_name: text(cols.atom_name).to_string(),
            has_alt_loc: cols.alt_id.is_some_and(|i| row[i].value().is_some()),
            occupancy,
            xyz,
        });
        Ok(())
    }

    fn model_of(&self, cols: &AtomSiteColumns, row: &[Token]) -> Result<Option<i64>> {
        match cols.model.map(|i| &row[i]) {
            Some(token) if token.value().is_some() => self.integer(token, "pdbx_PDB_model_num").map(Some),
            _ => Ok(None),
        }
    }

    fn integer(&self, token: &Token, item: &str) -> Result<i64> {
        let text = token.value().unwrap_or(&token.text);
        text.parse::<i64>()
            .map_err(|_| anyhow!("{}:{}: _atom_site.{item} value '{text}' is not an integer", self.source, token.line))
    }

    fn residue_number(&self, token: &Token) -> Result<i32> {
        let number = self.integer(token, "auth_seq_id")?;
        i32::try_from(number).map_err(|_| {
            anyhow!("{}:{}: _atom_site.auth_seq_id value {number} is out of range", self.source, token.line)
        })
    }

    fn number(&self, token: &Token, item: &str) -> Result<f32> {
        let text = token.value().unwrap_or(&token.text);
        parse_finite(text)
            .ok_or_else(|| anyhow!("{}:{}: _atom_site.{item} value '{text}' is not a number", self.source, token.line))
    }
}

/// Rows of `_pdbx_struct_mod_residue` → parent residue names by author residue.
fn mod_residue_rows(items: &[String], values: &[Token], source: &str) -> Result<HashMap<ResidueKey, String>> {
    let mut map = HashMap::new();
    let index = |name: &str| items.iter().position(|i| i == name);
    let (Some(chain), Some(number), Some(parent)) =
        (index("auth_asym_id"), index("auth_seq_id"), index("parent_comp_id"))
    else {
        return Ok(map); // without these items the category cannot be used
    };
    let ins_code = index("pdb_ins_code");
    for row in values.chunks_exact(items.len()) {
        let (Some(c), Some(n), Some(p)) = (row[chain].value(), row[number].value(), row[parent].value()) else {
            continue;
        };
        let n: i32 = n.parse().map_err(|_| {
            anyhow!("{source}:{}: _pdbx_struct_mod_residue.auth_seq_id value '{n}' is not an integer", row[number].line)
        })?;
        let icode = ins_code.and_then(|i| row[i].value()).and_then(optional_char);
        map.insert((c.to_string(), n, icode), p.to_ascii_uppercase());
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------
// mmCIF: parser
// ---------------------------------------------------------------------------------------

pub(super) fn parse_mmcif(bytes: &[u8], source: &str) -> Result<ParsedAtoms> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!("{source}:{line}: mmCIF text is not valid UTF-8")
    })?;
    let mut tokens = CifTokenizer::new(text, source);
    let mut reader = AtomSiteReader { source, first_model: None, models: HashSet::new(), atoms: Vec::new() };
    let mut modres = HashMap::new();
    // Single-valued items (`_tag value`) of the categories we read, for files that write a
    // one-row category without `loop_`.
    let mut pairs: HashMap<String, Vec<(String, Token)>> = HashMap::new();
    let mut saw_atom_site = false;
    let mut blocks = 0;
    let mut pending = tokens.next_token()?;
    while let Some(token) = pending.take() {
        match token.kind {
            TokenKind::DataBlock => {
                blocks += 1;
                if blocks > 1 {
                    break; // only the first data block
                }
                pending = tokens.next_token()?;
            }
            TokenKind::Loop => {
                let (category, items, next) = read_loop_header(&mut tokens, &token, source)?;
                pending = match category.as_str() {
                    "_atom_site" => {
                        saw_atom_site = true;
                        let cols = AtomSiteColumns::find(&items, token.line, source)?;
                        stream_loop_rows(&mut tokens, next, items.len(), token.line, source, |row| {
                            reader.row(&cols, row)
                        })?
                    }
                    "_pdbx_struct_mod_residue" => {
                        let mut values = Vec::new();
                        let next = stream_loop_rows(&mut tokens, next, items.len(), token.line, source, |row| {
                            values.extend_from_slice(row);
                            Ok(())
                        })?;
                        modres.extend(mod_residue_rows(&items, &values, source)?);
                        next
                    }
                    _ => skip_loop_values(&mut tokens, next, items.len(), token.line, source)?,
                };
            }
            TokenKind::Tag => {
                let value = match tokens.next_token()? {
                    Some(v) if v.kind == TokenKind::Value => v,
                    _ => bail!("{source}:{}: data item {} has no value", token.line, token.text),
                };
                let (category, item) = split_tag(&token.text);
                if category == "_atom_site" || category == "_pdbx_struct_mod_residue" {
                    pairs.entry(category).or_default().push((item, value));
                }
                pending = tokens.next_token()?;
            }
            TokenKind::Value => {
                bail!("{source}:{}: value '{}' is not inside a loop_ and follows no data item", token.line, token.text)
            }
            TokenKind::Reserved => pending = tokens.next_token()?,
        }
    }
    if let Some(items) = pairs.remove("_atom_site") {
        saw_atom_site = true;
        let (names, row): (Vec<String>, Vec<Token>) = items.into_iter().unzip();
        let cols = AtomSiteColumns::find(&names, row[0].line, source)?;
        reader.row(&cols, &row)?;
    }
    if let Some(items) = pairs.remove("_pdbx_struct_mod_residue") {
        let (names, row): (Vec<String>, Vec<Token>) = items.into_iter().unzip();
        modres.extend(mod_residue_rows(&names, &row, source)?);
    }
    if !saw_atom_site {
        bail!("{source}: no _atom_site category (no atomic coordinates) in the mmCIF file");
    }
    let models = reader.models.len().max(1);
    Ok(ParsedAtoms { atoms: reader.atoms, modres, models })
}
