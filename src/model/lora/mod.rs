//! LoRA adapters (Hu et al. 2021): a frozen linear layer `y = x·Wᵀ + b` gains a trainable
//! low-rank update `y += (α/r)·dropout(x)·Aᵀ·Bᵀ`, with `A: [r, in]` initialised like PEFT
//! (Kaiming-uniform, bound `1/√in`) and `B: [out, r]` zero, so a fresh adapter leaves the
//! model's outputs unchanged. Names follow PEFT: `<layer>.lora_A.weight`, `<layer>.lora_B.weight`.
//!
//! Imports go one way: `model::linear` owns the adapter it applies ([`LoraAdapter`] and its
//! forward update) and imports nothing from here; this module builds, merges and saves
//! adapters on top of `model::esm2` and `model::linear` (lora → esm2 → linear, never back).
//!
//! * `adapter.rs`: the hyper-parameters ([`LoraConfig`]), the initialisation and the merge
//!   maths of one adapter;
//! * `attach.rs`: [`attach`] puts an adapter on the chosen projections of every encoder
//!   layer; [`freeze_except`] then freezes every base weight (`requires_grad = false`: no
//!   gradient buffer, and the optimizer keeps no state for it); [`merge_into_base`] folds
//!   the adapters into the base weights, `W ← W + (α/r)·B·A`, for inference;
//!   [`merged_tensors`] gives the same merged weights without touching the model (what a
//!   saved Hugging Face directory holds);
//! * `peft.rs`: PEFT input/output. [`save_adapters`] writes the adapters alone as PEFT does
//!   (`save_pretrained` of a `PeftModel`) for the class the base is saved as
//!   ([`PeftBaseClass`]): `adapter_model.safetensors` with keys
//!   `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` (plus any trainable
//!   head as `base_model.model.<module path>.weight`, PEFT's `modules_to_save`),
//!   `adapter_config.json` with only keys PEFT knows (`peft_type` LORA, `r`, `lora_alpha`,
//!   `lora_dropout`, `target_modules` in Hugging Face module names), the engine's record in
//!   `qf_engine_adapter.json`, and ESM-2's tokenizer files. [`load_adapters`] reads such a
//!   directory back onto a model, with or without the `esm.` level in the keys;
//! * `save.rs`: how a model with adapters goes into the engine's own checkpoints
//!   ([`SaveMode`]: merged, unmerged with a `config.json` record, or the base alone).

mod adapter;
mod attach;
mod peft;
mod save;

pub use super::linear::LoraAdapter;
pub use adapter::{is_adapter, LoraConfig, LORA_TARGETS};
pub use attach::{attach, attached_config, freeze_except, merge_into_base, merged_tensors, target_linear};
pub use peft::{
    hf_module, load_adapters, peft_target_modules, save_adapters, save_adapters_named, PeftBaseClass,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ENGINE_ADAPTER_FILE, PEFT_PREFIX,
};
pub use save::{annotate_config, attach_from_config, tensors_for_save, SaveMode, CONFIG_KEY};
