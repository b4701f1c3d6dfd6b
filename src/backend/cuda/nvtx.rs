//! NVTX ranges, so that Nsight Systems / Nsight Compute show which op, layer and phase
//! each kernel belongs to.
//!
//! Ranges are recorded only when the environment variable `QF_NVTX` is set (to anything
//! but `0`) **and** the NVTX library (`libnvToolsExt.so`) can be loaded (cudarc opens it
//! at run time). Otherwise every guard is an empty `Option`: no string is built and no
//! library is touched, so CPU runs and ordinary GPU runs pay one cached flag test.
//!
//! ```text
//! let _r = nvtx::fwd("linear");          // "linear.fwd" until `_r` is dropped
//! let _r = nvtx::range_with(|| format!("layer {i}"));
//! ```
//!
//! Colours: forward ops green, backward ops red, optimizer blue, others grey.

use std::sync::OnceLock;

/// An open NVTX range; the range ends when this is dropped.
#[must_use = "the range ends when the guard is dropped"]
pub struct Range(#[allow(dead_code)] Option<cudarc::nvtx::Range>);

const GREEN: u32 = 0xff2e_a043;
const RED: u32 = 0xffd0_3030;
const BLUE: u32 = 0xff30_60d0;
const GREY: u32 = 0xff80_8080;

/// Whether ranges are recorded in this process (decided once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let asked = std::env::var("QF_NVTX").is_ok_and(|v| !v.is_empty() && v != "0");
        // Safety: only probes whether the shared library can be loaded.
        let present = asked && unsafe { cudarc::nvtx::sys::is_culib_present() };
        if asked && !present {
            eprintln!("QF_NVTX is set but libnvToolsExt.so could not be loaded: no NVTX ranges (add its folder to LD_LIBRARY_PATH)");
        }
        present
    })
}

fn open(name: &str, argb: u32) -> Range {
    let mut event = cudarc::nvtx::Event::message(name);
    event.argb(argb);
    Range(Some(event.range()))
}

/// A range named `name` (grey).
pub fn range(name: &'static str) -> Range {
    if !enabled() {
        return Range(None);
    }
    open(name, GREY)
}

/// A range whose name is built only when ranges are on.
pub fn range_with(name: impl FnOnce() -> String) -> Range {
    if !enabled() {
        return Range(None);
    }
    open(&name(), GREY)
}

/// The forward launch(es) of op `op`: range `<op>.fwd`.
pub fn fwd(op: &'static str) -> Range {
    if !enabled() {
        return Range(None);
    }
    open(&format!("{op}.fwd"), GREEN)
}

/// The backward launch(es) of op `op`: range `<op>.bwd`.
pub fn bwd(op: &'static str) -> Range {
    if !enabled() {
        return Range(None);
    }
    open(&format!("{op}.bwd"), RED)
}

/// The optimizer step (or a part of it).
pub fn optimizer(name: &'static str) -> Range {
    if !enabled() {
        return Range(None);
    }
    open(name, BLUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_empty_when_disabled() {
        if enabled() {
            return; // QF_NVTX set and the library present: ranges are real
        }
        assert!(fwd("x").0.is_none());
        assert!(range_with(|| unreachable!("name must not be built when disabled")).0.is_none());
    }
}
