//! The CUDA kernel images embedded at build time.
//!
//! `build.rs` compiles every `kernels/<name>.cu` into one fatbin (SASS for the
//! configured `sm_XX` targets plus PTX for the newest one) and generates the
//! table included below:
//!
//! * [`KERNEL_MODULES`]: `(name, fatbin bytes)` per kernel file, 64-byte aligned;
//! * [`BUILT_WITH_KERNELS`]: false for a CPU-only build (no nvcc at build time);
//!   [`KERNEL_BUILD_NOTE`] then says why;
//! * [`NVCC_VERSION`], [`CUDA_ARCHS`]: what built them.
//!
//! Loading one with cudarc 0.19 (needs cudarc's `nvrtc` feature for
//! `CudaContext::load_module`; the NVRTC library itself is only opened if
//! NVRTC functions are called, which loading a binary image never does):
//!
//! ```text
//! let image = module_image("layer_norm").ok_or(...)?;
//! let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))?; // cuModuleLoadData
//! let f = module.load_function("layer_norm_forward_f16")?;
//! ```
//!
//! Every extern "C" kernel, its argument order and its launch configuration
//! are documented in the header comment of its `.cu` file.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The fatbin of `kernels/<name>.cu`, or `None` when there is no such file or
/// the crate was built without kernels.
pub fn module_image(name: &str) -> Option<&'static [u8]> {
    KERNEL_MODULES.iter().find(|(n, _)| *n == name).map(|(_, image)| *image)
}

/// Names of the embedded kernel modules (file stems of `kernels/*.cu`).
pub fn module_names() -> impl Iterator<Item = &'static str> {
    KERNEL_MODULES.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic number at the start of a fatbin container (little endian).
    const FATBIN_MAGIC: u32 = 0xBA55_ED50;

    #[test]
    fn table_is_consistent_with_build_flag() {
        if BUILT_WITH_KERNELS {
            assert!(!KERNEL_MODULES.is_empty());
            assert!(!NVCC_VERSION.is_empty());
            assert!(KERNEL_BUILD_NOTE.is_empty());
        } else {
            assert!(KERNEL_MODULES.is_empty());
            assert!(!KERNEL_BUILD_NOTE.is_empty());
            eprintln!("built without CUDA kernels: {KERNEL_BUILD_NOTE}");
        }
    }

    #[test]
    fn images_are_aligned_fatbins() {
        for (name, image) in KERNEL_MODULES {
            assert!(image.len() > 16, "{name}: image too small");
            assert_eq!(image.as_ptr() as usize % 64, 0, "{name}: image not 64-byte aligned");
            let magic = u32::from_le_bytes(image[..4].try_into().unwrap());
            assert_eq!(magic, FATBIN_MAGIC, "{name}: not a fatbin");
            assert_eq!(module_image(name).map(<[u8]>::as_ptr), Some(image.as_ptr()));
        }
        assert!(module_image("no_such_module").is_none());
    }

    #[test]
    fn expected_modules_present_when_built() {
        if !BUILT_WITH_KERNELS {
            return;
        }
        for name in [
            "adamw",
            "attention",
            "bce",
            "bias",
            "bias_gelu",
            "cast",
            "cross_entropy",
            "dropout",
            "elementwise",
            "embedding",
            "gather",
            "grad_norm",
            "layer_norm",
            "reduce",
            "rotary",
        ] {
            assert!(module_image(name).is_some(), "missing kernel module {name}");
        }
    }
}
