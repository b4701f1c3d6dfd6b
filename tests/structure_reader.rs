//! Structure reader (PDB / mmCIF), virtual C-beta, contact labels and the contact dataset,
//! on the real files of ../shared/data (skipped visibly when absent) and on committed
//! excerpts of them (tests/fixtures/pdb, tests/fixtures/contacts).

mod common;

use qf_engine::data::contacts::{
    contact_labels, contact_map, evaluation_mask, ContactItem, ContactSet, CONTACT_CUTOFF, MIN_SEPARATION, UNKNOWN,
};
use qf_engine::data::structure::{
    parse_structure, parse_structure_spec, read_structure, read_structure_spec, virtual_cb, CbMode, ModificationSource,
    Structure, StructureFormat,
};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn read(path: &Path) -> Structure {
    read_structure(path, None).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn shared_pdb(name: &str) -> Option<PathBuf> {
    common::shared_data(&format!("pdb/{name}"))
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn labels_of(s: &Structure, chain: &str) -> Vec<String> {
    s.chain(chain).unwrap().residues.iter().map(|r| r.label()).collect()
}

/// Residues per chain counted as the shared README counts them: every polymer residue
/// position, including those skipped for having no CA.
fn positions_per_chain(s: &Structure) -> Vec<(String, usize)> {
    s.chains
        .iter()
        .map(|c| {
            let skipped = s.skipped.iter().filter(|k| k.chain == c.id).count();
            (c.id.clone(), c.len() + skipped)
        })
        .collect()
}

/// A PDB ATOM/HETATM line with the columns of the format description v3.3.
#[allow(clippy::too_many_arguments)]
fn atom_line(
    record: &str,
    serial: u32,
    name: &str,
    alt: char,
    res: &str,
    chain: char,
    seq: i32,
    xyz: [f32; 3],
    occ: f32,
) -> String {
    format!(
        "{record:<6}{serial:>5} {name:<4}{alt}{res:>3} {chain}{seq:>4}    {:>8.3}{:>8.3}{:>8.3}{occ:>6.2}{:>6.2}",
        xyz[0], xyz[1], xyz[2], 10.0
    )
}

fn parse_pdb_text(text: &str) -> anyhow::Result<Structure> {
    parse_structure(text.as_bytes(), "test.pdb", StructureFormat::Pdb, None)
}

// ---------------------------------------------------------------------------------------
// every shared file: chains and residue counts of the README
// ---------------------------------------------------------------------------------------

#[test]
fn shared_files_have_the_chains_and_residue_counts_of_the_readme() {
    let expected: &[(&str, &[(&str, usize)])] = &[
        ("1A8O.pdb.gz", &[("A", 70)]),
        ("1A8O.cif.gz", &[("A", 70)]),
        ("2sdf.pdb.gz", &[("A", 67)]),
        ("2BEG.cif.gz", &[("A", 26), ("B", 26), ("C", 26), ("D", 26), ("E", 26)]),
        ("pdb1ejg.pdb", &[("A", 46)]),
        ("3JQH.cif.gz", &[("A", 23)]),
        ("4ZHL.cif.gz", &[("U", 247), ("P", 10)]),
        ("1osm.pdb.gz", &[("A", 185)]),
        ("pdb3o21.pdb", &[("A", 374), ("B", 365), ("C", 375), ("D", 375)]),
        ("2XHE.pdb.gz", &[("A", 567), ("B", 220)]),
        ("pdb1ubi.pdb", &[("A", 76)]),
    ];
    let Some(dir) = common::shared_data("pdb") else {
        return;
    };
    let listed = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".md"))
        .count();
    assert_eq!(listed, expected.len(), "a structure file in {} is not covered", dir.display());
    for (file, chains) in expected {
        let s = read(&dir.join(file));
        let got = positions_per_chain(&s);
        let want: Vec<(String, usize)> = chains.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        assert_eq!(got, want, "{file}");
        for chain in &s.chains {
            assert_eq!(chain.sequence().len(), chain.len(), "{file}");
            assert!(chain.sequence().chars().all(|c| c.is_ascii_uppercase()), "{file}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// MODRES / HETATM MSE (1A8O, both formats)
// ---------------------------------------------------------------------------------------

fn check_1a8o_mse(s: &Structure, hetatm: bool) {
    let chain = s.chain("A").unwrap();
    for number in [151, 185, 214, 215] {
        let r = &chain.residues[chain.position(number, None).unwrap()];
        assert_eq!((r.name.as_str(), r.one_letter), ("MSE", 'M'), "A{number}");
        assert_eq!(r.hetatm, hetatm, "A{number}: HETATM in the PDB file, ATOM in mmCIF");
        let m = r.modification.as_ref().expect("MSE is a modified residue");
        assert_eq!((m.parent.as_str(), m.source), ("MET", ModificationSource::ModRes));
        assert!(r.cb.is_some() && r.n.is_some() && r.c.is_some());
    }
    assert_eq!(chain.residues[0].label(), "151", "the N-terminal MSE is kept");
    let modified = chain.residues.iter().filter(|r| r.modification.is_some()).count();
    assert_eq!(modified, 4);
    assert!(s.skipped.is_empty());
}

#[test]
fn mse_with_modres_is_kept_in_both_formats_of_1a8o() {
    let (Some(pdb), Some(cif)) = (shared_pdb("1A8O.pdb.gz"), shared_pdb("1A8O.cif.gz")) else {
        return;
    };
    let (p, c) = (read(&pdb), read(&cif));
    assert_eq!((p.format, c.format), (StructureFormat::Pdb, StructureFormat::Mmcif));
    check_1a8o_mse(&p, true);
    check_1a8o_mse(&c, false);
    let (sp, sc) = (p.chains[0].sequence(), c.chains[0].sequence());
    assert_eq!(sp, sc);
    // _entity_poly.pdbx_seq_one_letter_code_can of the mmCIF file
    assert_eq!(sp, "MDIRQGPKEPFRDYVDRFYKTLRAEQASQEVKNWMTETLLVQNANPDCKTILKALGPGATLEEMMTACQG");
    for (a, b) in p.chains[0].residues.iter().zip(&c.chains[0].residues) {
        let same = (a.label(), &a.name, a.one_letter, &a.modification, a.n, a.ca, a.c, a.cb)
            == (b.label(), &b.name, b.one_letter, &b.modification, b.n, b.ca, b.c, b.cb);
        assert!(same, "A{}: same residue and coordinates in both formats", a.label());
    }
}

#[test]
fn mse_excerpts_of_1a8o_match_between_pdb_and_gzipped_mmcif() {
    let p = read(&common::fixture("pdb/1A8O_excerpt.pdb"));
    let c = read(&common::fixture("pdb/1A8O_excerpt.cif.gz"));
    assert_eq!(c.format, StructureFormat::Mmcif, "gzip is detected by content");
    for s in [&p, &c] {
        let chain = s.chain("A").unwrap();
        assert_eq!(chain.sequence(), "MDIWMTEMMT", "{}", s.source);
        let numbers = labels_of(s, "A");
        let expected = ["151", "152", "153", "184", "185", "186", "213", "214", "215", "216"];
        assert_eq!(numbers, expected, "{}", s.source);
    }
    check_1a8o_mse(&p, true);
    check_1a8o_mse(&c, false);
    for (a, b) in p.chains[0].residues.iter().zip(&c.chains[0].residues) {
        assert_eq!((a.label(), a.ca, a.cb), (b.label(), b.ca, b.cb));
    }
}

// ---------------------------------------------------------------------------------------
// altlocs and microheterogeneity
// ---------------------------------------------------------------------------------------

fn check_1ejg_altlocs(s: &Structure) {
    let chain = s.chain("A").unwrap();
    let res = |n: i32| &chain.residues[chain.position(n, None).unwrap()];
    // A1 THR: N and CA have altlocs A and B at occupancy 0.50 each: the tie goes to A
    assert_eq!(res(1).n, Some([16.885, 14.078, 3.427]));
    assert_eq!(res(1).ca, [16.938, 12.834, 4.234]);
    // A22 PRO (altloc A, CG/CD at 0.57) / SER (B, C at 0.33): PRO, with the shared N
    assert_eq!((res(22).name.as_str(), res(22).one_letter), ("PRO", 'P'));
    assert_eq!(res(22).ca, [6.042, 13.429, -2.601]);
    assert_eq!(res(22).cb, Some([5.655, 14.896, -2.744]));
    assert_eq!(res(22).n, Some([4.915, 12.683, -3.102]));
    // A25 LEU (A, up to 0.57) / ILE (B, C at up to 0.33): LEU, CB of altloc A
    assert_eq!((res(25).name.as_str(), res(25).one_letter), ("LEU", 'L'));
    assert_eq!(res(25).cb, Some([2.209, 14.621, 0.512]));
    assert_eq!(res(25).ca, [3.048, 14.822, 1.781]);
}

#[test]
fn altlocs_and_microheterogeneity_of_1ejg() {
    let Some(path) = shared_pdb("pdb1ejg.pdb") else {
        return;
    };
    let s = read(&path);
    check_1ejg_altlocs(&s);
    // one residue per position: 48 residue records at 46 positions become 46 residues
    assert_eq!(s.chains[0].sequence(), "TTCCPSIVARSNFNVCRLPGTPEALCATYTGCIIIPGATCPGDYAN");
}

#[test]
fn altlocs_and_microheterogeneity_of_the_1ejg_excerpt() {
    let s = read(&common::fixture("pdb/pdb1ejg_excerpt.pdb"));
    check_1ejg_altlocs(&s);
    assert_eq!(s.chains[0].sequence(), "TTTPEALC");
}

#[test]
fn altlocs_and_microheterogeneity_of_3jqh_mmcif() {
    let Some(path) = shared_pdb("3JQH.cif.gz") else {
        return;
    };
    let s = read(&path);
    let chain = s.chain("A").unwrap();
    assert_eq!(chain.sequence(), "PEKSKLQEIYQELTRLKAAVGEL");
    let res = |n: i32| &chain.residues[chain.position(n, None).unwrap()];
    // A1: PRO altloc A 0.83 over SER altloc B 0.17
    assert_eq!((res(1).name.as_str(), res(1).ca), ("PRO", [3.746, 20.507, 21.289]));
    // A3 LYS: CA altlocs A and B both 0.50: the first (A)
    assert_eq!(res(3).ca, [7.680, 14.952, 23.094]);
    // A15: ARG (A, 0.50) over GLN (B, 0.33) and GLU (C, 0.17)
    assert_eq!((res(15).name.as_str(), res(15).one_letter), ("ARG", 'R'));
    assert_eq!(res(15).ca, [8.903, 14.440, 41.922]);
}

#[test]
fn the_highest_occupancy_altloc_wins_per_atom_and_per_residue_name() {
    let lines = [
        atom_line("ATOM", 1, " N", ' ', "MET", 'A', 1, [27.340, 24.430, 2.614], 1.0),
        atom_line("ATOM", 2, " CA", 'A', "MET", 'A', 1, [26.266, 25.413, 2.842], 0.4),
        atom_line("ATOM", 3, " CA", 'B', "MET", 'A', 1, [26.500, 25.600, 2.900], 0.6),
        atom_line("ATOM", 4, " C", ' ', "MET", 'A', 1, [26.913, 26.639, 3.531], 1.0),
        // microheterogeneity: SER first at 0.3, ALA second at 0.7 -> ALA
        atom_line("ATOM", 5, " N", ' ', "SER", 'A', 2, [26.335, 27.770, 3.258], 1.0),
        atom_line("ATOM", 6, " CA", 'A', "SER", 'A', 2, [26.850, 29.021, 3.898], 0.3),
        atom_line("ATOM", 7, " CB", 'A', "SER", 'A', 2, [27.900, 29.500, 3.000], 0.3),
        atom_line("ATOM", 8, " CA", 'B', "ALA", 'A', 2, [26.800, 29.100, 3.800], 0.7),
        atom_line("ATOM", 9, " CB", 'B', "ALA", 'A', 2, [27.700, 29.600, 2.900], 0.7),
        atom_line("ATOM", 10, " C", ' ', "SER", 'A', 2, [26.100, 29.253, 5.202], 1.0),
    ];
    let s = parse_pdb_text(&lines.join("\n")).unwrap();
    let r = &s.chains[0].residues;
    assert_eq!(r[0].ca, [26.5, 25.6, 2.9], "altloc B has the higher occupancy");
    assert_eq!((r[1].name.as_str(), r[1].one_letter), ("ALA", 'A'));
    assert_eq!(r[1].ca, [26.8, 29.1, 3.8]);
    assert_eq!(r[1].cb, Some([27.7, 29.6, 2.9]));
    assert_eq!(r[1].n, Some([26.335, 27.770, 3.258]), "shared atoms written under SER");
    assert_eq!(r[1].c, Some([26.100, 29.253, 5.202]));
}

// ---------------------------------------------------------------------------------------
// insertion codes, models, chains, gaps
// ---------------------------------------------------------------------------------------

fn window(labels: &[String], first: &str, count: usize) -> Vec<String> {
    let start = labels.iter().position(|l| l == first).unwrap();
    labels[start..start + count].to_vec()
}

#[test]
fn insertion_codes_stay_in_file_order_in_4zhl_and_1osm() {
    if let Some(path) = shared_pdb("4ZHL.cif.gz") {
        let s = read(&path);
        let u = labels_of(&s, "U");
        assert_eq!(window(&u, "37", 6), ["37", "37A", "37B", "37C", "37D", "38"]);
        assert_eq!(window(&u, "110", 6), ["110", "110A", "110B", "110C", "110D", "111"]);
        let with_code = s.chain("U").unwrap().residues.iter().filter(|r| r.ins_code.is_some());
        assert_eq!(with_code.count(), 19);
        assert_eq!(s.chain("U").unwrap().residues[22].one_letter, 'R', "U37A is ARG");
    }
    if let Some(path) = shared_pdb("1osm.pdb.gz") {
        let s = read(&path);
        let a = labels_of(&s, "A");
        let expected: Vec<String> = std::iter::once("163".to_string())
            .chain(('A'..='J').map(|c| format!("163{c}")))
            .chain(std::iter::once("164".to_string()))
            .collect();
        assert_eq!(window(&a, "163", 12), expected);
        assert_eq!(window(&a, "180", 3), ["180", "181", "181A"]);
        assert_eq!(a.last().unwrap(), "181A");
    }
}

#[test]
fn insertion_codes_of_the_1osm_excerpt() {
    let s = read(&common::fixture("pdb/1osm_excerpt.pdb"));
    let a = labels_of(&s, "A");
    assert_eq!(a.len(), 4 + 10 + 3);
    assert_eq!(&a[..4], ["161", "162", "163", "163A"]);
    assert_eq!(&a[12..], ["163J", "164", "180", "181", "181A"]);
    let r = &s.chains[0].residues[s.chains[0].position(163, Some('E')).unwrap()];
    assert_eq!((r.name.as_str(), r.ca), ("GLY", [0.687, -14.165, 50.93]));
}

#[test]
fn only_the_first_model_is_read_from_2sdf_and_2beg() {
    if let Some(path) = shared_pdb("2sdf.pdb.gz") {
        let s = read(&path);
        assert_eq!(s.models, 30);
        assert_eq!(positions_per_chain(&s), [("A".to_string(), 67)]);
        // model 1 CA of LYS A1 (model 2 has -12.722 -15.540 -23.031)
        assert_eq!(s.chains[0].residues[0].ca, [-8.811, -16.381, 15.886]);
    }
    if let Some(path) = shared_pdb("2BEG.cif.gz") {
        let s = read(&path);
        assert_eq!(s.models, 10);
        assert_eq!(s.chain_ids(), ["A", "B", "C", "D", "E"]);
        for chain in &s.chains {
            assert_eq!((chain.len(), chain.sequence().as_str()), (26, "LVFFAEDVGSNKGAIIGLMVGGVVIA"));
            assert_eq!(chain.residues[0].label(), "17", "residues 1-16 are unobserved");
        }
        // model 1 CA of LEU A17 (model 2 has -14.328 -4.433 -2.489)
        assert_eq!(s.chains[0].residues[0].ca, [-15.394, -4.793, -3.408]);
    }
}

#[test]
fn only_the_first_model_of_the_2sdf_excerpt() {
    let s = read(&common::fixture("pdb/2sdf_excerpt.pdb"));
    assert_eq!(s.models, 2);
    assert_eq!(s.chains[0].sequence(), "KPV");
    assert_eq!(s.chains[0].residues[0].ca, [-8.811, -16.381, 15.886]);
}

#[test]
fn several_chains_of_3o21_without_sugars_or_waters() {
    let Some(path) = shared_pdb("pdb3o21.pdb") else {
        return;
    };
    let s = read(&path);
    let lengths: Vec<usize> = s.chains.iter().map(|c| c.len()).collect();
    assert_eq!(s.chain_ids(), ["A", "B", "C", "D"]);
    assert_eq!(lengths, [374, 365, 375, 375]);
    assert!(s.skipped.is_empty());
    for chain in &s.chains {
        assert!(chain.residues.iter().all(|r| !r.hetatm && r.name != "NAG" && r.name != "HOH"));
        // MODRES ASN -> ASN (glycosylation sites): still a plain asparagine
        let r = &chain.residues[chain.position(238, None).unwrap()];
        assert_eq!((r.name.as_str(), r.one_letter, r.modification.is_none()), ("ASN", 'N', true));
    }
    let b = read_structure_spec(&format!("{}:B", path.display())).unwrap();
    assert_eq!((b.chain_ids(), b.chains[0].len()), (vec!["B"], 365));
}

#[test]
fn chain_breaks_of_2xhe_are_kept_and_the_residue_without_ca_is_reported() {
    let Some(path) = shared_pdb("2XHE.pdb.gz") else {
        return;
    };
    let s = read(&path);
    let a = labels_of(&s, "A");
    let b = labels_of(&s, "B");
    assert_eq!(window(&a, "509", 2), ["509", "561"]);
    assert_eq!(window(&b, "15", 2), ["15", "39"]);
    assert_eq!(window(&b, "192", 2), ["192", "210"]);
    assert_eq!(s.skipped.len(), 1);
    let k = &s.skipped[0];
    assert_eq!((k.chain.as_str(), k.number, k.name.as_str()), ("A", 617, "ALA"));
    assert_eq!(k.to_string(), "chain A residue 617 ALA (line 9692): no CA atom");
    assert_eq!(s.chain("A").unwrap().len(), 566);
}

#[test]
fn ubiquitin_excerpt_reads_whole_chain_without_waters() {
    let s = read(&common::fixture("pdb/pdb1ubi_trimmed.pdb"));
    assert_eq!(s.chain_ids(), ["A"]);
    assert_eq!(s.chains[0].sequence(), "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG");
    assert!(s.chains[0].residues.iter().all(|r| r.n.is_some() && r.c.is_some()));
    if let Some(path) = shared_pdb("pdb1ubi.pdb") {
        assert_eq!(read(&path).chains, s.chains, "the trimmed file reads like the original");
    }
}

#[test]
fn hetatm_residues_modified_unknown_ligand_and_missing_ca() {
    let text = std::fs::read_to_string(common::fixture("pdb/pdb1ubi_trimmed.pdb")).unwrap();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let seq = line.get(22..26).and_then(|s| s.trim().parse::<i32>().ok());
        let is_atom = line.starts_with("ATOM");
        if is_atom && seq == Some(2) {
            // GLN 2 written as an unknown HETATM residue "ZZZ", still peptide-bonded
            lines.push(format!("HETATM{}ZZZ{}", &line[6..17], &line[20..]));
        } else if is_atom && seq == Some(3) {
            // ILE 3 written as HETATM MSE without MODRES: the built-in table maps it to MET
            lines.push(format!("HETATM{}MSE{}", &line[6..17], &line[20..]));
        } else if is_atom && seq == Some(5) && &line[12..16] == " CA " {
            continue; // VAL 5 loses its CA
        } else if line.starts_with("TER") {
            lines.push(line.to_string());
            lines.push(atom_line("HETATM", 700, " C1", ' ', "NAG", 'A', 90, [1.0, 2.0, 3.0], 1.0));
        } else {
            lines.push(line.to_string());
        }
    }
    lines.insert(3, atom_line("HETATM", 699, "CA", ' ', "CA", 'A', 91, [5.0, 5.0, 5.0], 1.0));
    let s = parse_pdb_text(&lines.join("\n")).unwrap();
    let chain = &s.chains[0];
    assert_eq!(&chain.sequence()[..6], "MXMFKT", "Q2 -> X, I3 -> M, V5 skipped");
    assert_eq!(chain.len(), 75);
    let (zzz, mse) = (&chain.residues[1], &chain.residues[2]);
    assert_eq!((zzz.name.as_str(), zzz.hetatm, zzz.modification.is_none()), ("ZZZ", true, true));
    let m = mse.modification.as_ref().unwrap();
    assert_eq!((m.parent.as_str(), m.source), ("MET", ModificationSource::BuiltinTable));
    assert_eq!(s.skipped.len(), 1);
    assert_eq!((s.skipped[0].number, s.skipped[0].reason.as_str()), (5, "no CA atom"));
    assert!(chain.residues.iter().all(|r| r.name != "NAG" && r.name != "CA"), "ligands");
}

// ---------------------------------------------------------------------------------------
// chain selection and specs
// ---------------------------------------------------------------------------------------

#[test]
fn structure_specs_split_path_and_chain() {
    assert_eq!(parse_structure_spec("x/1abc.pdb:A"), (PathBuf::from("x/1abc.pdb"), Some("A".into())));
    assert_eq!(parse_structure_spec("1abc.cif.gz:AA1"), (PathBuf::from("1abc.cif.gz"), Some("AA1".into())));
    assert_eq!(parse_structure_spec("1abc.pdb"), (PathBuf::from("1abc.pdb"), None));
    assert_eq!(parse_structure_spec("C:/data/1abc.pdb"), (PathBuf::from("C:/data/1abc.pdb"), None));
    let path = common::fixture("pdb/1A8O_excerpt.pdb");
    let s = read_structure_spec(&format!("{}:A", path.display())).unwrap();
    assert_eq!(s.chain_ids(), ["A"]);
}

// ---------------------------------------------------------------------------------------
// malformed input: exact messages with file and line
// ---------------------------------------------------------------------------------------

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn error_of(path: &Path, chain: Option<&str>) -> String {
    format!("{:#}", read_structure(path, chain).expect_err("malformed input must fail"))
}

const GOOD_ATOM: &str = "ATOM      1  N   MET A   1      27.340  24.430   2.614  1.00  9.67           N";

#[test]
fn malformed_pdb_files_give_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = write_temp(
        &dir,
        "truncated.pdb",
        &format!("HEADER    TEST\n{GOOD_ATOM}\nATOM      2  CA  MET A   1      26.266  25.413\n"),
    );
    assert_eq!(
        error_of(&truncated, None),
        format!(
            "{}:3: ATOM record is truncated: 46 columns, but the x, y, z coordinates need columns 31-54",
            truncated.display()
        )
    );
    let bad_y = write_temp(
        &dir,
        "bad_y.pdb",
        &format!("{GOOD_ATOM}\nATOM      2  CA  MET A   1      26.266  25.4x3   2.842  1.00 10.38           C\n"),
    );
    assert_eq!(
        error_of(&bad_y, None),
        format!("{}:2: y coordinate '25.4x3' in columns 39-46 is not a number", bad_y.display())
    );
    let bad_number = write_temp(
        &dir,
        "bad_number.pdb",
        "ATOM      1  N   MET A   X      27.340  24.430   2.614  1.00  9.67           N\n",
    );
    assert_eq!(
        error_of(&bad_number, None),
        format!("{}:1: residue number 'X' in columns 23-26 is not an integer", bad_number.display())
    );
    let empty = write_temp(&dir, "empty.pdb", "");
    assert_eq!(error_of(&empty, None), format!("{}: the file is empty", empty.display()));
    let only_water = write_temp(
        &dir,
        "water.pdb",
        "HETATM    1  O   HOH A   1      27.340  24.430   2.614  1.00  9.67           O\n",
    );
    assert_eq!(
        error_of(&only_water, None),
        format!("{}: no protein residues with a CA atom in the first model", only_water.display())
    );
    let ubi = common::fixture("pdb/pdb1ubi_trimmed.pdb");
    assert_eq!(
        error_of(&ubi, Some("Z")),
        format!("{}: chain 'Z' not found (protein chains in the file: A)", ubi.display())
    );
    let missing = dir.path().join("missing.pdb");
    assert!(error_of(&missing, None).starts_with(&format!("cannot read structure file {}", missing.display())));
}

const CIF_HEADER: &str = "data_TEST
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_seq_id
_atom_site.auth_asym_id
_atom_site.auth_seq_id
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
";

#[test]
fn mmcif_is_read_by_column_names_with_quotes_and_placeholders() {
    let dir = tempfile::tempdir().unwrap();
    // columns in an unusual order, a quoted atom name, '?' occupancy (read as 1)
    let text = "data_X
# comment
_entry.id X
_struct.title
;A text field
over two lines
;
loop_
_atom_site.Cartn_z
_atom_site.auth_seq_id
_atom_site.label_comp_id
_atom_site.Cartn_y
_atom_site.label_atom_id
_atom_site.auth_asym_id
_atom_site.Cartn_x
_atom_site.occupancy
_atom_site.label_seq_id
3.0 5 GLY 2.0 N B 1.0 ? 1
3.5 5 GLY 2.5 \"CA\" B 1.5 ? 1
4.0 5 GLY 3.0 'C' B 2.0 1.0 1
4.0 6 HOH 3.0 O B 2.0 1.0 .
";
    let path = write_temp(&dir, "order.cif", text);
    let s = read_structure(&path, None).unwrap();
    assert_eq!((s.format, s.chain_ids(), s.chains[0].sequence()), (StructureFormat::Mmcif, vec!["B"], "G".into()));
    let r = &s.chains[0].residues[0];
    assert_eq!((r.number, r.ca, r.n, r.c), (5, [1.5, 2.5, 3.5], Some([1.0, 2.0, 3.0]), Some([2.0, 3.0, 4.0])));
}

#[test]
fn malformed_mmcif_files_give_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let row = |id: u32, atom: &str, x: &str| format!("ATOM {id} {atom} . GLY 1 A 1 {x} 2.0 3.0 1.00\n");
    let no_y = CIF_HEADER.replace("_atom_site.Cartn_y\n", "");
    let path = write_temp(&dir, "no_y.cif", &no_y);
    assert_eq!(
        error_of(&path, None),
        format!("{}:2: the _atom_site loop has no _atom_site.Cartn_y column", path.display())
    );
    // row 2 (line 16) lacks its occupancy: the row runs onto the next line
    let text =
        format!("{CIF_HEADER}{}{}{}", row(1, "N", "1.0"), "ATOM 2 CA . GLY 1 A 1 1.5 2.5 3.5\n", row(3, "C", "2.0"));
    let path = write_temp(&dir, "short_row.cif", &text);
    assert_eq!(
        error_of(&path, None),
        format!(
            "{}:16: row has 11 values, but the loop_ at line 2 has 12 columns (a value is missing)",
            path.display()
        )
    );
    let text = format!("{CIF_HEADER}{}ATOM 2 CA . GLY 1 A 1 1.5\n", row(1, "N", "1.0"));
    let path = write_temp(&dir, "truncated.cif", &text);
    assert_eq!(
        error_of(&path, None),
        format!(
            "{}:16: the last row has 9 values, but the loop_ at line 2 has 12 columns (a value is missing or the file is truncated)",
            path.display()
        )
    );
    let text = format!("{CIF_HEADER}{}", row(1, "N", "abc"));
    let path = write_temp(&dir, "bad_x.cif", &text);
    assert_eq!(error_of(&path, None), format!("{}:15: _atom_site.Cartn_x value 'abc' is not a number", path.display()));
    let text = format!("{CIF_HEADER}{}ATOM 2 'CA . GLY 1 A 1 1.5 2.5 3.5 1.0\n", row(1, "N", "1.0"));
    let path = write_temp(&dir, "quote.cif", &text);
    assert_eq!(
        error_of(&path, None),
        format!("{}:16: quoted value 'CA . GLY 1 A 1 1.5 2.5 3.5 1.0 is not closed on its line", path.display())
    );
    let path = write_temp(&dir, "no_atoms.cif", "data_X\n_entry.id X\n");
    assert_eq!(
        error_of(&path, None),
        format!("{}: no _atom_site category (no atomic coordinates) in the mmCIF file", path.display())
    );
}

// ---------------------------------------------------------------------------------------
// virtual C-beta
// ---------------------------------------------------------------------------------------

#[test]
fn virtual_cb_is_within_0_2_angstrom_of_the_experimental_cb_in_1ubi() {
    let s = read(&common::fixture("pdb/pdb1ubi_trimmed.pdb"));
    let mut deviations = Vec::new();
    for r in &s.chains[0].residues {
        if r.name == "GLY" {
            assert!(r.cb.is_none());
            continue;
        }
        let (virt, real) = (r.virtual_cb().unwrap(), r.cb.unwrap());
        deviations.push(dist(virt, real));
        assert_eq!(r.cb_position(CbMode::Virtual), Some(virt));
        assert_eq!(r.cb_position(CbMode::AtomOrVirtual), Some(real));
    }
    deviations.sort_by(f32::total_cmp);
    let n = deviations.len();
    let (max, p95) = (deviations[n - 1], deviations[n * 95 / 100]);
    let mean = deviations.iter().sum::<f32>() / n as f32;
    eprintln!("1UBI virtual vs experimental CB: {n} residues, mean {mean:.3}, 95th pct {p95:.3}, max {max:.3} A");
    assert_eq!(n, 76 - 6, "ubiquitin has 6 glycines");
    assert!(mean < 0.1, "mean deviation {mean}");
    assert!(p95 < 0.2, "95th percentile {p95}");
    // two side chains deviate more from ideal geometry: K33 (0.46 A) and E64 (0.29 A)
    assert!(deviations[n - 3] < 0.2 && max < 0.5, "max deviation {max}");
}

#[test]
fn virtual_cb_formula_on_an_ideal_backbone() {
    // b = CA - N = (1.458, 0, 0); c = C - CA = (0.5, 1.43, 0): a = b x c = (0, 0, 2.08494)
    let (n, ca, c) = ([0.0, 0.0, 0.0], [1.458, 0.0, 0.0], [1.958, 1.43, 0.0]);
    let cb = virtual_cb(n, ca, c);
    let expected = [0.56802827 * 1.458 - 0.54067466 * 0.5 + 1.458, -0.54067466 * 1.43, -0.58273431 * 1.458 * 1.43];
    for k in 0..3 {
        assert!((cb[k] as f64 - expected[k]).abs() < 1e-5, "{cb:?} vs {expected:?}");
    }
    // about 1.52 A from CA, like a real C-beta
    let ca_cb = dist(cb, ca);
    assert!((1.45..1.6).contains(&ca_cb), "CA-CB {ca_cb}");
}

// ---------------------------------------------------------------------------------------
// contact labels
// ---------------------------------------------------------------------------------------

#[test]
fn contact_map_is_symmetric_and_the_diagonal_band_is_masked() {
    let s = read(&common::fixture("pdb/pdb1ubi_trimmed.pdb"));
    let cb = s.chains[0].cb_coords(CbMode::Virtual);
    let labels = contact_labels(&cb, CONTACT_CUTOFF, MIN_SEPARATION);
    let l = labels.len;
    assert_eq!(l, 76);
    for i in 0..l {
        assert!(labels.is_contact(i, i), "distance 0 is below the cutoff");
        for j in 0..l {
            assert_eq!(labels.contacts[i * l + j], labels.contacts[j * l + i]);
            let should = dist(cb[i], cb[j]) < 8.0;
            assert_eq!(labels.is_contact(i, j), should);
            assert_eq!(labels.is_evaluated(i, j), i.abs_diff(j) >= 6, "({i}, {j})");
        }
    }
    let masked = labels.masked();
    assert!((0..l).all(|i| masked[i * l + i] == UNKNOWN && masked[i * l + (i + 5).min(l - 1)] == UNKNOWN));
    assert_eq!(contact_map(&cb, 8.0), labels.contacts);
    assert_eq!(evaluation_mask(&cb, 6), labels.evaluated);
    assert_eq!(labels.count_contacts(6), 142);
    assert_eq!(labels.count_contacts(24), 82);
}

#[test]
fn unknown_c_beta_makes_its_pairs_not_evaluated() {
    let mut cb: Vec<[f32; 3]> = (0..10).map(|i| [i as f32 * 3.8, 0.0, 0.0]).collect();
    cb[4] = [f32::NAN; 3];
    let labels = contact_labels(&cb, 8.0, 2);
    assert!(!labels.is_evaluated(4, 8) && !labels.is_evaluated(0, 4));
    assert!(labels.is_evaluated(0, 2) && labels.is_contact(0, 2));
    assert!(labels.is_evaluated(0, 3) && !labels.is_contact(0, 3), "11.4 A apart");
    assert!(!labels.is_contact(4, 4), "an unknown position is never a contact");
}

// ---------------------------------------------------------------------------------------
// the contact dataset
// ---------------------------------------------------------------------------------------

fn check_lysozyme_and_ubiquitin(set: &ContactSet) {
    let i = set.find("2VB1_A").expect("2VB1_A");
    assert_eq!(set.length(i), 129);
    assert_eq!(set.sequence(i).len(), 129);
    let cb = set.cb(i);
    assert!(matches!(cb, std::borrow::Cow::Borrowed(_)), "aligned data is not copied");
    // disulfides C6-C127, C30-C115, C64-C80, C76-C94
    let ss = [(6, 127, 3.47), (30, 115, 3.81), (64, 80, 3.94), (76, 94, 3.76)];
    for (a, b, d) in ss {
        assert_eq!((&set.sequence(i)[a - 1..a], &set.sequence(i)[b - 1..b]), ("C", "C"));
        let got = dist(cb[a - 1], cb[b - 1]);
        assert!((got - d).abs() < 0.005, "C{a}-C{b}: {got} vs {d}");
    }
    let labels = set.labels(i, CONTACT_CUTOFF, MIN_SEPARATION);
    assert_eq!((labels.count_contacts(6), labels.count_contacts(24)), (264, 134));
    let u = set.find("5NVG_A").expect("5NVG_A");
    let labels = set.labels(u, CONTACT_CUTOFF, MIN_SEPARATION);
    assert_eq!((labels.count_contacts(6), labels.count_contacts(24)), (145, 81));
    // strand 1-7 against 64-72: 21 CB pairs under 8 A, the closest 4.58 A
    let cb = set.cb(u);
    let pairs: Vec<f32> = (0..7)
        .flat_map(|a| (63..72).map(move |b| (a, b)))
        .map(|(a, b)| dist(cb[a], cb[b]))
        .filter(|&d| d < 8.0)
        .collect();
    assert_eq!(pairs.len(), 21);
    let closest = pairs.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!((closest - 4.58).abs() < 0.005, "{closest}");
    let item = set.item(u);
    assert_eq!((item.name.as_str(), item.len(), item.ca.len()), ("5NVG_A", 76, 76));
}

#[test]
fn dataset_fixture_has_the_readme_contacts() {
    let set = ContactSet::open_prefix(common::fixture("contacts/mini")).unwrap();
    assert_eq!((set.len(), set.residues()), (2, 205));
    assert_eq!((set.name(0), set.name(1)), ("2VB1_A", "5NVG_A"));
    check_lysozyme_and_ubiquitin(&set);
}

#[test]
fn shared_dataset_splits_open_and_have_the_readme_contacts() {
    let Some(dir) = common::shared_data("contacts") else {
        return;
    };
    let train = ContactSet::open(&dir, "train").unwrap();
    assert_eq!((train.len(), train.residues()), (17_562, 3_891_194));
    check_lysozyme_and_ubiquitin(&train);
    let valid = ContactSet::open(&dir, "valid").unwrap();
    assert_eq!((valid.len(), valid.residues()), (1_020, 229_498));
    // README: 497,342 contacts at |i-j| >= 6 and 333,557 at >= 24 over the valid split
    let (mut near, mut far) = (0, 0);
    for i in 0..valid.len() {
        let labels = valid.labels(i, CONTACT_CUTOFF, MIN_SEPARATION);
        near += labels.count_contacts(6);
        far += labels.count_contacts(24);
    }
    assert_eq!((near, far), (497_342, 333_557));
}

#[test]
fn a_pdb_chain_and_the_dataset_entry_of_ubiquitin_agree() {
    let s = read(&common::fixture("pdb/pdb1ubi_trimmed.pdb"));
    let pdb = ContactItem::from_chain(&s.chains[0], "1UBI_A", CbMode::Virtual);
    let set = ContactSet::open_prefix(common::fixture("contacts/mini")).unwrap();
    let db = set.item(set.find("5NVG_A").unwrap());
    assert_eq!(pdb.sequence, db.sequence);
    let (a, b) = (pdb.labels(8.0, 6), db.labels(8.0, 6));
    // two crystal structures of ubiquitin: nearly the same contacts
    let both = (0..76 * 76).filter(|&k| a.evaluated[k] == 1 && a.contacts[k] == 1 && b.contacts[k] == 1).count() / 2;
    let either =
        (0..76 * 76).filter(|&k| a.evaluated[k] == 1 && (a.contacts[k] == 1 || b.contacts[k] == 1)).count() / 2;
    let jaccard = both as f64 / either as f64;
    eprintln!("1UBI vs 5NVG_A contacts: {both} shared of {either} (Jaccard {jaccard:.3})");
    assert!(jaccard > 0.8, "Jaccard {jaccard}");
}

/// Write a dataset split by hand (for the error tests).
fn write_set(dir: &Path, fasta: &str, rows: usize, offsets: &[i64]) -> PathBuf {
    use safetensors::{tensor::TensorView, Dtype};
    let coords: Vec<u8> = (0..rows * 3).flat_map(|k| (k as f32).to_le_bytes()).collect();
    let offs: Vec<u8> = offsets.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("cb", TensorView::new(Dtype::F32, vec![rows, 3], &coords).unwrap()),
        ("ca", TensorView::new(Dtype::F32, vec![rows, 3], &coords).unwrap()),
        ("offsets", TensorView::new(Dtype::I64, vec![offsets.len()], &offs).unwrap()),
    ];
    let prefix = dir.join("split");
    safetensors::serialize_to_file(tensors, None, &dir.join("split.safetensors")).unwrap();
    std::fs::write(dir.join("split.fasta"), fasta).unwrap();
    prefix
}

