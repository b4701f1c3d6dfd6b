//! Random initialisation as Hugging Face's `EsmPreTrainedModel._init_weights`: linear
//! and embedding weights N(0, initializer_range²) (0.02 for ESM-2), biases 0, LayerNorm
//! weight 1 and bias 0; the `<pad>` row of the embedding is zero.

use crate::data::rng::Rng;

/// Seeded normal samples.
pub struct Init {
    rng: Rng,
    pub std: f64,
}

impl Init {
    pub fn new(seed: u64, std: f64) -> Self {
        Init { rng: Rng::new(seed), std }
    }

    /// One standard normal sample (Box–Muller).
    pub fn standard_normal(&mut self) -> f64 {
        let u1 = self.rng.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.rng.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` samples of N(0, std²).
    pub fn normal(&mut self, n: usize) -> Vec<f32> {
        let std = self.std;
        (0..n).map(|_| (self.standard_normal() * std) as f32).collect()
    }
}
