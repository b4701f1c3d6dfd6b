//! Measuring memory, to check the plan against: live and peak heap bytes under a
//! counting global allocator (tests), the process's current and peak resident set (CPU
//! runs), and the CUDA memory pool's bytes in use and high-water mark (re-exported from
//! `backend::cuda::memory`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

pub use crate::backend::cuda::memory::{pool_used_bytes, reset_pool_peak};

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their high-water mark (install it
/// with `#[global_allocator]` in a test binary; [`heap_live_bytes`] and
/// [`heap_peak_bytes`] then report exact figures for the CPU backend).
pub struct CountingAllocator;

fn count_alloc(size: usize) {
    let live = HEAP_LIVE.fetch_add(size, Ordering::Relaxed) + size;
    HEAP_PEAK.fetch_max(live, Ordering::Relaxed);
}

// Safety: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count_alloc(new_size);
        }
        p
    }
}

/// Live heap bytes (0 unless [`CountingAllocator`] is the global allocator).
pub fn heap_live_bytes() -> usize {
    HEAP_LIVE.load(Ordering::Relaxed)
}

/// Highest live heap bytes since the last [`reset_heap_peak`].
pub fn heap_peak_bytes() -> usize {
    HEAP_PEAK.load(Ordering::Relaxed)
}

/// Start a new high-water mark at the current live bytes.
pub fn reset_heap_peak() {
    HEAP_PEAK.store(HEAP_LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A field of `/proc/self/status` in bytes (Linux).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident set size now (Linux `VmRSS`).
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// Peak resident set size since the process started or the last reset (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // Safety: glibc's malloc_trim only returns free pages to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

/// Return free heap pages to the kernel and restart the peak RSS at the current RSS
/// (`/proc/self/clear_refs` ← 5, Linux ≥ 4.0), so that the next [`peak_rss_bytes`] minus
/// this call's return value is the growth of a measured section. Returns the RSS now.
pub fn reset_peak_rss() -> Result<u64> {
    release_free_heap();
    std::fs::write("/proc/self/clear_refs", "5").map_err(|e| {
        anyhow::anyhow!("cannot reset the peak RSS (/proc/self/clear_refs: {e}); CPU memory measurement needs Linux")
    })?;
    current_rss_bytes().ok_or_else(|| anyhow::anyhow!("cannot read /proc/self/status"))
}

/// Peak memory of the run so far and what was measured: the CUDA pool's high-water mark,
/// or the process's peak resident set on the CPU.
pub fn measured_peak(device: &crate::tensor::Device) -> Option<(u64, &'static str)> {
    match device {
        crate::tensor::Device::Cpu => peak_rss_bytes().map(|b| (b, "process peak resident set")),
        crate::tensor::Device::Cuda(d) => crate::backend::cuda::device::pool_peak_bytes(d)
            .ok()
            .map(|b| (b, "CUDA memory pool high-water mark; the context and cuBLAS workspace are outside it")),
    }
}
