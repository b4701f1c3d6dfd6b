//! Per-sequence mean of the residue rows of packed hidden states — the CPU twin of
//! `kernels/mean_pool.cu` (see its header for the maths): sequence `s` spans rows
//! `cu[s] .. cu[s+1]`, its first (`<cls>`) and last (`<eos>`) rows are left out.

use super::Real;

/// The residue rows of sequence `s`.
fn residue_rows(cu: &[usize], s: usize) -> std::ops::Range<usize> {
    let (a, b) = (cu[s], cu[s + 1]);
    if b < a + 3 {
        return a..a;
    }
    a + 1..b - 1
}

/// `out[s, :] = mean_{r ∈ residues(s)} x[r, :]` (zeros for a sequence without residues),
/// summed in the working type.
pub fn forward<T: Real>(out: &mut [T], x: &[T], cu: &[usize], dim: usize) {
    for (s, o) in out.chunks_mut(dim).enumerate() {
        let rows = residue_rows(cu, s);
        o.iter_mut().for_each(|v| *v = T::zero());
        if rows.is_empty() {
            continue;
        }
        let inv = T::from_f64(1.0 / rows.len() as f64);
        for r in rows {
            for (acc, &v) in o.iter_mut().zip(&x[r * dim..][..dim]) {
                *acc += v;
            }
        }
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `dx[r, :] += dout[s, :] / n_s` for every residue row `r` of sequence `s`.
pub fn backward<T: Real>(dx: &mut [T], dout: &[T], cu: &[usize], dim: usize) {
    for (s, g) in dout.chunks(dim).enumerate() {
        let rows = residue_rows(cu, s);
        if rows.is_empty() {
            continue;
        }
        let inv = T::from_f64(1.0 / rows.len() as f64);
        for r in rows {
            for (d, &gv) in dx[r * dim..][..dim].iter_mut().zip(g) {
                *d += gv * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_leave_out_first_and_last_rows() {
        // Two sequences: rows 0..4 (residues 1, 2) and 4..7 (residue 5).
        let x: Vec<f64> = (0..7).map(|r| r as f64).collect();
        let mut out = vec![0.0; 2];
        forward(&mut out, &x, &[0, 4, 7], 1);
        assert_eq!(out, vec![1.5, 5.0]);
        let mut dx = vec![0.0; 7];
        backward(&mut dx, &[2.0, 3.0], &[0, 4, 7], 1);
        assert_eq!(dx, vec![0.0, 1.0, 1.0, 0.0, 0.0, 3.0, 0.0]);
    }

    #[test]
    fn a_sequence_without_residues_pools_to_zero() {
        let mut out = vec![9.0f32; 1];
        forward(&mut out, &[1.0, 2.0], &[0, 2], 1);
        assert_eq!(out, vec![0.0]);
    }
}
