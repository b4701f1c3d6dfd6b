//! Which families become classes, and which training rows represent them.
//!
//! Families of the training set are ranked by size (rows, descending; ties broken by
//! family id in byte order, so the ranking is deterministic). A [`StratifySpec`] cuts the
//! ranking into tiers, each taking the next `N` families with at most `M` rows each —
//! QuantaFold's setting is `"1000x200,4000x50"`: the 1,000 largest families with up to
//! 200 sequences each, then the next 4,000 with up to 50 (Pfam seed random split,
//! Bileschi et al.; QuantaFold paper in `../seeds/000_*.txt`). Other forms: `all`,
//! `top:N` (or just `N`: the N largest, every row), and `rest` as the family count of the
//! last tier (`1000x200,restx50`).
//!
//! Capped families keep a uniform random subset of their rows, drawn with
//! [`Rng`] seeded from `(seed, FNV-1a(family id))`, so a family's sample does not depend
//! on other families or on the spec. Class index = rank (0 = largest family); the
//! [`LabelMap`] keeps the class names and the tier of each class for per-tier metrics.
//!
//! [`map_split`] puts another split (dev/test) onto the label map and reports every row
//! it drops and every family it does not know, never dropping silently.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::dataset::LabelledSet;
use crate::data::rng::{fnv1a64, Rng};

/// QuantaFold's two-tier selection (1,000 families × ≤ 200 rows, next 4,000 × ≤ 50).
pub const QUANTAFOLD_SPEC: &str = "1000x200,4000x50";

/// One tier: the next `families` families by size (`None`: all remaining), each with at
/// most `max_per_family` rows (`None`: all rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub families: Option<usize>,
    pub max_per_family: Option<usize>,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.families {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "rest")?,
        }
        if let Some(m) = self.max_per_family {
            write!(f, "x{m}")?;
        }
        Ok(())
    }
}

/// A family selection: tiers taken in order down the size ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StratifySpec {
    pub tiers: Vec<Tier>,
}

impl StratifySpec {
    /// Every family, every row.
    pub fn all() -> Self {
        StratifySpec { tiers: vec![Tier { families: None, max_per_family: None }] }
    }

    /// The `n` largest families, every row.
    pub fn top(n: usize) -> Self {
        StratifySpec { tiers: vec![Tier { families: Some(n), max_per_family: None }] }
    }
}

impl fmt::Display for StratifySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == StratifySpec::all() {
            return write!(f, "all");
        }
        let parts: Vec<String> = self.tiers.iter().map(Tier::to_string).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for StratifySpec {
    type Err = anyhow::Error;

    /// `all` | `top:N` | `N` | tiers `NxM,NxM,…` (`N` may be `rest` in the last tier).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "all" {
            return Ok(StratifySpec::all());
        }
        if let Some(n) = s.strip_prefix("top:") {
            return Ok(StratifySpec::top(parse_count(n, s)?));
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut tiers = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let tier = parse_tier(part, s)?;
            if tier.families.is_none() && i + 1 != parts.len() {
                bail!("family selection `{s}`: `rest` can only be the last tier");
            }
            tiers.push(tier);
        }
        Ok(StratifySpec { tiers })
    }
}

fn parse_tier(part: &str, whole: &str) -> Result<Tier> {
    let (count, cap) = match part.split_once(['x', 'X']) {
        Some((c, m)) => (c.trim(), Some(m.trim())),
        None => (part, None),
    };
    let families = if count == "rest" { None } else { Some(parse_count(count, whole)?) };
    let max_per_family = cap.map(|m| parse_count(m, whole)).transpose()?;
    Ok(Tier { families, max_per_family })
}

fn parse_count(text: &str, whole: &str) -> Result<usize> {
    let n: usize = text.trim().parse().map_err(|_| {
        anyhow!(
            "family selection `{whole}`: `{text}` is not a positive number (expected `all`, \
             `top:N`, or tiers like `{QUANTAFOLD_SPEC}`)"
        )
    })?;
    if n == 0 {
        bail!("family selection `{whole}`: counts must be at least 1");
    }
    Ok(n)
}

