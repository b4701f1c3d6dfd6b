//! Optimisers: AdamW in fp32 and blockwise 8-bit AdamW, learning-rate schedules,
//! gradient clipping and dynamic loss scaling.

pub mod adam8bit;
pub mod adamw_step;
pub mod quant8;
