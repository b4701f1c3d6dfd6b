//! The parameter store: every weight of a model under its Hugging Face name, in the
//! order it was created. Model structs keep `ParamId`s into it, so checkpoints, the
//! optimizer, freezing and device moves all work on one flat list.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};

use crate::tensor::{Device, Tensor};

/// Index of a parameter in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

/// Named parameters.
#[derive(Default, Clone)]
pub struct Params {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    /// Whether weight decay applies (not to biases, LayerNorm and embeddings).
    decay: Vec<bool>,
    index: HashMap<String, usize>,
}

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    /// Register a trainable parameter.
    pub fn add(&mut self, name: &str, tensor: Tensor, decay: bool) -> Result<ParamId> {
        if self.index.contains_key(name) {
            bail!("parameter `{name}` is registered twice");
        }
        let id = self.tensors.len();
        self.names.push(name.to_string());
        self.tensors.push(tensor.with_requires_grad(true));
        self.decay.push(decay);
        self.index.insert(name.to_string(), id);
        Ok(ParamId(id))
    }

    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.tensors[id.0]
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut Tensor {
        &mut self.tensors[id.0]
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.0]
    }

    pub fn decays(&self, id: ParamId) -> bool {
        self.decay[id.0]
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.index.get(name).map(|&i| ParamId(i))
    }

    pub fn by_name(&self, name: &str) -> Result<&Tensor> {
        self.id(name).map(|id| self.get(id)).ok_or_else(|| anyhow!("no parameter named `{name}`"))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.tensors.len()).map(ParamId)
    }

    /// `(name, tensor)` in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// Replace a parameter's value, keeping its trainable flag; the shape must match.
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let old = &self.tensors[id.0];
        if old.shape() != value.shape() {
            bail!("parameter `{}` has shape {:?}, got {:?}", self.names[id.0], old.shape(), value.shape());
        }
        let trainable = old.requires_grad();
        self.tensors[id.0] = value.with_requires_grad(trainable);
        Ok(())
    }

    /// Freeze or unfreeze one parameter.
    pub fn set_trainable(&mut self, id: ParamId, on: bool) {
        self.tensors[id.0].set_requires_grad(on);
    }

    /// Number of elements in all parameters, and in the trainable ones.
    pub fn counts(&self) -> (usize, usize) {
        let total = self.tensors.iter().map(Tensor::numel).sum();
        let trainable = self.tensors.iter().filter(|t| t.requires_grad()).map(Tensor::numel).sum();
        (total, trainable)
    }

    /// Move every parameter to `device` (tensor ids change; `ParamId`s do not).
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        for t in &mut self.tensors {
            *t = t.to_device(device)?;
        }
        Ok(())
    }

    /// Convert every float parameter to `dtype` on the CPU (f64 for reference checks).
    pub fn to_dtype(&mut self, dtype: crate::tensor::DType) -> Result<()> {
        for t in &mut self.tensors {
            let trainable = t.requires_grad();
            *t = t.to_dtype(dtype)?.with_requires_grad(trainable);
        }
        Ok(())
    }
}
