//! The built-in libtorch trainable: a multi-layer perceptron classifier.
//!
//! Weights are initialised from the trial's own seeded RNG and batches are
//! shuffled from a stream derived from (seed, epoch), so a trial restarted
//! from a checkpoint trains the same batches it would have trained. Dropout
//! masks come from libtorch's process-wide generator, reseeded per epoch:
//! exact with one slot, timing-dependent when slots train concurrently. The
//! data set arrives once per process as `Arc`s and is wrapped, not copied,
//! into tensors for each trial.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::fit::{read_named, Network};
use super::kind::{backed, first_line, Loaded, Model, ModelKind, Predictor};
use super::size::Footprint;
use super::{Shape, TrainError, Trainable, TrialContext};
use crate::config::fields::{Expect, Field, Keys};
use crate::config::{Config, Params, SearchSpace};
use crate::data::{DataError, Dataset};
use crate::space::ParamValue;

pub use super::fit::WEIGHTS_FILE;

/// `[model] kind = "mlp"`.
pub const KIND: ModelKind = ModelKind {
    name: "mlp",
    parse: |_| Ok(Box::new(MlpModel)),
    predictor: Some(Predictor { weights: WEIGHTS_FILE, load: load_best }),
};

/// The fields of `[model] kind = "mlp"`.
pub const MODEL_FIELDS: &[Field] = &[
    Field { name: "hidden_layers", expect: Expect::Int { min: 0, max: 64 }, default: || ParamValue::Int(1) },
    Field { name: "hidden_units", expect: Expect::Int { min: 1, max: 1 << 20 }, default: || ParamValue::Int(128) },
    Field {
        name: "dropout",
        expect: Expect::Float { min: 0.0, min_open: false, max: Some(1.0) },
        default: || ParamValue::Float(0.0),
    },
];

/// `[model] kind = "mlp"`: no settings besides its fields.
#[derive(Debug, Clone, Copy)]
pub struct MlpModel;

impl Model for MlpModel {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn model_keys(&self) -> Keys {
        Keys::Fields(MODEL_FIELDS)
    }

    fn fixed_under_pbt(&self) -> &'static [&'static str] {
        &["hidden_layers", "hidden_units", "optimizer"]
    }

    fn check_space(&self, space: &SearchSpace, shape: &Shape) -> Result<(), String> {
        MlpSpec::too_large(space, shape).map_or(Ok(()), Err)
    }

    fn build(&self, config: &Config) -> Result<Arc<dyn Trainable>, DataError> {
        Ok(Arc::new(MlpTrainable::new(Arc::new(Dataset::load(config)?))))
    }

    fn boxed(&self) -> Box<dyn Model> {
        Box::new(*self)
    }
}

/// Loads an MLP from `best/` for `predict`.
fn load_best(dir: &Path, spec: serde_json::Value, held: u64) -> Result<Loaded, String> {
    let spec: MlpSpec = serde_json::from_value(spec).map_err(|e| format!("model.json `spec`: {e}"))?;
    spec.check().map_err(|m| format!("model.json `spec`: {m}"))?;
    backed(spec.footprint().parameters, held, WEIGHTS_FILE)?;
    let (inputs, classes) = (spec.inputs, spec.classes);
    let mut net = Mlp::new(spec, 0, Device::Cpu);
    net.restore_dir(dir).map_err(first_line)?;
    Ok(Loaded { net: Box::new(net), inputs, classes })
}

/// What a network spec must hold to be built and run: no panic inside
/// libtorch for a damaged `model.json`.
pub(crate) fn check_layers(hidden: &[usize], classes: usize, dropout: f64) -> Result<(), String> {
    if let Some(h) = hidden.iter().find(|&&h| h == 0) {
        return Err(format!("a hidden layer of {h} units: expected at least 1"));
    }
    if classes < 2 {
        return Err(format!("{classes} classes: expected at least 2"));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(format!("dropout {dropout}: expected at least 0 and below 1"));
    }
    Ok(())
}

/// What an MLP looks like: enough to rebuild it for prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpSpec {
    /// Input features.
    pub inputs: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
    /// Dropout after each hidden layer (training only).
    pub dropout: f64,
}

impl MlpSpec {
    /// Whether it can be built and run (a `model.json` may be damaged).
    pub fn check(&self) -> Result<(), String> {
        if self.inputs == 0 {
            return Err("0 inputs: expected at least 1".into());
        }
        check_layers(&self.hidden, self.classes, self.dropout)
    }

    /// The spec a trial's parameters describe for `shape`'s data.
    pub fn from_params(params: &Params, shape: &Shape) -> Result<Self, TrainError> {
        let int = |name: &str| {
            params
                .get(name)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| TrainError::Invalid(format!("parameter `{name}` missing or not an integer")))
        };
        let (layers, units) = (int("hidden_layers")?, int("hidden_units")?);
        if !(0..=64).contains(&layers) || !(1..=1 << 20).contains(&units) {
            return Err(TrainError::Invalid(format!("hidden_layers {layers} or hidden_units {units} out of range")));
        }
        Ok(MlpSpec {
            inputs: shape.features,
            hidden: vec![units as usize; layers as usize],
            classes: shape.classes,
            dropout: params.get("dropout").and_then(|v| v.as_f64()).unwrap_or(0.0),
        })
    }

    /// Its parameters and activations, before it is built.
    pub fn footprint(&self) -> Footprint {
        let sizes = self.sizes();
        // In f64: a spec read from a file may be large enough to wrap a usize product.
        let parameters = sizes.windows(2).map(|p| p[0] as f64 * p[1] as f64 + p[1] as f64).sum();
        // A hidden layer's output, its ReLU and dropout mask; the logits.
        let activations = self.hidden.iter().map(|&u| 3.0 * u as f64).sum::<f64>() + self.classes as f64;
        Footprint { parameters, activations }
    }

    /// The spec for `params`, refused when it is too large to train.
    pub fn checked(params: &Params, shape: &Shape) -> Result<Self, TrainError> {
        let spec = Self::from_params(params, shape)?;
        spec.footprint().check(shape.batch(params)).map_err(TrainError::Invalid)?;
        Ok(spec)
    }

    /// The smallest network `space` allows on `shape`'s data, when it is too large to train.
    pub fn too_large(space: &SearchSpace, shape: &Shape) -> Option<String> {
        super::size::too_large(space, &["hidden_layers", "hidden_units", "batch_size"], |p| {
            Some(Self::from_params(p, shape).ok()?.footprint().training_bytes(shape.batch(p)))
        })
    }

    /// Layer sizes from input to output.
    fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.inputs).chain(self.hidden.iter().copied()).chain([self.classes]).collect()
    }
}

