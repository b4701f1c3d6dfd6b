//! Per-class loss weights for weighted cross-entropy under power-law class imbalance.
//!
//! Schemes (parsed from `none`, `balanced`, `tempered:<alpha>`):
//!
//! - `none`: every class weighs 1.
//! - `balanced`: scikit-learn's `compute_class_weight("balanced")`,
//!   `w_c = n_samples / (n_classes · count_c)`. Here `n_classes` counts the classes that
//!   have training rows (sklearn refuses classes without any); with every class present
//!   the formula is sklearn's exactly. The mean weight over training samples is then 1.
//! - `tempered:α`: `w_c ∝ count_c^(−α)` (α = 0: `none`; α = 1: `balanced`; QuantaFold-style
//!   softening in between, e.g. 0.5 = inverse square root), rescaled so that the mean
//!   weight over training samples is 1:
//!   `w_c = count_c^(−α) · N / Σ_k count_k^(1−α)`, with `N = Σ_k count_k`, so that
//!   `Σ_c count_c · w_c = N`. The loss scale (and so the learning rate) stays comparable
//!   across schemes.
//!
//! A class with no training rows gets weight 0 under every scheme and is listed in
//! [`ClassWeights::zero_count_classes`] so the caller can report it.

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

/// How class weights are computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum ClassWeighting {
    None,
    Balanced,
    Tempered { alpha: f64 },
}

impl FromStr for ClassWeighting {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "none" => return Ok(ClassWeighting::None),
            "balanced" => return Ok(ClassWeighting::Balanced),
            _ => {}
        }
        let Some(alpha) = s.strip_prefix("tempered:") else {
            bail!("class weighting `{s}`: expected `none`, `balanced` or `tempered:<alpha>` (e.g. `tempered:0.5`)");
        };
        let alpha: f64 =
            alpha.trim().parse().map_err(|_| anyhow!("class weighting `{s}`: `{alpha}` is not a number"))?;
        if !alpha.is_finite() || alpha < 0.0 {
            bail!("class weighting `{s}`: alpha must be a finite number >= 0");
        }
        Ok(ClassWeighting::Tempered { alpha })
    }
}

impl fmt::Display for ClassWeighting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassWeighting::None => write!(f, "none"),
            ClassWeighting::Balanced => write!(f, "balanced"),
            ClassWeighting::Tempered { alpha } => write!(f, "tempered:{alpha}"),
        }
    }
}

/// Weights per class and the classes that had no rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassWeights {
    pub weights: Vec<f32>,
    pub zero_count_classes: Vec<usize>,
}

impl ClassWeights {
    /// Mean weight over the training samples described by `counts` (1 for every scheme
    /// when all classes have rows).
    pub fn mean_over_samples(&self, counts: &[usize]) -> f64 {
        let n: usize = counts.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let total: f64 = counts.iter().zip(&self.weights).map(|(&c, &w)| c as f64 * w as f64).sum();
        total / n as f64
    }
}

/// Weights for classes with `counts[c]` training rows each.
pub fn class_weights(counts: &[usize], scheme: ClassWeighting) -> ClassWeights {
    let zero_count_classes: Vec<usize> = counts.iter().enumerate().filter(|&(_, &c)| c == 0).map(|(i, _)| i).collect();
    let n_samples = counts.iter().sum::<usize>() as f64;
    let n_present = (counts.len() - zero_count_classes.len()) as f64;
    let raw: Box<dyn Fn(f64) -> f64> = match scheme {
        ClassWeighting::None => Box::new(|_| 1.0),
        ClassWeighting::Balanced => Box::new(move |count| n_samples / (n_present * count)),
        ClassWeighting::Tempered { alpha } => {
            let norm: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| (c as f64).powf(1.0 - alpha)).sum();
            Box::new(move |count: f64| count.powf(-alpha) * n_samples / norm)
        }
    };
    let weights = counts.iter().map(|&c| if c == 0 { 0.0 } else { raw(c as f64) as f32 }).collect();
    ClassWeights { weights, zero_count_classes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes() {
        assert_eq!("none".parse::<ClassWeighting>().unwrap(), ClassWeighting::None);
        assert_eq!("balanced".parse::<ClassWeighting>().unwrap(), ClassWeighting::Balanced);
        assert_eq!("tempered:0.5".parse::<ClassWeighting>().unwrap(), ClassWeighting::Tempered { alpha: 0.5 });
        let e = "tempered:x".parse::<ClassWeighting>().unwrap_err().to_string();
        assert!(e.contains("`x` is not a number"), "{e}");
        assert!("tempered:-1".parse::<ClassWeighting>().is_err());
        assert!("inverse".parse::<ClassWeighting>().is_err());
        assert_eq!(ClassWeighting::Tempered { alpha: 0.5 }.to_string(), "tempered:0.5");
    }
}
