//! Models: the ESM-2 encoder, its heads, LoRA adapters, and checkpoints in the Hugging
//! Face layout.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod contact;
pub mod contact_model;
pub mod esm2;
pub mod heads;
pub mod init;
pub mod inputs;
pub mod linear;
pub mod lora;
pub mod mlm;
pub mod params;
pub mod pre_fix_vocab;
pub mod pretrained;
pub mod tokenizer_files;

pub use classifier::SequenceClassifier;
pub use config::EsmConfig;
pub use contact_model::ContactModel;
pub use heads::{HeadKind, Pooling};
pub use inputs::ModelInputs;
pub use mlm::MaskedLm;
pub use params::{ParamId, Params};
