//! Dataset statistics (`qf-engine data stats`): size, length distribution, family-size
//! imbalance and what a tiered family selection covers.
//!
//! Definitions: percentiles (median, p90, p99) interpolate linearly between order
//! statistics (NumPy's default `percentile(..., method="linear")`); the Gini coefficient
//! of family sizes is `Σ_i (2i − n − 1)·x_i / (n·Σ x)` over sizes sorted ascending
//! (0 = all families equal, → 1 = one family holds everything); "long" rows have more than
//! 1,022 residues, i.e. do not fit ESM-2's 1,024-token window with `<cls>` and `<eos>`.
//! Tier coverage ranks families as [`crate::data::stratify`] does (size, then id) and
//! reports rows before and after each tier's per-family cap. The result prints as a table
//! (`Display`) and serializes to JSON (`serde::Serialize`).

use std::fmt;

use anyhow::Result;
use serde::Serialize;

use crate::data::dataset::LabelledSet;
use crate::data::stratify::{rank_families, tier_ranges, StratifySpec};

/// Residues above which a row does not fit a 1,024-token ESM-2 window.
pub const LONG_ROW_RESIDUES: usize = 1022;

/// Distribution of sequence lengths (residues).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthSummary {
    pub min: usize,
    pub median: f64,
    pub mean: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: usize,
}

/// Families and rows one tier of a selection covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierCoverage {
    pub tier: String,
    pub families_requested: Option<usize>,
    pub families: usize,
    /// All rows of the tier's families.
    pub rows: usize,
    /// Rows after the tier's per-family cap.
    pub rows_capped: usize,
    /// `rows` as a share of all rows of the set.
    pub share_of_rows: f64,
    pub largest_family: usize,
    pub smallest_family: usize,
}

/// Number of families in each size band.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SizeBands {
    pub at_least_200: usize,
    pub from_50_to_199: usize,
    pub from_10_to_49: usize,
    pub below_10: usize,
    pub singletons: usize,
}

/// Everything `qf-engine data stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetStats {
    pub sequences: usize,
    pub residues: usize,
    pub families: usize,
    pub length: LengthSummary,
    /// Rows with more than [`LONG_ROW_RESIDUES`] residues, and their share of rows.
    pub long_rows: usize,
    pub long_share: f64,
    /// Residues that are letters outside the 20 canonical amino acids.
    pub nonstandard_residues: usize,
    /// Gini coefficient of family sizes (`None` for an unlabelled set).
    pub gini: Option<f64>,
    pub family_size_median: Option<f64>,
    pub size_bands: Option<SizeBands>,
    /// The ten largest families with their row counts.
    pub largest_families: Vec<(String, usize)>,
    /// The selection the tiers below come from.
    pub spec: String,
    pub tiers: Vec<TierCoverage>,
}

/// Percentile `p` (0–100) of ascending `sorted` values, linear interpolation.
pub fn percentile(sorted: &[usize], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - lo as f64;
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
}

/// Gini coefficient of `sizes` (any order); 0 for an empty or all-zero input.
pub fn gini(sizes: &[usize]) -> f64 {
    let mut x = sizes.to_vec();
    x.sort_unstable();
    let n = x.len() as f64;
    let total: f64 = x.iter().map(|&v| v as f64).sum();
    if total == 0.0 {
        return 0.0;
    }
    let weighted: f64 = x.iter().enumerate().map(|(i, &v)| (2.0 * (i + 1) as f64 - n - 1.0) * v as f64).sum();
    weighted / (n * total)
}

/// Length distribution of the rows of `set`.
pub fn length_summary(set: &LabelledSet) -> LengthSummary {
    let mut lengths = set.residue_lengths();
    lengths.sort_unstable();
    let mean = if lengths.is_empty() { 0.0 } else { set.total_residues() as f64 / lengths.len() as f64 };
    LengthSummary {
        min: lengths.first().copied().unwrap_or(0),
        median: percentile(&lengths, 50.0),
        mean,
        p90: percentile(&lengths, 90.0),
        p99: percentile(&lengths, 99.0),
        max: lengths.last().copied().unwrap_or(0),
    }
}

fn size_bands(sizes: &[usize]) -> SizeBands {
    let count = |f: &dyn Fn(usize) -> bool| sizes.iter().filter(|&&s| f(s)).count();
    SizeBands {
        at_least_200: count(&|s| s >= 200),
        from_50_to_199: count(&|s| (50..200).contains(&s)),
        from_10_to_49: count(&|s| (10..50).contains(&s)),
        below_10: count(&|s| s < 10),
        singletons: count(&|s| s == 1),
    }
}

