//! Throughput benchmark (`qf-engine bench`): full training steps (forward, backward,
//! optimizer), or inference as `predict` runs it (`--mode infer`: no tape, length-sorted
//! packing, windows for long proteins), of an ESM-2 preset with a many-class head on real
//! protein lengths (a Pfam split, or the built-in demo set). Warm-up batches are not
//! timed; the figure is the median of several timed runs. Reports sequences/s, real
//! tokens/s, time per phase (data, forward, backward, optimizer), model FLOP utilisation
//! against the device's GEMM rate measured in the same run, and peak memory.
//!
//! One file per job: `throughput.rs` times training or inference steps
//! ([`bench_throughput`]); `memory_limit.rs` (`bench --memory`, [`bench_memory`]) finds
//! the largest token budget under a memory limit; `step.rs` holds what both run: the
//! benchmark's model, the timed training step and the report labels. Imports go from
//! this file to the three, and from the two benchmarks to `step.rs`, never back.

mod memory_limit;
mod step;
mod throughput;

pub use crate::train::memory::peak_rss_bytes;
pub use memory_limit::{bench_memory, MemoryBenchConfig, MemoryBenchResult, MemoryPoint};
pub use step::PhaseMs;
pub use throughput::{bench_throughput, gemm_peak, BenchConfig, BenchMode, BenchResult, TRAIN_TOKENS};
