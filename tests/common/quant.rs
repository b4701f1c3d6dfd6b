//! Comparing 8-bit optimizer states from two implementations (CPU reference against a
//! CUDA kernel, real or emulated).

use qf_engine::backend::cpu::quant8::{QuantMap, BLOCK_SIZE};

/// Codes equal, or one apart exactly at a requantisation tie: `x / absmax` on the fp32
/// midpoint of the two map entries (`x` the updated moment, recomputed from the state
/// before the step). Panics on any other difference; returns the number of ties, which
/// each caller bounds.
pub fn tie_differences(
    what: &str,
    want: &[u8],
    got: &[u8],
    x_new: impl Fn(usize) -> f32,
    absmax: &[f32],
    map: &QuantMap,
) -> usize {
    assert_eq!(want.len(), got.len(), "{what}: code counts");
    let mut ties = 0;
    for (i, (&a, &b)) in want.iter().zip(got).enumerate() {
        if a == b {
            continue;
        }
        let (lo, hi) = (a.min(b) as usize, a.max(b) as usize);
        let u = x_new(i) / absmax[i / BLOCK_SIZE];
        let mid = (map[lo] + map[hi]) * 0.5;
        assert!(hi == lo + 1 && u == mid, "{what}[{i}]: CPU code {a}, kernel code {b}, x/absmax = {u:e} (not a tie)");
        ties += 1;
    }
    ties
}
