//! Memory of a training run: the plan (what a step needs, from the model's shape and the
//! tape's contents) and the measurements that check it. One file per job:
//!
//! * `specs.rs`: the parameter tensors the planner counts;
//! * `plan.rs`: the planner ([`MemoryPlan`]) and its formulas (documented there);
//! * `gpu_plan.rs`: the GPU plan printed at the start of a CUDA run ([`GpuMemoryPlan`]);
//! * `budget.rs`: the largest token budget under a limit, planned or fitted;
//! * `units.rs`: byte sizes printed and parsed;
//! * `measure.rs`: heap counting, resident set size, the CUDA pool's high-water mark;
//! * `report.rs`: what a training run prints and logs about its memory.
//!
//! Everything public is re-exported here, so callers write `train::memory::X`.

mod budget;
mod gpu_plan;
mod measure;
mod plan;
mod report;
mod specs;
mod units;

pub use budget::{largest_budget, LinearFit};
pub use gpu_plan::{activation_bytes_per_token, token_weighted_length, GpuMemoryPlan};
pub use measure::{
    current_rss_bytes, heap_live_bytes, heap_peak_bytes, measured_peak, peak_rss_bytes, pool_used_bytes,
    reset_heap_peak, reset_peak_rss, reset_pool_peak, CountingAllocator,
};
pub use plan::{BatchShape, MemoryPlan, PlanOptions, CUDA_RUNTIME_BYTES};
pub use report::{peak_report, plan_run, GpuPlanInputs, RunMemory};
pub use specs::{param_specs, param_specs_of, ModelShape, ParamSpec};
pub use units::{fmt_bytes, parse_bytes, GIB, MIB};
