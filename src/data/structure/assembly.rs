//! Residue assembly, the same for both formats: atom records → protein chains. These are
//! the policies a general reader leaves to its caller or gets wrong for our use (pdbtbx:
//! see `mod.rs`), so they are ours:
//! * **Author chains and numbering, insertion codes in file order**: residues are keyed by
//!   (author chain, number, insertion code) and kept in order of first appearance, so
//!   `file.cif:A` and `file.pdb:A` agree and 1OSM A163A-J stay between 163 and 164.
//! * **Altloc choice**: per atom the highest occupancy, ties to the first in the file;
//!   atoms without altloc are shared by every variant (pdbtbx copies them into each altloc
//!   and divides their occupancy, which loses this distinction).
//! * **Microheterogeneity**: one residue name per position, the one whose altloc atoms reach
//!   the highest occupancy (1EJG A22 PRO/SER, 3JQH A15 ARG/GLN/GLU).
//! * **MODRES / MSE and other `HETATM` residues**: polymer when listed by MODRES /
//!   `_pdbx_struct_mod_residue`, in the built-in table (`residue_names.rs`), or peptide-bonded
//!   to a neighbour; ligands after `TER`, waters and nucleotides are left out.
//! * **Missing CA**: the residue is skipped and reported with its line.

use super::record::{AtomRecord, ParsedAtoms, ResidueKey};
use super::residue_names::{is_nucleotide, is_water, modified_parent, standard_code};
use super::types::{Chain, Modification, ModificationSource, Residue, SkippedResidue};
use std::collections::HashMap;

/// The atom records at one residue position, in file order.
struct Site {
    key: ResidueKey,
    atoms: Vec<usize>,
}

/// How a residue position is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SiteClass {
    Polymer,
    /// A `HETATM` residue of unknown name: kept only when peptide-bonded to the chain.
    Candidate,
    Excluded,
}

/// A residue position resolved to one residue name, before the CA check.
struct ResolvedSite {
    key: ResidueKey,
    name: String,
    class: SiteClass,
    hetatm: bool,
    line: usize,
    n: Option<[f32; 3]>,
    ca: Option<[f32; 3]>,
    c: Option<[f32; 3]>,
    cb: Option<[f32; 3]>,
}

pub(super) fn assemble_chains(parsed: ParsedAtoms) -> (Vec<Chain>, Vec<SkippedResidue>) {
    let (sites, chain_order) = group_sites(&parsed.atoms);
    let mut by_chain: HashMap<String, Vec<ResolvedSite>> = HashMap::new();
    for site in &sites {
        let resolved = resolve_site(site, &parsed.atoms, &parsed.modres);
        if resolved.class != SiteClass::Excluded {
            by_chain.entry(site.key.0.clone()).or_default().push(resolved);
        }
    }
    let mut chains = Vec::new();
    let mut skipped = Vec::new();
    for id in chain_order {
        let Some(sites) = by_chain.remove(&id) else {
            continue;
        };
        let residues = build_chain_residues(sites, &parsed.modres, &mut skipped);
        if !residues.is_empty() {
            chains.push(Chain { id, residues });
        }
    }
    (chains, skipped)
}

/// Group atom records by (chain, number, insertion code) in order of first appearance;
/// waters are dropped here. Returns the sites and the chain names in file order.
fn group_sites(atoms: &[AtomRecord]) -> (Vec<Site>, Vec<String>) {
    let mut sites: Vec<Site> = Vec::new();
    let mut index: HashMap<ResidueKey, usize> = HashMap::new();
    let mut chain_order: Vec<String> = Vec::new();
    for (i, atom) in atoms.iter().enumerate() {
        if is_water(&atom.res_name) {
            continue;
        }
        let key = atom.key();
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            if !chain_order.contains(&key.0) {
                chain_order.push(key.0.clone());
            }
            sites.push(Site { key: key.clone(), atoms: Vec::new() });
            sites.len() - 1
        });
        sites[slot].atoms.push(i);
    }
    (sites, chain_order)
}

fn resolve_site(site: &Site, atoms: &[AtomRecord], modres: &HashMap<ResidueKey, String>) -> ResolvedSite {
    let records: Vec<&AtomRecord> = site.atoms.iter().map(|&i| &atoms[i]).collect();
    let name = choose_residue_name(&records).to_string();
    let own: Vec<&AtomRecord> = records.iter().copied().filter(|a| a.res_name == name).collect();
    let class = classify_site(&name, &own, modres.contains_key(&site.key));
    let atom = |atom_name: &str| pick_atom(&records, &name, atom_name);
    ResolvedSite {
        key: site.key.clone(),
        class,
        hetatm: own[0].hetatm,
        line: own[0].line,
        n: atom("N"),
        ca: atom("CA"),
        c: atom("C"),
        cb: atom("CB"),
        name,
    }
}

