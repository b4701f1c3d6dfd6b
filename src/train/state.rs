//! Training checkpoints: `<output>/checkpoints/step-NNNNNNN/` holds the model (a Hugging
//! Face directory: `config.json`, `model.safetensors`), the label map, and
//! `training_state.safetensors` (optimizer moments by parameter name, with the step,
//! position in the data, loss scale and counters as JSON metadata). Each directory is
//! written under a temporary name and renamed into place, then `checkpoints/latest` is
//! rewritten atomically, so an interrupted write never replaces a good checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::checkpoint::{write_atomic, write_safetensors, MappedSafetensors};
use crate::optim::{LossScaler, Optimizer};

pub const STATE_FILE: &str = "training_state.safetensors";
const STATE_KEY: &str = "qf_engine_training_state";

/// Where a run stands (saved with every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Micro-batches processed (forward + backward).
    pub micro_step: u64,
    /// Current epoch (0-based) and batches of it already done.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    pub seed: u64,
    pub loss_scaler: LossScaler,
    pub tokens_seen: u64,
    pub seqs_seen: u64,
    pub elapsed_s: f64,
}

pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

/// The latest checkpoint of a run, if any.
pub fn latest_checkpoint(output: &Path) -> Result<Option<PathBuf>> {
    let pointer = checkpoints_dir(output).join("latest");
    if !pointer.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).with_context(|| format!("reading {}", pointer.display()))?;
    let dir = checkpoints_dir(output).join(name.trim());
    if !dir.join(STATE_FILE).is_file() {
        bail!("{}: points to {}, which has no {STATE_FILE}", pointer.display(), dir.display());
    }
    Ok(Some(dir))
}

/// Write a checkpoint directory: `write_model` fills a fresh directory with the model,
/// then the training state is added and the directory is moved into place. Keeps the
/// newest `keep` checkpoints.
pub fn save_checkpoint(
    output: &Path,
    state: &TrainState,
    optimizer: &Optimizer,
    keep: usize,
    write_model: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root)?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let written = write_model(&tmp).and_then(|()| {
        let meta: HashMap<String, String> = [(STATE_KEY.to_string(), serde_json::to_string(state)?)].into();
        write_safetensors(&tmp.join(STATE_FILE), &optimizer.state_tensors()?, Some(meta))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        let previous = match latest_checkpoint(output) {
            Ok(Some(dir)) => format!("the previous checkpoint {} is intact", dir.display()),
            _ => "no earlier checkpoint exists".to_string(),
        };
        return Err(e.context(format!("checkpoint {name} was not written ({previous})")));
    }
    // A step saved twice (a periodic checkpoint, then the epoch's end at the same step)
    // gets a new name: removing the old directory first would leave `latest` pointing at
    // nothing if the process died before the rename.
    let (dir, name) = unused_name(&root, &name);
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving {} into place", dir.display()))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, keep.max(1), &name)?;
    Ok(dir)
}

/// `root/name`, or `root/name.1`, `.2`, … when that exists (names sort in saving order).
fn unused_name(root: &Path, name: &str) -> (PathBuf, String) {
    let mut candidate = name.to_string();
    let mut k = 0;
    while root.join(&candidate).exists() {
        k += 1;
        candidate = format!("{name}.{k}");
    }
    (root.join(&candidate), candidate)
}

/// Remove what a run killed in the middle of a write left under `checkpoints/`: a
/// half-written `.step-N.tmp` directory or a `.<file>.tmp-<pid>` file. Complete
/// checkpoints are never touched.
pub fn remove_interrupted_writes(output: &Path) -> Result<()> {
    let root = checkpoints_dir(output);
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(()) };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let leftover = name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".tmp-"));
        if !leftover {
            continue;
        }
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("removing {}, left by an interrupted write", path.display()))?;
    }
    Ok(())
}

/// Remove all but the newest `keep` checkpoint directories, never the one `latest` names.
fn prune(root: &Path, keep: usize, latest: &str) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-") && n != latest)
        })
        .collect();
    let keep = keep - 1; // `latest` is one of them
    dirs.sort();
    let n = dirs.len();
    for d in dirs.into_iter().take(n.saturating_sub(keep)) {
        std::fs::remove_dir_all(&d).with_context(|| format!("removing old checkpoint {}", d.display()))?;
    }
    Ok(())
}

/// Read the training state of a checkpoint directory (and its optimizer file).
pub fn load_state(dir: &Path) -> Result<(TrainState, MappedSafetensors)> {
    let file = MappedSafetensors::open(&dir.join(STATE_FILE))?;
    let meta = file.metadata()?;
    let json = meta.get(STATE_KEY).with_context(|| format!("{}: no {STATE_KEY} metadata", file.path().display()))?;
    let state: TrainState =
        serde_json::from_str(json).with_context(|| format!("{}: unreadable training state", file.path().display()))?;
    let names = file.names()?;
    file.check_finite(names.iter().map(String::as_str), "the optimizer state")?;
    Ok((state, file))
}
