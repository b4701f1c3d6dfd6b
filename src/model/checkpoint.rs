//! Safetensors input and output for checkpoints.
//!
//! Reading: files are memory-mapped (`memmap2`) and parsed by the `safetensors` crate;
//! a truncated or corrupt file, a missing tensor, a wrong shape or a non-float dtype is
//! an error that names the file and the tensor. Hugging Face name variants are resolved
//! here: with or without the `esm.` prefix, and `LayerNorm.gamma/beta` for
//! `LayerNorm.weight/bias` (what `save_pretrained` of transformers 5 writes).
//!
//! Writing is atomic: bytes go to a temporary file in the same directory, are synced,
//! then renamed over the target, so a crash never leaves a half-written checkpoint.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};

/// A named tensor held as little-endian bytes, ready for `safetensors::serialize`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NamedTensor {
    pub fn f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        NamedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn u8(name: impl Into<String>, shape: &[usize], values: &[u8]) -> Self {
        NamedTensor { name: name.into(), dtype: Dtype::U8, shape: shape.to_vec(), data: values.to_vec() }
    }

    /// A 1-D f32 tensor.
    pub fn f32_1d(name: impl Into<String>, values: &[f32]) -> Self {
        NamedTensor::f32(name, &[values.len()], values)
    }

    /// A 1-D u8 tensor.
    pub fn u8_1d(name: impl Into<String>, values: &[u8]) -> Self {
        NamedTensor::u8(name, &[values.len()], values)
    }

    pub fn i64(name: impl Into<String>, shape: &[usize], values: &[i64]) -> Self {
        NamedTensor {
            name: name.into(),
            dtype: Dtype::I64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename). On failure the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(describe_write_error(e, path));
    }
    Ok(())
}

/// An I/O error of a write, with what to do when the disk or a size limit is the cause.
pub fn describe_write_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT));
    let hint = if full {
        " — the disk is full, or a quota or file-size limit (ulimit -f) was reached; free space and retry"
    } else {
        ""
    };
    anyhow::anyhow!("writing {}: {e}{hint}", path.display())
}

/// Serialise tensors (with optional string metadata) to a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(&str, &NamedTensor)> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let bytes = safetensors::serialize(views, metadata).with_context(|| format!("serialising {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// A memory-mapped safetensors file.
pub struct MappedSafetensors {
    path: PathBuf,
    mmap: Mmap,
}

impl MappedSafetensors {
    pub fn open(path: &Path) -> Result<MappedSafetensors> {
        let file = File::open(path)
            .with_context(|| format!("{}: cannot open (is the checkpoint complete?)", path.display()))?;
        // Safety: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let m = MappedSafetensors { path: path.to_path_buf(), mmap };
        m.tensors()?;
        Ok(m)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header and data (cheap: parsing reads only the header).
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors file ({e}); it may be truncated or corrupt",
                self.path.display()
            )
        })
    }

    /// String metadata of the header.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(&self.mmap)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", self.path.display()))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.tensors()?.names().into_iter().map(String::from).collect())
    }

    /// The first of `candidates` present in the file.
    pub fn find(&self, candidates: &[String]) -> Result<Option<String>> {
        let st = self.tensors()?;
        Ok(candidates.iter().find(|c| st.tensor(c).is_ok()).cloned())
    }

    /// Tensor `name` as f32 values, checking its shape. f32, f16, bf16 and f64 are
    /// converted; any other dtype is an error.
    pub fn read_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let st = self.tensors()?;
        let view =
            st.tensor(name).map_err(|_| anyhow::anyhow!("{}: tensor `{name}` is missing", self.path.display()))?;
        if view.shape() != expected_shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                self.path.display(),
                view.shape(),
                expected_shape
            );
        }
        view_to_f32(&view).with_context(|| format!("{}: tensor `{name}`", self.path.display()))
    }

    /// Raw view of tensor `name` (for non-float state such as 8-bit codes).
    pub fn with_view<R>(&self, name: &str, f: impl FnOnce(&TensorView<'_>) -> Result<R>) -> Result<R> {
        let st = self.tensors()?;
        let view =
            st.tensor(name).map_err(|_| anyhow::anyhow!("{}: tensor `{name}` is missing", self.path.display()))?;
        f(&view)
    }
}

