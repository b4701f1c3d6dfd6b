//! Token budgets under a memory limit: a search over the planner's totals
//! ([`largest_budget`]) and a straight line through two measurements ([`LinearFit`]).

use anyhow::{bail, Result};

/// Largest token budget (a multiple of `step`) whose planned total fits `limit` bytes,
/// searching budgets of full-length sequences of `max_len` tokens; 0 when none does.
pub fn largest_budget(
    limit: u64,
    step: usize,
    max_tokens: usize,
    plan: impl Fn(usize) -> Result<u64>,
) -> Result<usize> {
    let step = step.max(1);
    let (mut lo, mut hi) = (1usize, max_tokens / step);
    if hi == 0 || plan(step)? > limit {
        return Ok(0);
    }
    // plan() grows with the budget: binary search for the last fitting multiple.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if plan(mid * step)? <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo * step)
}

/// A linear model `bytes(T) = fixed + per_token·T` through two measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearFit {
    pub fixed: f64,
    pub per_token: f64,
}

impl LinearFit {
    /// Through `(t1, b1)` and `(t2, b2)`, `t1 < t2`.
    pub fn through(t1: usize, b1: u64, t2: usize, b2: u64) -> Result<LinearFit> {
        if t2 <= t1 {
            bail!("a fit needs two different budgets ({t1} and {t2} tokens)");
        }
        let per_token = (b2 as f64 - b1 as f64) / (t2 - t1) as f64;
        Ok(LinearFit { fixed: b1 as f64 - per_token * t1 as f64, per_token })
    }

    pub fn at(&self, tokens: usize) -> f64 {
        self.fixed + self.per_token * tokens as f64
    }

    /// Largest multiple of `step` tokens with `at(T) ≤ limit` (0 when the fixed part alone
    /// exceeds it; `None` when memory does not grow with the budget).
    pub fn largest_budget(&self, limit: u64, step: usize) -> Option<usize> {
        if self.per_token <= 0.0 {
            return None;
        }
        let t = ((limit as f64 - self.fixed) / self.per_token).floor();
        if t < step as f64 {
            return Some(0);
        }
        let step = step.max(1);
        Some((t as usize / step) * step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_and_searches() {
        let fit = LinearFit::through(1000, 3_000, 3000, 7_000).unwrap();
        assert_eq!((fit.fixed, fit.per_token), (1000.0, 2.0));
        assert_eq!(fit.largest_budget(21_000, 1000), Some(10_000));
        assert_eq!(fit.largest_budget(500, 1000), Some(0));
        let b = largest_budget(21_000, 1000, 1 << 20, |t| Ok(1000 + 2 * t as u64)).unwrap();
        assert_eq!(b, 10_000);
        assert_eq!(largest_budget(10, 1000, 1 << 20, |t| Ok(1000 + 2 * t as u64)).unwrap(), 0);
    }
}