#[test]
fn malformed_datasets_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |fasta: &str, rows: usize, offsets: &[i64]| {
        let prefix = write_set(dir.path(), fasta, rows, offsets);
        format!("{:#}", ContactSet::open_prefix(&prefix).expect_err("must fail"))
    };
    let fasta_path = dir.path().join("split.fasta").display().to_string();
    let tensors_path = dir.path().join("split.safetensors").display().to_string();
    assert_eq!(
        err(">A_1 len=3\nACD\n>B_1 len=3\nACE\n", 6, &[0, 4, 6]),
        format!("{fasta_path}:1: chain A_1 has 3 residues but rows 0..4 of {tensors_path} hold 4")
    );
    assert_eq!(
        err(">A_1 len=4\nACD\n", 3, &[0, 3]),
        format!("{fasta_path}:1: header says len=4 but the sequence of A_1 has 3 residues")
    );
    assert_eq!(
        err(">A_1 len=3\nACD\n>A_1 len=3\nACE\n", 6, &[0, 3, 6]),
        format!("{fasta_path}:3: chain name A_1 is used twice (first at line 1)")
    );
    assert_eq!(
        err(">A_1\nACD\n>B_1\nACE\n", 6, &[0, 4, 3]),
        format!("{tensors_path}: offsets are not monotone: offsets[2] = 3 < offsets[1] = 4")
    );
    assert_eq!(err(">A_1\nACD\n", 4, &[0, 3]), format!("{tensors_path}: the last offset is 3, but 'cb' has 4 rows"));
    assert_eq!(err(">A_1\nAC1\n", 3, &[0, 3]), format!("{fasta_path}:2: character '1' is not a residue letter"));
    let missing = format!("{:#}", ContactSet::open(dir.path().join("nope"), "valid").unwrap_err());
    assert!(missing.contains("does not exist"), "{missing}");
}

/// Found by `tests/fuzz_readers.rs`: a form feed (ASCII whitespace the tokenizer did not
/// skip) made the mmCIF tokenizer stand still forever.
#[test]
fn mmcif_with_a_form_feed_is_read_not_hung() {
    let gz = std::fs::read(common::fixture("pdb/1A8O_excerpt.cif.gz")).unwrap();
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let plain = parse_structure(&text, "x.cif", StructureFormat::Mmcif, None).unwrap();
    let at = text.iter().position(|&b| b == b'\n').unwrap();
    text.insert(at, 0x0C);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(parse_structure(&text, "x.cif", StructureFormat::Mmcif, None).map(|s| s.chains.len()))
    });
    let chains = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the mmCIF reader hung on a form feed");
    assert_eq!(chains.unwrap(), plain.chains.len());
}
