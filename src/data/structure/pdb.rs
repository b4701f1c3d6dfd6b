//! PDB format (fixed columns, version 3.3): `ATOM`/`HETATM`, `MODRES`, `TER`,
//! `MODEL`/`ENDMDL`, `END`; every other record is ignored. Reads the first model only and
//! keeps every atom record as written (all altlocs, waters, ligands): choosing among them is
//! the assembly's job (`assembly.rs`). Errors name the file and line. Ours rather than
//! pdbtbx's: see `mod.rs` (pdbtbx cannot read 1EJG, renames blank chains, hides `TER`).

use super::record::{optional_char, parse_finite, AtomRecord, ParsedAtoms, ResidueKey};
use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, HashSet};

pub(super) fn parse_pdb(text: &[u8], source: &str) -> Result<ParsedAtoms> {
    let mut atoms: Vec<AtomRecord> = Vec::new();
    let mut modres = HashMap::new();
    let mut terminated: HashSet<String> = HashSet::new();
    let mut models = 0usize;
    let mut first_model_done = false;
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let record = record_name(line);
        match record {
            b"MODEL" => {
                models += 1;
                // a second MODEL also ends the first one when its ENDMDL is missing
                first_model_done |= models > 1;
            }
            b"ENDMDL" => first_model_done = true,
            b"END" => break,
            _ if first_model_done => {}
            b"ATOM" | b"HETATM" => {
                let mut atom = parse_pdb_atom(line, line_no, source)?;
                atom.after_ter = terminated.contains(&atom.chain);
                atoms.push(atom);
            }
            b"TER" => {
                let chain = match line.get(21) {
                    Some(&c) if c != b' ' => (c as char).to_string(),
                    _ => atoms.last().map(|a| a.chain.clone()).unwrap_or_default(),
                };
                terminated.insert(chain);
            }
            b"MODRES" => {
                let (key, parent) = parse_pdb_modres(line, line_no, source)?;
                modres.insert(key, parent);
            }
            _ => {}
        }
    }
    Ok(ParsedAtoms { atoms, modres, models: models.max(1) })
}

/// Record name: columns 1-6 without trailing blanks.
fn record_name(line: &[u8]) -> &[u8] {
    line[..line.len().min(6)].trim_ascii_end()
}

/// Text of 1-based columns `first..=last` (clipped to the line), as ASCII.
fn columns<'a>(line: &'a [u8], first: usize, last: usize, line_no: usize, source: &str) -> Result<&'a str> {
    let start = (first - 1).min(line.len());
    let end = last.min(line.len());
    std::str::from_utf8(&line[start..end])
        .map_err(|_| anyhow!("{source}:{line_no}: columns {first}-{last} are not ASCII text"))
}

fn parse_pdb_atom(line: &[u8], line_no: usize, source: &str) -> Result<AtomRecord> {
    let record = String::from_utf8_lossy(record_name(line)).into_owned();
    if line.len() < 54 {
        bail!(
            "{source}:{line_no}: {record} record is truncated: {} columns, but the x, y, z \
             coordinates need columns 31-54",
            line.len()
        );
    }
    let col = |first, last| columns(line, first, last, line_no, source);
    let number_text = col(23, 26)?.trim();
    let number: i32 = number_text.parse().map_err(|_| {
        anyhow!("{source}:{line_no}: residue number '{number_text}' in columns 23-26 is not an integer")
    })?;
    let coordinate = |axis: &str, first: usize| -> Result<f32> {
        let text = col(first, first + 7)?.trim();
        parse_finite(text).ok_or_else(|| {
            anyhow!("{source}:{line_no}: {axis} coordinate '{text}' in columns {first}-{} is not a number", first + 7)
        })
    };
    let xyz = [coordinate("x", 31)?, coordinate("y", 39)?, coordinate("z", 47)?];
    let occupancy_text = col(55, 60)?.trim();
    let occupancy = if occupancy_text.is_empty() {
        1.0
    } else {
        parse_finite(occupancy_text).ok_or_else(|| {
            anyhow!("{source}:{line_no}: occupancy '{occupancy_text}' in columns 55-60 is not a number")
        })?
    };
    Ok(AtomRecord {
        line: line_no,
        hetatm: record == "HETATM",
        polymer: None,
        after_ter: false,
        chain: col(22, 22)?.trim().to_string(),
        number,
        ins_code: optional_char(col(27, 27)?),
        res_name: col(18, 20)?.trim().to_ascii_uppercase(),
        atom_name: col(13, 16)?.trim().to_string(),
        has_alt_loc: !col(17, 17)?.trim().is_empty(),
        occupancy,
        xyz,
    })
}

/// `MODRES`: resName 13-15, chainID 17, seqNum 19-22, iCode 23, stdRes 25-27.
fn parse_pdb_modres(line: &[u8], line_no: usize, source: &str) -> Result<(ResidueKey, String)> {
    if line.len() < 27 {
        bail!(
            "{source}:{line_no}: MODRES record is truncated: {} columns, but the standard \
             residue name needs columns 25-27",
            line.len()
        );
    }
    let col = |first, last| columns(line, first, last, line_no, source);
    let number_text = col(19, 22)?.trim();
    let number: i32 = number_text.parse().map_err(|_| {
        anyhow!("{source}:{line_no}: MODRES residue number '{number_text}' in columns 19-22 is not an integer")
    })?;
    let chain = col(17, 17)?.trim().to_string();
    let parent = col(25, 27)?.trim().to_ascii_uppercase();
    Ok(((chain, number, optional_char(col(23, 23)?)), parent))
}