/// A family of the training set and its row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankedFamily {
    pub family: u32,
    pub count: usize,
}

/// Families with at least one row, largest first, ties by family id.
pub fn rank_families(set: &LabelledSet) -> Result<Vec<RankedFamily>> {
    if !set.is_labelled() {
        bail!("cannot rank families of an unlabelled set");
    }
    let families = set.families();
    let mut ranked: Vec<RankedFamily> = set
        .family_counts()
        .into_iter()
        .enumerate()
        .filter(|&(_, count)| count > 0)
        .map(|(f, count)| RankedFamily { family: f as u32, count })
        .collect();
    ranked.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| families[a.family as usize].id.cmp(&families[b.family as usize].id))
    });
    Ok(ranked)
}

/// The ranks (a range into the ranking) that each tier of `spec` takes.
pub fn tier_ranges(n_ranked: usize, spec: &StratifySpec) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    spec.tiers
        .iter()
        .map(|t| {
            let end = t.families.map_or(n_ranked, |n| (start + n).min(n_ranked));
            let range = start..end;
            start = end;
            range
        })
        .collect()
}

/// Class names (family ids) by class index, with the tier each class came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMap {
    /// Family id of each class; class index = position.
    pub classes: Vec<String>,
    /// Family accession of each class, when the data had one.
    pub accessions: Vec<Option<String>>,
    /// Tier (0-based, in spec order) of each class.
    pub tier_of_class: Vec<u32>,
    /// The selection that produced this map, e.g. `1000x200,4000x50`.
    pub spec: String,
    /// Training rows selected per class (for per-family-size evaluation).
    #[serde(default)]
    pub train_counts: Vec<usize>,
}

impl LabelMap {
    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    /// Family id → class index.
    pub fn lookup(&self) -> HashMap<&str, u32> {
        self.classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect()
    }

    /// Class index of a family id.
    pub fn class_of(&self, family_id: &str) -> Option<u32> {
        self.classes.iter().position(|c| c == family_id).map(|i| i as u32)
    }
}

/// What one tier of the selection holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierSummary {
    /// The tier as written in the spec, e.g. `4000x50`.
    pub tier: String,
    /// Families asked for (`None`: all remaining).
    pub families_requested: Option<usize>,
    /// Families that exist for this tier (fewer than requested when the data runs out).
    pub families: usize,
    /// Rows of those families before capping.
    pub rows_available: usize,
    /// Rows kept after capping.
    pub rows_selected: usize,
    /// Row count of the tier's largest and smallest family (0 when the tier is empty).
    pub largest_family: usize,
    pub smallest_family: usize,
}

/// The training selection: label map, chosen rows and their classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Stratified {
    pub label_map: LabelMap,
    /// Chosen rows of the training set, ascending.
    pub rows: Vec<usize>,
    /// Class of each chosen row (parallel to `rows`).
    pub labels: Vec<u32>,
    pub tiers: Vec<TierSummary>,
    /// Training families (and their rows) left out by the spec.
    pub unselected_families: usize,
    pub unselected_rows: usize,
}

impl Stratified {
    /// Chosen rows per class.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.label_map.n_classes())
    }

    /// Class of every training-set row (`None` for rows not chosen), for `pack`.
    pub fn labels_by_row(&self, n_rows: usize) -> Vec<Option<u32>> {
        labels_by_row(&self.rows, &self.labels, n_rows)
    }
}

impl fmt::Display for Stratified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "selection {}: {} classes, {} rows",
            self.label_map.spec,
            self.label_map.n_classes(),
            self.rows.len()
        )?;
        writeln!(
            f,
            "{:<10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}",
            "tier", "asked", "families", "rows avail", "rows kept", "largest", "smallest"
        )?;
        for t in &self.tiers {
            let asked = t.families_requested.map_or("rest".to_string(), |n| n.to_string());
            writeln!(
                f,
                "{:<10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}",
                t.tier, asked, t.families, t.rows_available, t.rows_selected, t.largest_family, t.smallest_family
            )?;
        }
        write!(f, "left out: {} families, {} rows", self.unselected_families, self.unselected_rows)
    }
}