/// Statistics of `set`, with tier coverage for `spec` (e.g. `1000x200,4000x50`).
pub fn dataset_stats(set: &LabelledSet, spec: &StratifySpec) -> Result<DatasetStats> {
    let long_rows = set.residue_lengths().iter().filter(|&&l| l > LONG_ROW_RESIDUES).count();
    let mut stats = DatasetStats {
        sequences: set.len(),
        residues: set.total_residues(),
        families: 0,
        length: length_summary(set),
        long_rows,
        long_share: if set.is_empty() { 0.0 } else { long_rows as f64 / set.len() as f64 },
        nonstandard_residues: set.nonstandard_residues(),
        gini: None,
        family_size_median: None,
        size_bands: None,
        largest_families: Vec::new(),
        spec: spec.to_string(),
        tiers: Vec::new(),
    };
    if !set.is_labelled() {
        return Ok(stats);
    }
    let ranked = rank_families(set)?;
    let sizes: Vec<usize> = ranked.iter().map(|r| r.count).collect();
    let mut ascending = sizes.clone();
    ascending.reverse();
    stats.families = ranked.len();
    stats.gini = Some(gini(&sizes));
    stats.family_size_median = Some(percentile(&ascending, 50.0));
    stats.size_bands = Some(size_bands(&sizes));
    stats.largest_families =
        ranked.iter().take(10).map(|r| (set.families()[r.family as usize].id.clone(), r.count)).collect();
    for (tier, range) in spec.tiers.iter().zip(tier_ranges(ranked.len(), spec)) {
        let members = &sizes[range];
        let rows: usize = members.iter().sum();
        let cap = tier.max_per_family.unwrap_or(usize::MAX);
        stats.tiers.push(TierCoverage {
            tier: tier.to_string(),
            families_requested: tier.families,
            families: members.len(),
            rows,
            rows_capped: members.iter().map(|&s| s.min(cap)).sum(),
            share_of_rows: rows as f64 / set.len().max(1) as f64,
            largest_family: members.first().copied().unwrap_or(0),
            smallest_family: members.last().copied().unwrap_or(0),
        });
    }
    Ok(stats)
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.length;
        writeln!(f, "{:<28} {}", "sequences", self.sequences)?;
        writeln!(f, "{:<28} {}", "residues", self.residues)?;
        writeln!(f, "{:<28} {}", "families", self.families)?;
        writeln!(
            f,
            "{:<28} min {} / median {:.1} / mean {:.1} / p90 {:.1} / p99 {:.1} / max {}",
            "length (residues)", l.min, l.median, l.mean, l.p90, l.p99, l.max
        )?;
        writeln!(
            f,
            "{:<28} {} ({:.3}%)",
            format!("rows > {LONG_ROW_RESIDUES} residues"),
            self.long_rows,
            100.0 * self.long_share
        )?;
        writeln!(f, "{:<28} {}", "non-standard residues", self.nonstandard_residues)?;
        if let (Some(g), Some(m), Some(b)) = (self.gini, self.family_size_median, &self.size_bands) {
            writeln!(f, "{:<28} {g:.4}", "Gini of family sizes")?;
            writeln!(f, "{:<28} {m:.1}", "median family size")?;
            writeln!(
                f,
                "{:<28} >=200: {}, 50-199: {}, 10-49: {}, <10: {} ({} singletons)",
                "families by size", b.at_least_200, b.from_50_to_199, b.from_10_to_49, b.below_10, b.singletons
            )?;
            let largest: Vec<String> = self.largest_families.iter().map(|(id, n)| format!("{id} ({n})")).collect();
            writeln!(f, "{:<28} {}", "largest families", largest.join(", "))?;
            writeln!(f, "selection {}:", self.spec)?;
            writeln!(
                f,
                "  {:<10} {:>8} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8}",
                "tier", "asked", "families", "rows", "capped", "% rows", "largest", "smallest"
            )?;
            for t in &self.tiers {
                let asked = t.families_requested.map_or("rest".to_string(), |n| n.to_string());
                writeln!(
                    f,
                    "  {:<10} {:>8} {:>9} {:>10} {:>10} {:>7.1}% {:>8} {:>8}",
                    t.tier,
                    asked,
                    t.families,
                    t.rows,
                    t.rows_capped,
                    100.0 * t.share_of_rows,
                    t.largest_family,
                    t.smallest_family
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1, 2, 3, 4];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn gini_of_known_distributions() {
        assert_eq!(gini(&[5, 5, 5, 5]), 0.0);
        // One of four holds everything: (n - 1) / n.
        assert!((gini(&[0, 0, 0, 8]) - 0.75).abs() < 1e-12);
        // [1, 2, 3]: sum |xi - xj| over ordered pairs = 8; 8 / (2 · 3² · 2) = 2/9.
        assert!((gini(&[3, 1, 2]) - 2.0 / 9.0).abs() < 1e-12);
    }
}
