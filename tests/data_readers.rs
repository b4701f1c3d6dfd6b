//! Readers of the Pfam split CSV shards, Stockholm and FASTA: on the committed real
//! excerpt (`tests/fixtures/pfam`), on the real `../shared/data/pfam` when present, and
//! on broken files written to a temporary directory (each error names file and line).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use qf_engine::data::dataset::LabelledSet;
use qf_engine::data::fasta::{read_fasta, write_fasta, FastaLabels};
use qf_engine::data::pfam::{read_pfam_shards, read_pfam_split, PFAM_HEADER};
use qf_engine::data::stockholm::read_stockholm;

/// Rows of the fixture CSVs parsed naively (name → (family, accession, sequence)), as an
/// independent reference for the reader.
fn naive_rows(split_dir: &Path) -> Vec<(String, String, String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(split_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines().skip(1) {
            let v: Vec<&str> = line.split(',').collect();
            rows.push((v[1].to_string(), v[0].to_string(), v[2].to_string(), v[4].to_string()));
        }
    }
    rows
}

fn fixture_split() -> PathBuf {
    common::fixture("pfam/split")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn gzip_copy(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(dst).unwrap(), flate2::Compression::default());
    enc.write_all(&bytes).unwrap();
    enc.finish().unwrap();
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error, the input was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

fn count_of(set: &LabelledSet, family: &str) -> usize {
    let f = set.family_index(family).unwrap_or_else(|| panic!("family {family} missing"));
    set.family_counts()[f as usize]
}

// ---------------------------------------------------------------- Pfam CSV, fixture

#[test]
fn fixture_train_split_matches_a_naive_parse_row_by_row() {
    let set = read_pfam_split(&fixture_split(), "train").unwrap();
    let naive = naive_rows(&fixture_split().join("train"));
    assert_eq!(set.len(), 26);
    assert_eq!(naive.len(), 26);
    for (i, (name, family, accession, sequence)) in naive.iter().enumerate() {
        assert_eq!(set.name(i), name);
        assert_eq!(set.sequence(i), sequence);
        let f = set.family(i).unwrap();
        assert_eq!(&f.id, family);
        assert_eq!(f.accession.as_deref(), Some(accession.as_str()));
    }
    assert_eq!(set.families().len(), 7);
    assert_eq!(count_of(&set, "ABC_tran"), 8);
    assert_eq!(count_of(&set, "GTP_EFTU"), 6);
    assert_eq!(count_of(&set, "ACR_tran"), 1);
    let long = set.name_lookup()["Q8G2M6/1-1026"];
    assert_eq!(set.seq_len(long), 1026);
    assert_eq!(set.token_lengths()[long], 1028);
}

#[test]
fn fixture_dev_split_reads() {
    let dev = read_pfam_split(&fixture_split(), "dev").unwrap();
    assert_eq!(dev.len(), 6);
    assert_eq!(dev.families().len(), 4);
    assert_eq!(count_of(&dev, "PK_Tyr_Ser-Thr"), 2);
    let row = dev.name_lookup()["Q9LZW4/22-273"];
    assert_eq!(dev.seq_len(row), 252);
}

// ---------------------------------------------------------------- Pfam CSV, real data

#[test]
fn real_train_split_has_the_readme_counts() {
    let Some(dir) = common::shared_data("pfam") else {
        return;
    };
    let set = read_pfam_split(&dir, "train").unwrap();
    assert_eq!(set.len(), 197_667);
    assert_eq!(set.families().len(), 2_188);
    assert_eq!(set.total_residues(), 33_045_066);
    // First row of shard 0 and last row of shard 8.
    assert_eq!(set.name(0), "Q9RR60/137-422");
    assert_eq!(set.family(0).unwrap().id, "Enolase_C");
    assert_eq!(set.family(0).unwrap().accession.as_deref(), Some("PF00113.25"));
    assert_eq!(set.seq_len(0), 286);
    assert!(set.sequence(0).starts_with("AKTLPVPMMNVINGGAHADN"));
    let last = set.len() - 1;
    assert_eq!(set.name(last), "Q652Q8/23-327");
    assert_eq!(set.family(last).unwrap().id, "IU_nuc_hydro");
    assert_eq!(set.seq_len(last), 305);
    assert_eq!(count_of(&set, "ABC_tran"), 1_951);
    let lengths = set.residue_lengths();
    assert_eq!(lengths.iter().min(), Some(&12));
    assert_eq!(lengths.iter().max(), Some(&1_271));
    // X, Z, U and B occur; all are letters and are kept (and counted).
    assert_eq!(set.nonstandard_residues(), 483);
}

#[test]
fn real_dev_split_has_the_readme_counts() {
    let Some(dir) = common::shared_data("pfam") else {
        return;
    };
    let dev = read_pfam_split(&dir, "dev").unwrap();
    assert_eq!(dev.len(), 24_943);
    assert_eq!(dev.families().len(), 1_941);
    assert!(dev.family_counts().iter().all(|&c| c >= 1));
}

// ---------------------------------------------------------------- Pfam CSV, broken input

const GOOD_ROW: &str = "Fam_A,P1/1-8,PF00001.1,mk.VLAAG,MKVLAAG";

fn split_with(rows_per_shard: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let n = rows_per_shard.len();
    for (k, body) in rows_per_shard.iter().enumerate() {
        write(&tmp.path().join(format!("train/data-{k:05}-of-{n:05}")), body);
    }
    tmp
}

#[test]
fn missing_split_dir_and_missing_shards_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("train: split directory not found"), "{e}");

    std::fs::create_dir(tmp.path().join("train")).unwrap();
    write(&tmp.path().join("train/README.md"), "not a shard");
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("no shards named data-NNNNN-of-MMMMM"), "{e}");

    write(&tmp.path().join("train/data-00000-of-00003"), &format!("{PFAM_HEADER}\n{GOOD_ROW}\n"));
    write(&tmp.path().join("train/data-00002-of-00003"), &format!("{PFAM_HEADER}\n"));
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("shard data-00001-of-00003 is missing (2 of 3 shards present)"), "{e}");
}

