//! Learning-rate schedule: linear warm-up from 0 to the peak over `warmup` steps, then
//! linear decay to 0 at `total` steps (Hugging Face `get_linear_schedule_with_warmup`).

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub peak_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LinearSchedule {
    /// Learning rate for optimizer step `step` (0-based: the first update uses `lr(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let remaining = self.total.saturating_sub(step) as f64;
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        self.peak_lr * (remaining / span).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = LinearSchedule { peak_lr: 1.0, warmup: 4, total: 12 };
        let lrs: Vec<f64> = (0..13).map(|t| s.lr(t)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(lrs[4], 1.0);
        assert_eq!(lrs[8], 0.5);
        assert_eq!(lrs[12], 0.0);
    }
}
