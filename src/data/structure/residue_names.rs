//! Residue-name tables: one-letter codes (ESM alphabet), the built-in parents of modified
//! amino acids (used when a file has no MODRES entry), waters and nucleotides. Changes only
//! when a new residue name must be recognised.

/// One-letter code of the standard amino acids and the ambiguity / rare codes of the ESM
/// alphabet (SEC→U, PYL→O, ASX→B, GLX→Z, UNK→X), plus the common protonation-state names
/// of simulation files (HID/HIE/HIP, CYX/CYM, LYN).
pub fn standard_code(name: &str) -> Option<char> {
    let code = match name {
        "ALA" => 'A',
        "ARG" => 'R',
        "ASN" => 'N',
        "ASP" => 'D',
        "CYS" => 'C',
        "GLN" => 'Q',
        "GLU" => 'E',
        "GLY" => 'G',
        "HIS" => 'H',
        "ILE" => 'I',
        "LEU" => 'L',
        "LYS" => 'K',
        "MET" => 'M',
        "PHE" => 'F',
        "PRO" => 'P',
        "SER" => 'S',
        "THR" => 'T',
        "TRP" => 'W',
        "TYR" => 'Y',
        "VAL" => 'V',
        "SEC" => 'U',
        "PYL" => 'O',
        "ASX" => 'B',
        "GLX" => 'Z',
        "UNK" => 'X',
        "HID" | "HIE" | "HIP" => 'H',
        "CYX" | "CYM" => 'C',
        "LYN" => 'K',
        _ => return None,
    };
    Some(code)
}

/// Built-in parents of common modified amino acids (wwPDB Chemical Component Dictionary
/// `mon_nstd_parent_comp_id`; D-amino acids mapped to their L form), used when the file has
/// no `MODRES` / `_pdbx_struct_mod_residue` entry for the residue.
pub fn modified_parent(name: &str) -> Option<&'static str> {
    let parent = match name {
        "MSE" | "MSO" | "FME" | "CXM" | "SME" | "MHO" | "MED" => "MET",
        "SEP" | "SAC" | "DSN" => "SER",
        "TPO" | "DTH" => "THR",
        "PTR" | "TYS" | "TPQ" | "DTY" => "TYR",
        "CSO" | "CSD" | "CME" | "CSS" | "CAS" | "OCS" | "SCH" | "SMC" | "CSX" | "CMT" | "SNC" | "CCS" | "YCM"
        | "CSW" | "DCY" => "CYS",
        "MLY" | "M3L" | "MLZ" | "ALY" | "KCX" | "LLP" | "KPI" | "DLY" => "LYS",
        "HYP" | "DPR" => "PRO",
        "CGU" | "DGL" => "GLU",
        "PCA" | "DGN" => "GLN",
        "MEN" | "DSG" => "ASN",
        "NEP" | "HIC" | "DHI" => "HIS",
        "AIB" | "ABA" | "DAL" => "ALA",
        "NLE" | "MLE" | "DLE" => "LEU",
        "MVA" | "DVA" => "VAL",
        "DIL" => "ILE",
        "DAR" => "ARG",
        "DAS" => "ASP",
        "DPN" => "PHE",
        "TRQ" | "DTR" => "TRP",
        _ => return None,
    };
    Some(parent)
}

pub(super) fn is_water(name: &str) -> bool {
    matches!(name, "HOH" | "WAT" | "DOD" | "H2O" | "SOL" | "TIP" | "TIP3")
}

/// Standard ribo- and deoxyribonucleotides: polymer residues that are not protein.
pub(super) fn is_nucleotide(name: &str) -> bool {
    matches!(name, "A" | "C" | "G" | "U" | "I" | "N" | "DA" | "DC" | "DG" | "DT" | "DU" | "DI")
}
