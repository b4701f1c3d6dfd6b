//! The format-independent atom record: what the PDB reader (`pdb.rs`) and the mmCIF reader
//! (`mmcif.rs`) hand to the residue assembly (`assembly.rs`). It keeps what the assembly's
//! rules need and a general-purpose reader (pdbtbx, see `mod.rs`) does not give back: the
//! line of each record, whether an atom carries an altloc (pdbtbx rewrites shared atoms into
//! every altloc), the mmCIF polymer flag (`label_seq_id` `.`), and the PDB `TER` position.

use std::collections::HashMap;

/// (chain, author number, insertion code)
pub(super) type ResidueKey = (String, i32, Option<char>);

#[derive(Debug, Clone)]
pub(super) struct AtomRecord {
    pub(super) line: usize,
    pub(super) hetatm: bool,
    /// mmCIF: `label_seq_id` is a number (`Some(true)`) or `.` (`Some(false)`); PDB: `None`.
    pub(super) polymer: Option<bool>,
    /// PDB: the record comes after a `TER` for its chain.
    pub(super) after_ter: bool,
    pub(super) chain: String,
    pub(super) number: i32,
    pub(super) ins_code: Option<char>,
    pub(super) res_name: String,
    pub(super) atom_name: String,
    pub(super) has_alt_loc: bool,
    pub(super) occupancy: f32,
    pub(super) xyz: [f32; 3],
}

impl AtomRecord {
    pub(super) fn key(&self) -> ResidueKey {
        (self.chain.clone(), self.number, self.ins_code)
    }
}

/// What a format parser hands to the residue assembly.
pub(super) struct ParsedAtoms {
    pub(super) atoms: Vec<AtomRecord>,
    /// Parent residue names from `MODRES` / `_pdbx_struct_mod_residue`.
    pub(super) modres: HashMap<ResidueKey, String>,
    pub(super) models: usize,
}

pub(super) fn optional_char(text: &str) -> Option<char> {
    text.trim().chars().next()
}

pub(super) fn parse_finite(text: &str) -> Option<f32> {
    text.parse::<f32>().ok().filter(|v| v.is_finite())
}