/// Rows per class for a label column.
pub fn class_counts(labels: &[u32], n_classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; n_classes];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    counts
}

/// Spread `(rows, labels)` into a per-row lookup of length `n_rows`.
pub fn labels_by_row(rows: &[usize], labels: &[u32], n_rows: usize) -> Vec<Option<u32>> {
    let mut out = vec![None; n_rows];
    for (&r, &l) in rows.iter().zip(labels) {
        if let Some(slot) = out.get_mut(r) {
            *slot = Some(l);
        }
    }
    out
}

/// Select families and rows of `train` according to `spec`; deterministic for a `seed`.
pub fn stratify(train: &LabelledSet, spec: &StratifySpec, seed: u64) -> Result<Stratified> {
    if spec.tiers.is_empty() {
        bail!("family selection is empty");
    }
    let ranked = rank_families(train)?;
    let ranges = tier_ranges(ranked.len(), spec);
    let rows_of_family = rows_by_family(train);
    let families = train.families();
    let mut label_map = LabelMap {
        classes: Vec::new(),
        accessions: Vec::new(),
        tier_of_class: Vec::new(),
        spec: spec.to_string(),
        train_counts: Vec::new(),
    };
    let mut chosen: Vec<(usize, u32)> = Vec::new();
    let mut tiers = Vec::with_capacity(spec.tiers.len());
    for (t, (tier, range)) in spec.tiers.iter().zip(&ranges).enumerate() {
        let members = &ranked[range.clone()];
        let mut kept = 0;
        for rf in members {
            let family = &families[rf.family as usize];
            let class = label_map.classes.len() as u32;
            label_map.classes.push(family.id.clone());
            label_map.accessions.push(family.accession.clone());
            label_map.tier_of_class.push(t as u32);
            let rows = sample_family_rows(&rows_of_family[rf.family as usize], tier.max_per_family, seed, &family.id);
            kept += rows.len();
            label_map.train_counts.push(rows.len());
            chosen.extend(rows.into_iter().map(|r| (r, class)));
        }
        tiers.push(TierSummary {
            tier: tier.to_string(),
            families_requested: tier.families,
            families: members.len(),
            rows_available: members.iter().map(|m| m.count).sum(),
            rows_selected: kept,
            largest_family: members.first().map_or(0, |m| m.count),
            smallest_family: members.last().map_or(0, |m| m.count),
        });
    }
    chosen.sort_unstable();
    let taken = ranges.last().map_or(0, |r| r.end);
    Ok(Stratified {
        label_map,
        rows: chosen.iter().map(|&(r, _)| r).collect(),
        labels: chosen.iter().map(|&(_, c)| c).collect(),
        tiers,
        unselected_families: ranked.len() - taken,
        unselected_rows: ranked[taken..].iter().map(|m| m.count).sum(),
    })
}

/// Row indices of every family, ascending.
fn rows_by_family(set: &LabelledSet) -> Vec<Vec<usize>> {
    let mut rows = vec![Vec::new(); set.families().len()];
    for (r, &f) in set.family_column().iter().enumerate() {
        rows[f as usize].push(r);
    }
    rows
}

/// All rows of a family, or a seeded uniform sample of `cap` of them (ascending).
fn sample_family_rows(rows: &[usize], cap: Option<usize>, seed: u64, family_id: &str) -> Vec<usize> {
    match cap {
        Some(cap) if rows.len() > cap => {
            let mut rng = Rng::from_words(&[seed, fnv1a64(family_id.as_bytes())]);
            let mut sample = rng.sample(rows, cap);
            sample.sort_unstable();
            sample
        }
        _ => rows.to_vec(),
    }
}

/// A family of another split that is not in the label map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingFamily {
    pub id: String,
    /// Rows of the split dropped because of it.
    pub rows: usize,
}