/// Microheterogeneity: the residue name whose altloc-labelled atoms reach the highest
/// occupancy (atoms without altloc are shared and do not discriminate); ties go to the name
/// seen first.
fn choose_residue_name<'a>(records: &[&'a AtomRecord]) -> &'a str {
    let mut names: Vec<(&str, f32, f32)> = Vec::new(); // (name, best altloc occ, best occ)
    for &atom in records {
        let alt_occ = if atom.has_alt_loc { atom.occupancy } else { f32::NEG_INFINITY };
        match names.iter_mut().find(|(n, _, _)| *n == atom.res_name) {
            Some(entry) => {
                entry.1 = entry.1.max(alt_occ);
                entry.2 = entry.2.max(atom.occupancy);
            }
            None => names.push((&atom.res_name, alt_occ, atom.occupancy)),
        }
    }
    let score = |&(_, alt, any): &(&str, f32, f32)| if alt.is_finite() { alt } else { any };
    let mut best = names[0];
    for entry in &names[1..] {
        if score(entry) > score(&best) {
            best = *entry;
        }
    }
    best.0
}

/// The coordinates of one atom of the chosen residue: its own records first, else a record
/// without altloc written under another name at the same position (shared backbone); among
/// those, the highest occupancy, ties to the first in the file.
fn pick_atom(records: &[&AtomRecord], res_name: &str, atom_name: &str) -> Option<[f32; 3]> {
    let best = |own: bool| {
        let mut found: Option<&AtomRecord> = None;
        for atom in records.iter().filter(|a| a.atom_name == atom_name) {
            let eligible = if own { atom.res_name == res_name } else { !atom.has_alt_loc };
            if eligible && found.is_none_or(|f| atom.occupancy > f.occupancy) {
                found = Some(atom);
            }
        }
        found.map(|a| a.xyz)
    };
    best(true).or_else(|| best(false))
}

fn classify_site(name: &str, own: &[&AtomRecord], in_modres: bool) -> SiteClass {
    let first = own[0];
    if is_nucleotide(name) {
        return SiteClass::Excluded;
    }
    if first.polymer == Some(true) || !first.hetatm {
        return SiteClass::Polymer;
    }
    if in_modres {
        return SiteClass::Polymer;
    }
    if own.iter().any(|a| a.after_ter) {
        return SiteClass::Excluded;
    }
    if modified_parent(name).is_some() {
        SiteClass::Polymer
    } else {
        SiteClass::Candidate
    }
}

/// Residues of one chain: candidates kept when peptide-bonded to a neighbour, residues
/// without CA reported, one-letter codes assigned.
fn build_chain_residues(
    sites: Vec<ResolvedSite>,
    modres: &HashMap<ResidueKey, String>,
    skipped: &mut Vec<SkippedResidue>,
) -> Vec<Residue> {
    let keep: Vec<bool> = (0..sites.len()).map(|i| keep_site(&sites, i)).collect();
    let mut residues = Vec::new();
    for (site, keep) in sites.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        let Some(ca) = site.ca else {
            skipped.push(SkippedResidue {
                chain: site.key.0.clone(),
                number: site.key.1,
                ins_code: site.key.2,
                name: site.name.clone(),
                line: site.line,
                reason: "no CA atom".to_string(),
            });
            continue;
        };
        let (one_letter, modification) = residue_code(&site.name, modres.get(&site.key));
        residues.push(Residue {
            number: site.key.1,
            ins_code: site.key.2,
            name: site.name,
            one_letter,
            hetatm: site.hetatm,
            modification,
            n: site.n,
            ca,
            c: site.c,
            cb: site.cb,
        });
    }
    residues
}

/// Polymer sites are kept; a candidate only when its N-CA-C backbone is peptide-bonded
/// (C–N < 2.0 Å; a peptide bond is 1.33 Å) to the previous or next site of the chain.
fn keep_site(sites: &[ResolvedSite], i: usize) -> bool {
    const PEPTIDE_BOND_MAX: f32 = 2.0;
    let site = &sites[i];
    match site.class {
        SiteClass::Polymer => true,
        SiteClass::Excluded => false,
        SiteClass::Candidate => {
            let (Some(n), Some(_), Some(c)) = (site.n, site.ca, site.c) else {
                return false;
            };
            let bonded_before =
                i.checked_sub(1).and_then(|p| sites[p].c).is_some_and(|prev_c| distance(prev_c, n) < PEPTIDE_BOND_MAX);
            let bonded_after =
                sites.get(i + 1).and_then(|s| s.n).is_some_and(|next_n| distance(c, next_n) < PEPTIDE_BOND_MAX);
            bonded_before || bonded_after
        }
    }
}

/// One-letter code and modification of a residue name: standard residues first, then the
/// file's own MODRES parent, then the built-in table, else `X`.
fn residue_code(name: &str, modres_parent: Option<&String>) -> (char, Option<Modification>) {
    if let Some(code) = standard_code(name) {
        return (code, None);
    }
    let from_file = modres_parent.and_then(|p| standard_code(p).map(|c| (c, p.clone(), ModificationSource::ModRes)));
    let from_table = || {
        modified_parent(name)
            .and_then(|p| standard_code(p).map(|c| (c, p.to_string(), ModificationSource::BuiltinTable)))
    };
    match from_file.or_else(from_table) {
        Some((code, parent, source)) => (code, Some(Modification { parent, source })),
        None => ('X', None),
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}