#[test]
fn header_problems_name_the_missing_column() {
    let tmp = split_with(&["family_id,sequence_name,family_accession,aligned_sequence\nA,b,c,d\n"]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001:1: header lacks column `sequence`"), "{e}");

    let tmp = split_with(&[&format!("{GOOD_ROW}\n")]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001:1: no header: expected `family_id,sequence_name"), "{e}");
}

#[test]
fn empty_file_is_reported() {
    let tmp = split_with(&[""]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001: file is empty"), "{e}");

    let tmp = split_with(&[&format!("{PFAM_HEADER}\n")]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("the split has no rows"), "{e}");
}

#[test]
fn ragged_row_names_file_line_and_field_counts() {
    let body = format!("{PFAM_HEADER}\n{GOOD_ROW}\nFam_A,P2/1-8,PF00001.1,MKVLAAG\n");
    let tmp = split_with(&[&body]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001:3: row has 4 fields, the header has 5"), "{e}");
}

#[test]
fn bad_letters_empty_fields_and_duplicates_are_located() {
    let body = format!("{PFAM_HEADER}\n{GOOD_ROW}\n\nFam_A,P3/1-8,PF00001.1,MKVL1AG,MKVL1AG\n");
    let tmp = split_with(&[&body]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001:4: column `sequence`: invalid residue '1' at position 5"), "{e}");

    let tmp = split_with(&[&format!("{PFAM_HEADER}\nFam_A,P1/1-8,PF00001.1,MKV-LAAG,MKV-LAAG\n")]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains(":2: column `sequence`: invalid residue '-' at position 4"), "{e}");

    let tmp = split_with(&[&format!("{PFAM_HEADER}\nFam_A,P1/1-8,PF00001.1,mk,\n")]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00000-of-00001:2: empty sequence"), "{e}");

    let tmp = split_with(&[&format!("{PFAM_HEADER}\n,P1/1-8,PF00001.1,mk,MK\n")]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains(":2: empty family_id"), "{e}");

    let shard0 = format!("{PFAM_HEADER}\n{GOOD_ROW}\n");
    let shard1 = format!("{PFAM_HEADER}\nFam_B,P9/1-3,PF00002.1,MKV,MKV\n{GOOD_ROW}\n");
    let tmp = split_with(&[&shard0, &shard1]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains("data-00001-of-00002:3: duplicate sequence_name `P1/1-8` (first at "), "{e}");
    assert!(e.contains("data-00000-of-00002:2)"), "{e}");

    let body = format!("{PFAM_HEADER}\n{GOOD_ROW}\nFam_A,P2/1-3,PF00001.2,MKV,MKV\n");
    let tmp = split_with(&[&body]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains(":3: family `Fam_A` has family_accession `PF00001.2` here but `PF00001.1`"), "{e}");
}

#[test]
fn lines_are_counted_across_parallel_chunks() {
    // ~6 MB: more than one 4 MiB chunk, so the error line is computed across chunks.
    let mut body = String::from(PFAM_HEADER);
    body.push('\n');
    let seq = "MKVLAAGLLLAAGSSA".repeat(8);
    let rows = 45_000;
    for i in 0..rows {
        body.push_str(&format!("Fam_{},Q{i}/1-128,PF{:05}.1,{seq},{seq}\n", i % 7, i % 7));
    }
    let tmp = split_with(&[&body]);
    let set = read_pfam_split(tmp.path(), "train").unwrap();
    assert_eq!(set.len(), rows);
    assert_eq!(set.name(rows - 1), format!("Q{}/1-128", rows - 1));
    assert_eq!(set.families().len(), 7);
    assert_eq!(set.family(rows - 1).unwrap().id, format!("Fam_{}", (rows - 1) % 7));

    body.push_str("Fam_0,Q1/1-128,PF00000.1,MKVL,MKVL\n"); // duplicate of line 3
    body.push_str("Fam_0,Qz/1-4,PF00000.1,MK*L,MK*L\n");
    let tmp = split_with(&[&body]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains(&format!(":{}: column `sequence`: invalid residue '*'", rows + 3)), "{e}");

    body.truncate(body.len() - "Fam_0,Qz/1-4,PF00000.1,MK*L,MK*L\n".len());
    let tmp = split_with(&[&body]);
    let e = err_text(read_pfam_split(tmp.path(), "train"));
    assert!(e.contains(&format!(":{}: duplicate sequence_name `Q1/1-128`", rows + 2)), "{e}");
    assert!(e.contains("data-00000-of-00001:3)"), "{e}");
}

#[test]
fn crlf_lowercase_and_reordered_columns_are_accepted() {
    let body =
        "sequence,family_id,sequence_name,family_accession\r\nmkvL,Fam_A,P1/1-4,PF00001.1\r\nXBZU,Fam_B,P2/1-4,\r\n";
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("any_name.csv");
    write(&path, body);
    let set = read_pfam_shards(&[path]).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.sequence(0), "MKVL");
    assert_eq!(set.name(1), "P2/1-4");
    assert_eq!(set.family(1).unwrap().accession, None);
    assert_eq!(set.nonstandard_residues(), 4);
}

// ---------------------------------------------------------------- Stockholm

fn check_seed_fixture(set: &LabelledSet) {
    let train = read_pfam_split(&fixture_split(), "train").unwrap();
    let by_name = train.name_lookup();
    assert_eq!(set.len(), 14);
    assert_eq!(set.families().len(), 2);
    assert_eq!(set.families()[0].id, "ABC_tran");
    assert_eq!(set.families()[0].accession.as_deref(), Some("PF00005.30"));
    assert_eq!(set.family_counts(), vec![8, 6]);
    for i in 0..set.len() {
        let t = by_name[set.name(i)];
        assert_eq!(set.sequence(i), train.sequence(t), "{}", set.name(i));
        assert_eq!(set.family(i).unwrap().id, train.family(t).unwrap().id);
    }
}

#[test]
fn stockholm_fixture_joins_blocks_and_removes_gaps() {
    check_seed_fixture(&read_stockholm(&common::fixture("pfam/seed.sto")).unwrap());
}

#[test]
fn stockholm_gzip_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let gz = tmp.path().join("Pfam-A.seed.gz");
    gzip_copy(&common::fixture("pfam/seed.sto"), &gz);
    check_seed_fixture(&read_stockholm(&gz).unwrap());
}

#[test]
fn stockholm_errors_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.sto");
    let cases: [(&str, &str); 7] = [
        ("# STOCKHOLM 1.0\na/1-3 MKV\n//\n", "x.sto:3: record starting at line 1 has no `#=GF ID` line"),
        (
            "#=GF ID F\na/1-3 MKV\nb/1-2 MK\n//\n",
            "x.sto:4: family `F`: aligned rows differ in length (`a/1-3` has 3 columns, `b/1-2` has 2",
        ),
        ("#=GF ID F\na/1-3 MK1\n//\n", "x.sto:2: sequence `a/1-3`: invalid character '1' at column 3"),
        ("#=GF ID F\na/1-3 MKV\n", "x.sto:2: file ends inside the record starting at line 1 (missing `//`)"),
        ("#=GF ID F\na/1-3 MK\na/1-3 V\n//\n", "x.sto:3: `a/1-3` appears twice in one alignment block"),
        (
            "#=GF ID F\na/1-3 MKV\n//\n#=GF ID G\na/1-3 MKV\n//\n",
            "x.sto:5: duplicate sequence name `a/1-3` (also in family `F` at line 2)",
        ),
        ("", "x.sto: no Stockholm records"),
    ];
    for (text, expected) in cases {
        write(&p, text);
        let e = err_text(read_stockholm(&p));
        assert!(e.contains(expected), "for {text:?}: {e}");
    }
    write(&p, "#=GF ID F\na/1-3 ...\nb/1-3 MKV\n//\n");
    let e = err_text(read_stockholm(&p));
    assert!(e.contains("x.sto:2: row `a/1-3` of family `F` is all gaps"), "{e}");
}

// ---------------------------------------------------------------- FASTA

fn check_fasta_fixture(set: &LabelledSet) {
    let dev = read_pfam_split(&fixture_split(), "dev").unwrap();
    let train = read_pfam_split(&fixture_split(), "train").unwrap();
    let (dev_names, train_names) = (dev.name_lookup(), train.name_lookup());
    assert_eq!(set.len(), 7);
    for i in 0..set.len() {
        let (src, r) = match dev_names.get(set.name(i)) {
            Some(&r) => (&dev, r),
            None => (&train, train_names[set.name(i)]),
        };
        assert_eq!(set.sequence(i), src.sequence(r));
        if set.is_labelled() {
            assert_eq!(set.family(i).unwrap().id, src.family(r).unwrap().id);
        }
    }
}

#[test]
fn fasta_labels_from_header_tsv_or_none() {
    let fasta = common::fixture("pfam/sample.fasta");
    let from_header = read_fasta(&fasta, &FastaLabels::Header).unwrap();
    check_fasta_fixture(&from_header);
    assert_eq!(from_header.families().len(), 5);
    let tsv = common::fixture("pfam/sample_labels.tsv");
    let from_tsv = read_fasta(&fasta, &FastaLabels::Tsv(tsv)).unwrap();
    check_fasta_fixture(&from_tsv);
    assert_eq!(from_tsv, from_header);
    let unlabelled = read_fasta(&fasta, &FastaLabels::None).unwrap();
    check_fasta_fixture(&unlabelled);
    assert!(!unlabelled.is_labelled());
    assert_eq!(unlabelled.family_of(0), None);
}

#[test]
fn fasta_gzip_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let gz = tmp.path().join("sample.fasta.gz");
    gzip_copy(&common::fixture("pfam/sample.fasta"), &gz);
    let set = read_fasta(&gz, &FastaLabels::Header).unwrap();
    check_fasta_fixture(&set);
    let mut out = Vec::new();
    write_fasta(&set, &mut out).unwrap();
    let again = tmp.path().join("again.fa");
    std::fs::write(&again, out).unwrap();
    assert_eq!(read_fasta(&again, &FastaLabels::Header).unwrap(), set);
}

