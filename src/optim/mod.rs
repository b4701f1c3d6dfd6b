//! Optimisers: AdamW in fp32 and blockwise 8-bit AdamW, learning-rate schedules,
//! gradient clipping and dynamic loss scaling.

pub mod adam8bit;
pub mod loss_scale;
pub mod optimizer;
pub mod schedule;

pub use loss_scale::LossScaler;
pub use optimizer::{OptimConfig, Optimizer, OptimizerKind, StepStats};
pub use schedule::LinearSchedule;