/// Decode a float tensor view to f32 (the mapped bytes need not be aligned).
pub fn view_to_f32(view: &TensorView<'_>) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        other => bail!("has dtype {other:?}; model weights must be floating point (f32, f16, bf16 or f64)"),
    })
}

/// Whether weights holding NaN or ±Inf may be loaded (`--allow-nonfinite`, for inspecting a
/// broken checkpoint). Off by default: such a model predicts NaN for every input, and a
/// run resumed from such a state trains on NaN, so the load is refused instead.
static ALLOW_NONFINITE: AtomicBool = AtomicBool::new(false);

/// Set the process-wide policy for non-finite weights (the CLI's `--allow-nonfinite`).
pub fn set_allow_nonfinite(allow: bool) {
    ALLOW_NONFINITE.store(allow, Ordering::Relaxed);
}

/// Count the NaN and infinite values of float tensor `name` (0 for non-float tensors).
fn count_nonfinite(view: &TensorView<'_>) -> (usize, usize) {
    let mut nan = 0;
    let mut inf = 0;
    let mut tally = |x: f64| {
        if x.is_nan() {
            nan += 1;
        } else if x.is_infinite() {
            inf += 1;
        }
    };
    let d = view.data();
    match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).for_each(|c| tally(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)),
        Dtype::F16 => d.chunks_exact(2).for_each(|c| tally(half::f16::from_le_bytes([c[0], c[1]]).to_f64())),
        Dtype::BF16 => d.chunks_exact(2).for_each(|c| tally(half::bf16::from_le_bytes([c[0], c[1]]).to_f64())),
        Dtype::F64 => d.chunks_exact(8).for_each(|c| tally(f64::from_le_bytes(c.try_into().expect("8 bytes")))),
        _ => {}
    }
    (nan, inf)
}

impl MappedSafetensors {
    /// Refuse the file when any of the float tensors `names` holds NaN or ±Inf (unless
    /// [`set_allow_nonfinite`] allowed it): the error names every such tensor with its
    /// counts. `what` says what the file is, for the message.
    pub fn check_finite<'a>(&self, names: impl IntoIterator<Item = &'a str>, what: &str) -> Result<()> {
        if ALLOW_NONFINITE.load(Ordering::Relaxed) {
            return Ok(());
        }
        let st = self.tensors()?;
        let mut bad = Vec::new();
        for name in names {
            let Ok(view) = st.tensor(name) else { continue };
            let (nan, inf) = count_nonfinite(&view);
            if nan + inf > 0 {
                let n: usize = view.shape().iter().product();
                bad.push(format!("`{name}`: {nan} NaN and {inf} infinite of {n} values"));
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let shown = bad.len().min(10);
        bail!(
            "{}: {what} holds non-finite values in {} tensor(s), so it would compute NaN:\n  {}{}\n\
             (pass --allow-nonfinite to load it anyway, e.g. to inspect it)",
            self.path.display(),
            bad.len(),
            bad[..shown].join("\n  "),
            if bad.len() > shown { format!("\n  … and {} more", bad.len() - shown) } else { String::new() }
        )
    }
}

/// Names under which a parameter called `name` may appear in a Hugging Face file.
pub fn hf_name_candidates(name: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    if let Some(rest) = name.strip_prefix("esm.") {
        out.push(rest.to_string());
    }
    let aliases: Vec<String> = out
        .iter()
        .filter_map(|n| {
            n.strip_suffix("LayerNorm.weight")
                .map(|p| format!("{p}LayerNorm.gamma"))
                .or_else(|| n.strip_suffix("LayerNorm.bias").map(|p| format!("{p}LayerNorm.beta")))
                .or_else(|| {
                    n.strip_suffix("emb_layer_norm_after.weight").map(|p| format!("{p}emb_layer_norm_after.gamma"))
                })
                .or_else(|| {
                    n.strip_suffix("emb_layer_norm_after.bias").map(|p| format!("{p}emb_layer_norm_after.beta"))
                })
        })
        .collect();
    out.extend(aliases);
    out
}