/// Another split put onto a label map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MappedSplit {
    /// Rows of the split whose family is a class, ascending.
    pub rows: Vec<usize>,
    /// Class of each kept row.
    pub labels: Vec<u32>,
    /// Rows in the split.
    pub total_rows: usize,
    /// Rows dropped because their family is not a class.
    pub dropped_rows: usize,
    /// Families of the split that are not classes, largest first (ties by id).
    pub missing_families: Vec<MissingFamily>,
    /// Families of the split that are classes.
    pub families_kept: usize,
}

impl MappedSplit {
    /// Class of every row of the split (`None` for dropped rows), for `pack`.
    pub fn labels_by_row(&self) -> Vec<Option<u32>> {
        labels_by_row(&self.rows, &self.labels, self.total_rows)
    }
}

impl fmt::Display for MappedSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} rows kept ({} families); {} rows dropped: {} families are not classes",
            self.rows.len(),
            self.total_rows,
            self.families_kept,
            self.dropped_rows,
            self.missing_families.len()
        )?;
        let shown: Vec<String> =
            self.missing_families.iter().take(10).map(|m| format!("{} ({})", m.id, m.rows)).collect();
        if !shown.is_empty() {
            write!(f, ": {}", shown.join(", "))?;
            if self.missing_families.len() > shown.len() {
                write!(f, ", … {} more", self.missing_families.len() - shown.len())?;
            }
        }
        Ok(())
    }
}

/// Keep the rows of `split` whose family is a class of `label_map`; report the rest.
pub fn map_split(split: &LabelledSet, label_map: &LabelMap) -> Result<MappedSplit> {
    if !split.is_labelled() {
        bail!("cannot map an unlabelled set onto the classes");
    }
    let lookup = label_map.lookup();
    let class_of_family: Vec<Option<u32>> =
        split.families().iter().map(|f| lookup.get(f.id.as_str()).copied()).collect();
    let mut mapped = MappedSplit {
        rows: Vec::new(),
        labels: Vec::new(),
        total_rows: split.len(),
        dropped_rows: 0,
        missing_families: Vec::new(),
        families_kept: 0,
    };
    for (r, &f) in split.family_column().iter().enumerate() {
        match class_of_family[f as usize] {
            Some(c) => {
                mapped.rows.push(r);
                mapped.labels.push(c);
            }
            None => mapped.dropped_rows += 1,
        }
    }
    let counts = split.family_counts();
    for (f, family) in split.families().iter().enumerate() {
        match (class_of_family[f], counts[f]) {
            (_, 0) => {}
            (Some(_), _) => mapped.families_kept += 1,
            (None, rows) => mapped.missing_families.push(MissingFamily { id: family.id.clone(), rows }),
        }
    }
    mapped.missing_families.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.id.cmp(&b.id)));
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let s: StratifySpec = QUANTAFOLD_SPEC.parse().unwrap();
        assert_eq!(s.tiers.len(), 2);
        assert_eq!(s.tiers[1], Tier { families: Some(4000), max_per_family: Some(50) });
        assert_eq!(s.to_string(), QUANTAFOLD_SPEC);
        assert_eq!("all".parse::<StratifySpec>().unwrap(), StratifySpec::all());
        assert_eq!("top:1000".parse::<StratifySpec>().unwrap(), StratifySpec::top(1000));
        assert_eq!("1000".parse::<StratifySpec>().unwrap().to_string(), "1000");
        assert_eq!("100x5,restx2".parse::<StratifySpec>().unwrap().to_string(), "100x5,restx2");
        let e = "1000x,5".parse::<StratifySpec>().unwrap_err().to_string();
        assert!(e.contains("`` is not a positive number"), "{e}");
        let e = "restx2,5".parse::<StratifySpec>().unwrap_err().to_string();
        assert!(e.contains("last tier"), "{e}");
        assert!("0x5".parse::<StratifySpec>().is_err());
    }

    #[test]
    fn tier_ranges_stop_at_the_data() {
        let s: StratifySpec = "3x1,4x1".parse().unwrap();
        assert_eq!(tier_ranges(5, &s), vec![0..3, 3..5]);
        assert_eq!(tier_ranges(10, &StratifySpec::all()), vec![0..10]);
    }
}
