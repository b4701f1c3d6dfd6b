//! Training loops (family classification; contact prediction), evaluation, checkpoints
//! with training state, and run logging.

pub mod bench;
pub mod classify;
pub mod contact;
pub mod contact_eval;
pub mod data;
pub mod device;
pub mod driver;
pub mod eval;
pub mod log;
pub mod memory;
pub mod mlm;
pub mod state;
pub mod trained;

pub use classify::{train, ModelSource, TrainConfig, TrainSummary, Warmup};
pub use data::DataSource;
pub use device::{DeviceChoice, Precision};