/// An MLP's weights: one (weight, bias) pair per layer.
pub struct Mlp {
    spec: MlpSpec,
    params: Vec<Tensor>,
}

impl Mlp {
    /// A freshly initialised network (PyTorch's default `Linear` init:
    /// uniform in ±1/sqrt(fan_in)), drawn from `seed`.
    pub fn new(spec: MlpSpec, seed: u64, device: Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sizes = spec.sizes();
        let mut params = Vec::new();
        for pair in sizes.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut uniform = |n: usize, shape: &[i64]| {
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
                Tensor::from_slice(&v).view(shape).to_device(device).set_requires_grad(true)
            };
            params.push(uniform(fan_in * fan_out, &[fan_out as i64, fan_in as i64]));
            params.push(uniform(fan_out, &[fan_out as i64]));
        }
        Mlp { spec, params }
    }

    /// Loads weights written by [`Mlp::save`].
    pub fn load(spec: MlpSpec, file: &Path, device: Device) -> Result<Self, TrainError> {
        let mut mlp = Mlp::new(spec, 0, device);
        let saved = read_named(file)?;
        mlp.restore(&saved)?;
        Ok(mlp)
    }

    fn names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.params.len()).map(|i| format!("layer{}.{}", i / 2, if i % 2 == 0 { "weight" } else { "bias" }))
    }

    fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let names: Vec<String> = self.names().collect();
        for (name, p) in names.iter().zip(self.params.iter_mut()) {
            let src = saved.get(name).ok_or_else(|| TrainError::Failed(format!("weights lack {name}")))?;
            tch::no_grad(|| p.f_copy_(src)).map_err(|e| TrainError::Failed(format!("restoring {name}: {e}")))?;
        }
        Ok(())
    }

    /// Writes the weights as safetensors.
    pub fn save(&self, file: &Path) -> std::io::Result<()> {
        let named: Vec<(String, Tensor)> =
            self.names().zip(self.params.iter().map(|p| p.to_device(Device::Cpu))).collect();
        Tensor::write_safetensors(&named, file).map_err(std::io::Error::other)
    }

    /// Logits for a batch of inputs.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let layers = self.params.len() / 2;
        let mut h = xs.shallow_clone();
        for l in 0..layers {
            h = h.linear(&self.params[2 * l], Some(&self.params[2 * l + 1]));
            if l + 1 < layers {
                h = h.relu();
                if self.spec.dropout > 0.0 {
                    h = h.dropout(self.spec.dropout, train);
                }
            }
        }
        h
    }

    /// Class probabilities for a batch of inputs.
    pub fn predict(&self, xs: &Tensor) -> Tensor {
        tch::no_grad(|| self.forward(xs, false).softmax(-1, Kind::Float))
    }
}

/// Trains [`Mlp`]s on one shared data set.
pub struct MlpTrainable {
    data: Arc<Dataset>,
    device: Device,
}

impl MlpTrainable {
    /// A trainable over `data`, on CUDA when libtorch sees a GPU, else CPU.
    pub fn new(data: Arc<Dataset>) -> Self {
        MlpTrainable { data, device: crate::cuda::device() }
    }

    /// The device trials train on.
    pub fn device(&self) -> Device {
        self.device
    }
}

impl Trainable for MlpTrainable {
    fn init_thread(&self, threads: u32) {
        tch::set_num_threads(threads as i32);
    }

    fn resident_bytes(&self) -> u64 {
        self.data.bytes()
    }

    fn check_space(&self, space: &SearchSpace) -> Result<(), String> {
        MlpModel.check_space(space, &Shape::of(&self.data))
    }

    fn describe(&self, params: &Params) -> Option<serde_json::Value> {
        let spec = MlpSpec::from_params(params, &Shape::of(&self.data)).ok()?;
        Some(serde_json::json!({
            "kind": KIND.name,
            "spec": spec,
            "weights": WEIGHTS_FILE,
            "class_names": self.data.class_names,
            "standardization": self.data.standardization,
            "feature_names": self.data.feature_names,
            "input": "features as float32, as in the data files; apply `standardization` (if any) before the network",
        }))
    }

    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        let spec = MlpSpec::checked(ctx.params(), &Shape::of(&self.data))?;
        let mut mlp = Mlp::new(spec, ctx.seed(), self.device);
        super::fit::fit(ctx, &self.data, self.device, &mut mlp)
    }
}

impl Network for Mlp {
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        Mlp::forward(self, xs, train)
    }
    fn save(&self, file: &Path) -> std::io::Result<()> {
        Mlp::save(self, file)
    }
    fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        Mlp::restore(self, saved)
    }
}