#[test]
fn fasta_errors_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.fasta");
    let cases: [(&str, FastaLabels, &str); 8] = [
        ("MKV\n>a\nMKV\n", FastaLabels::None, "x.fasta:1: sequence data before the first `>` header"),
        (">a\n>b\nMKV\n", FastaLabels::None, "x.fasta:1: record `a` has no sequence"),
        (">a\nMKV\n>b\nMK\n>a\nMKV\n", FastaLabels::None, "x.fasta:5: duplicate sequence name `a` (first at line 1)"),
        (">a\nMKV\n", FastaLabels::Header, "x.fasta:1: header of `a` has no label (expected `>name label`)"),
        (">a L\nMKVLAA\nGG1\n", FastaLabels::Header, "x.fasta:3: sequence `a`: invalid residue '1' at position 9"),
        (">a L\nMK*\nVL\n", FastaLabels::Header, "x.fasta:2: sequence `a`: invalid residue '*' at position 3"),
        ("\n\n", FastaLabels::None, "x.fasta: no FASTA records"),
        (">\nMKV\n", FastaLabels::None, "x.fasta:1: header has no sequence name"),
    ];
    for (text, labels, expected) in cases {
        write(&p, text);
        let e = err_text(read_fasta(&p, &labels));
        assert!(e.contains(expected), "for {text:?}: {e}");
    }
    // A stop '*' ending a record is dropped; lower case is upper-cased.
    write(&p, ">a L\nmkv\nLA*\n>b L\nGG\n");
    let set = read_fasta(&p, &FastaLabels::Header).unwrap();
    assert_eq!(set.sequence(0), "MKVLA");

    let tsv = tmp.path().join("labels.tsv");
    write(&tsv, "a\tL1\n");
    write(&p, ">a\nMKV\n>b\nMK\n");
    let e = err_text(read_fasta(&p, &FastaLabels::Tsv(tsv.clone())));
    assert!(e.contains("x.fasta:3: no label for sequence `b` in ") && e.contains("labels.tsv"), "{e}");
    write(&tsv, "a\tL1\nb L2\n");
    let e = err_text(read_fasta(&p, &FastaLabels::Tsv(tsv.clone())));
    assert!(e.contains("labels.tsv:2: expected `name<TAB>label`"), "{e}");
    write(&tsv, "a\tL1\na\tL2\n");
    let e = err_text(read_fasta(&p, &FastaLabels::Tsv(tsv)));
    assert!(e.contains("labels.tsv:2: `a` is labelled `L2` here but `L1` at line 1"), "{e}");
}

#[test]
fn names_map_back_to_rows() {
    let set = read_fasta(&common::fixture("pfam/sample.fasta"), &FastaLabels::Header).unwrap();
    let lookup: HashMap<&str, usize> = set.name_lookup();
    for i in 0..set.len() {
        assert_eq!(lookup[set.name(i)], i);
    }
}
