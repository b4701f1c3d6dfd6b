//! Dynamic loss scaling for fp16 training (Micikevicius et al. 2018, as PyTorch's
//! `GradScaler`): the loss is multiplied by `scale` before the backward pass; a step whose
//! gradients overflow (inf/nan) is skipped and the scale halves; after `growth_interval`
//! clean steps in a row it doubles.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// Clean steps since the last change.
    pub good_steps: u64,
    /// Steps skipped because of overflow so far.
    pub skipped: u64,
    /// Times the scale grew.
    pub grown: u64,
}

impl LossScaler {
    /// PyTorch's defaults: 2^16, ×2 after 2,000 clean steps, ×0.5 on overflow.
    pub fn new() -> Self {
        LossScaler::with(65536.0, 2000)
    }

    pub fn with(scale: f64, growth_interval: u64) -> Self {
        LossScaler {
            scale,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval,
            good_steps: 0,
            skipped: 0,
            grown: 0,
        }
    }

    /// A scaler that never scales (fp32/bf16).
    pub fn disabled() -> Self {
        LossScaler { growth_interval: u64::MAX, ..LossScaler::with(1.0, u64::MAX) }
    }

    /// Record the outcome of a step.
    pub fn update(&mut self, overflow: bool) {
        if self.growth_interval == u64::MAX {
            return;
        }
        if overflow {
            self.scale = (self.scale * self.backoff_factor).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
        } else {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
                self.grown += 1;
            }
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_clean_steps() {
        let mut s = LossScaler::with(1024.0, 3);
        s.update(true);
        assert_eq!((s.scale, s.skipped), (512.0, 1));
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.grown), (1024.0, 1));
        let mut d = LossScaler::disabled();
        d.update(true);
        assert_eq!(d.scale, 1.0);
    }
}
