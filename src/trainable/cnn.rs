//! A convolutional classifier for image-shaped samples: `conv_blocks`
//! blocks of convolution (`channels`, doubling each block; `kernel_size`,
//! "same" padding), optional batch norm, ReLU, optional 2x2 pooling and
//! dropout; then `hidden_layers` fully connected layers and the output.
//!
//! Weights are drawn from the trial's seed (PyTorch's default bounds,
//! ±1/sqrt(fan_in)); batch-norm running statistics are saved with the
//! weights, so a restart continues with them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::fit::{Network, WEIGHTS_FILE};
use super::kind::{backed, first_line, Loaded, Model, ModelKind, Predictor};
use super::mlp::check_layers;
use super::size::Footprint;
use super::{Shape, TrainError, Trainable, TrialContext};
use crate::config::fields::{Expect, Field, Keys};
use crate::config::{Config, Params, SearchSpace};
use crate::data::{DataError, Dataset};
use crate::space::{Domain, ParamValue};

/// `[model] kind = "cnn"`.
pub const KIND: ModelKind = ModelKind {
    name: "cnn",
    parse: |_| Ok(Box::new(CnnModel)),
    predictor: Some(Predictor { weights: WEIGHTS_FILE, load: load_best }),
};

/// Pooling kinds of `kind = "cnn"`, as `pooling` names them.
pub const POOLINGS: &[&str] = &["max", "avg", "none"];

/// The fields of `[model] kind = "cnn"`.
pub const MODEL_FIELDS: &[Field] = &[
    Field { name: "conv_blocks", expect: Expect::Int { min: 1, max: 8 }, default: || ParamValue::Int(2) },
    Field { name: "channels", expect: Expect::Int { min: 1, max: 1024 }, default: || ParamValue::Int(16) },
    Field { name: "kernel_size", expect: Expect::Int { min: 1, max: 15 }, default: || ParamValue::Int(3) },
    Field { name: "pooling", expect: Expect::OneOf(POOLINGS), default: || ParamValue::Str("max".into()) },
    Field { name: "batch_norm", expect: Expect::Bool, default: || ParamValue::Bool(true) },
    Field {
        name: "dropout",
        expect: Expect::Float { min: 0.0, min_open: false, max: Some(1.0) },
        default: || ParamValue::Float(0.0),
    },
    Field { name: "hidden_layers", expect: Expect::Int { min: 0, max: 64 }, default: || ParamValue::Int(1) },
    Field { name: "hidden_units", expect: Expect::Int { min: 1, max: 1 << 20 }, default: || ParamValue::Int(128) },
];

/// `[model] kind = "cnn"`: no settings besides its fields.
#[derive(Debug, Clone, Copy)]
pub struct CnnModel;

impl Model for CnnModel {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn model_keys(&self) -> Keys {
        Keys::Fields(MODEL_FIELDS)
    }

    fn fixed_under_pbt(&self) -> &'static [&'static str] {
        &[
            "conv_blocks",
            "channels",
            "kernel_size",
            "pooling",
            "batch_norm",
            "hidden_layers",
            "hidden_units",
            "optimizer",
        ]
    }

    fn check_space(&self, space: &SearchSpace, shape: &Shape) -> Result<(), String> {
        // The image's size is known only with the data (`run` checks the blocks then).
        CnnSpec::check_kernel(space)?;
        CnnSpec::too_large(space, shape).map_or(Ok(()), Err)
    }

    fn build(&self, config: &Config) -> Result<Arc<dyn Trainable>, DataError> {
        let data = Dataset::load(config)?;
        if data.shape.as_ref().is_none_or(|s| s.len() != 3) {
            return Err(DataError {
                file: config.data.source.samples_file(),
                offset: None,
                message: "model.kind = \"cnn\" needs image-shaped samples (fashion-mnist, or idx/npy samples of 2 \
                          or 3 dimensions each); this source gives flat rows"
                    .into(),
            });
        }
        Ok(Arc::new(CnnTrainable::new(Arc::new(data))))
    }

    fn boxed(&self) -> Box<dyn Model> {
        Box::new(*self)
    }
}

/// Loads a CNN from `best/` for `predict`.
fn load_best(dir: &Path, spec: serde_json::Value, held: u64) -> Result<Loaded, String> {
    let spec: CnnSpec = serde_json::from_value(spec).map_err(|e| format!("model.json `spec`: {e}"))?;
    spec.check().map_err(|m| format!("model.json `spec`: {m}"))?;
    backed(spec.footprint().parameters, held, WEIGHTS_FILE)?;
    let inputs = spec.input.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    let inputs = inputs.ok_or_else(|| format!("model.json: input {:?} is no image size", spec.input))?;
    let classes = spec.classes;
    let mut net = Cnn::new(spec, 0, Device::Cpu);
    net.restore_dir(dir).map_err(first_line)?;
    Ok(Loaded { net: Box::new(net), inputs, classes })
}

/// Pooling after each convolution block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// 2x2 max pooling.
    Max,
    /// 2x2 average pooling.
    Avg,
    /// None: the image keeps its size.
    None,
}

/// What a CNN looks like: enough to rebuild it for prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnSpec {
    /// Input channels, height and width.
    pub input: [usize; 3],
    /// Output channels of each convolution block.
    pub channels: Vec<usize>,
    /// Convolution kernel size (odd).
    pub kernel: usize,
    /// Pooling after each block.
    pub pooling: Pooling,
    /// Batch norm after each convolution.
    pub batch_norm: bool,
    /// Dropout after each block and each hidden layer (training only).
    pub dropout: f64,
    /// Hidden fully connected layers' widths.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

impl CnnSpec {
    /// Whether it can be built and run (a `model.json` may be damaged).
    pub fn check(&self) -> Result<(), String> {
        if self.input.contains(&0) || self.channels.contains(&0) {
            return Err(format!("input {:?}, channels {:?}: expected sizes of at least 1", self.input, self.channels));
        }
        if self.kernel.is_multiple_of(2) {
            return Err(format!("kernel {}: expected an odd size", self.kernel));
        }
        let halvings = if self.pooling == Pooling::None { 0 } else { self.channels.len() };
        if self.input[1] >> halvings.min(63) == 0 || self.input[2] >> halvings.min(63) == 0 {
            return Err(format!(
                "{halvings} pooled blocks shrink a {}x{} image to nothing",
                self.input[1], self.input[2]
            ));
        }
        check_layers(&self.hidden, self.classes, self.dropout)
    }

    /// The spec a trial's parameters describe on `shape`'s data.
    fn from_params(params: &Params, shape: &Shape) -> Result<Self, TrainError> {
        let input =
            shape.image.ok_or_else(|| TrainError::Invalid("kind = \"cnn\" needs image-shaped samples".into()))?;
        let int = |name: &str| {
            params
                .get(name)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| TrainError::Invalid(format!("parameter `{name}` missing")))
        };
        let blocks = int("conv_blocks")?.clamp(0, 16) as usize;
        let first = int("channels")?.max(1) as usize;
        let kernel = int("kernel_size")?.max(1) as usize;
        if kernel.is_multiple_of(2) {
            return Err(TrainError::Invalid(format!("kernel_size {kernel}: expected an odd size")));
        }
        let pooling = match params.get("pooling").and_then(|v| v.as_str()) {
            Some("avg") => Pooling::Avg,
            Some("none") => Pooling::None,
            _ => Pooling::Max,
        };
        let spec = CnnSpec {
            input,
            channels: (0..blocks).map(|b| first << b.min(8)).collect(),
            kernel,
            pooling,
            batch_norm: params.get("batch_norm").and_then(|v| v.as_bool()).unwrap_or(true),
            dropout: params.get("dropout").and_then(|v| v.as_f64()).unwrap_or(0.0),
            hidden: vec![int("hidden_units")?.max(1) as usize; int("hidden_layers")?.clamp(0, 64) as usize],
            classes: shape.classes,
        };
        if spec.flat() == 0 {
            return Err(TrainError::Invalid(format!(
                "{} pooled blocks shrink a {}x{} image to nothing; use fewer blocks or pooling = \"none\"",
                blocks, input[1], input[2]
            )));
        }
        Ok(spec)
    }

    /// Its parameters and activations, before it is built.
    pub fn footprint(&self) -> Footprint {
        let (mut parameters, mut activations) = (0.0, 0.0);
        let (mut c_in, mut h, mut w) = (self.input[0] as f64, self.input[1] as f64, self.input[2] as f64);
        let k2 = self.kernel as f64 * self.kernel as f64;
        for &c in &self.channels {
            let c = c as f64;
            parameters += c_in * c * k2 + c + if self.batch_norm { 2.0 * c } else { 0.0 };
            // The convolution's output, batch norm's, ReLU's; then pooled and dropped out.
            activations += c * h * w * if self.batch_norm { 3.0 } else { 2.0 };
            if self.pooling != Pooling::None {
                (h, w) = ((h / 2.0).floor().max(1.0), (w / 2.0).floor().max(1.0));
            }
            activations += 2.0 * c * h * w;
            c_in = c;
        }
        let sizes: Vec<f64> = std::iter::once(c_in * h * w)
            .chain(self.hidden.iter().map(|&u| u as f64))
            .chain([self.classes as f64])
            .collect();
        parameters += sizes.windows(2).map(|p| p[0] * p[1] + p[1]).sum::<f64>();
        activations += self.hidden.iter().map(|&u| 3.0 * u as f64).sum::<f64>() + self.classes as f64;
        Footprint { parameters, activations }
    }

    /// The spec for `params`, refused when it is too large to train.
    fn checked(params: &Params, shape: &Shape) -> Result<Self, TrainError> {
        let spec = Self::from_params(params, shape)?;
        spec.footprint().check(shape.batch(params)).map_err(TrainError::Invalid)?;
        Ok(spec)
    }

    /// Refuses a `kernel_size` that may be even (the image keeps its size
    /// only with odd kernels): a data-independent part of [`Self::check_shapes`].
    fn check_kernel(space: &SearchSpace) -> Result<(), String> {
        let even = match space.domain("kernel_size") {
            Some(Domain::Int { low, high, .. }) => {
                [*low, low.saturating_add(1)].into_iter().find(|k| k % 2 == 0 && k <= high)
            }
            Some(Domain::Fixed(v)) => v.as_i64().filter(|k| k % 2 == 0),
            Some(Domain::Choice(vs)) => vs.iter().filter_map(ParamValue::as_i64).find(|k| k % 2 == 0),
            _ => None,
        };
        match even {
            Some(k) => Err(format!(
                "kernel_size: {k} is among its values; expected odd sizes only (the image keeps its size), \
                 e.g. {{ choice = [3, 5, 7] }}"
            )),
            None => Ok(()),
        }
    }

    /// Refuses a space some of whose networks cannot be built on `shape`'s
    /// data, whatever the other parameters: no image-shaped samples, an
    /// even `kernel_size`, or more pooled `conv_blocks` than the image has
    /// halvings. (Its trials would each fail as invalid.)
    fn check_shapes(space: &SearchSpace, shape: &Shape) -> Result<(), String> {
        let Some(input) = shape.image else { return Err("kind = \"cnn\" needs image-shaped samples".into()) };
        // The integers a domain may give: its values, or its range's ends.
        let ints = |name: &str| -> Vec<i64> {
            match space.domain(name) {
                Some(Domain::Fixed(v)) => v.as_i64().into_iter().collect(),
                Some(Domain::Choice(vs)) => vs.iter().filter_map(ParamValue::as_i64).collect(),
                Some(Domain::Int { low, high, .. }) => vec![*low, *high],
                _ => Vec::new(),
            }
        };
        Self::check_kernel(space)?;
        let pooled = match space.domain("pooling") {
            Some(Domain::Fixed(v)) => v.as_str() != Some("none"),
            Some(Domain::Choice(vs)) => vs.iter().any(|v| v.as_str() != Some("none")),
            _ => true,
        };
        let most = ints("conv_blocks").into_iter().max().unwrap_or(0).clamp(0, 63) as u32;
        let fits = (input[1].min(input[2]) >> most) > 0;
        if pooled && !fits {
            let can = input[1].min(input[2]).checked_ilog2().unwrap_or(0);
            return Err(format!(
                "conv_blocks: {most} pooled blocks halve a {}x{} image to nothing; expected at most {can}, or \
                 pooling = \"none\"",
                input[1], input[2]
            ));
        }
        Ok(())
    }

    /// The smallest network `space` allows on `shape`'s data, when it is too large to train.
    pub fn too_large(space: &SearchSpace, shape: &Shape) -> Option<String> {
        let keys = [
            "conv_blocks",
            "channels",
            "kernel_size",
            "pooling",
            "batch_norm",
            "hidden_layers",
            "hidden_units",
            "batch_size",
        ];
        super::size::too_large(space, &keys, |p| {
            Some(Self::from_params(p, shape).ok()?.footprint().training_bytes(shape.batch(p)))
        })
    }

    /// Height and width after the blocks.
    fn out_size(&self) -> (usize, usize) {
        let halvings = if self.pooling == Pooling::None { 0 } else { self.channels.len() };
        (self.input[1] >> halvings.min(63), self.input[2] >> halvings.min(63))
    }

    /// Features entering the fully connected layers.
    fn flat(&self) -> usize {
        let (h, w) = self.out_size();
        self.channels.last().copied().unwrap_or(self.input[0]) * h * w
    }
}

/// A CNN's tensors, by name, in a fixed order.
pub struct Cnn {
    spec: CnnSpec,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Batch-norm running means and variances, two per block.
    buffers: Vec<(String, Tensor)>,
}

impl Cnn {
    /// A freshly initialised network drawn from `seed`.
    pub fn new(spec: CnnSpec, seed: u64, device: Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut names, mut params, mut buffers) = (Vec::new(), Vec::new(), Vec::new());
        let mut uniform = |fan_in: usize, shape: &[i64]| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: i64 = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            Tensor::from_slice(&v).view(shape).to_device(device).set_requires_grad(true)
        };
        let mut c_in = spec.input[0];
        for (b, &c_out) in spec.channels.iter().enumerate() {
            let k = spec.kernel as i64;
            let fan_in = c_in * spec.kernel * spec.kernel;
            names.push(format!("block{b}.conv.weight"));
            params.push(uniform(fan_in, &[c_out as i64, c_in as i64, k, k]));
            names.push(format!("block{b}.conv.bias"));
            params.push(uniform(fan_in, &[c_out as i64]));
            if spec.batch_norm {
                let ones = Tensor::ones([c_out as i64], (tch::Kind::Float, device));
                names.push(format!("block{b}.bn.weight"));
                params.push(ones.copy().set_requires_grad(true));
                names.push(format!("block{b}.bn.bias"));
                params.push(ones.zeros_like().set_requires_grad(true));
                buffers.push((format!("block{b}.bn.running_mean"), ones.zeros_like()));
                buffers.push((format!("block{b}.bn.running_var"), ones));
            }
            c_in = c_out;
        }
        let sizes: Vec<usize> =
            std::iter::once(spec.flat()).chain(spec.hidden.iter().copied()).chain([spec.classes]).collect();
        for (l, pair) in sizes.windows(2).enumerate() {
            names.push(format!("fc{l}.weight"));
            params.push(uniform(pair[0], &[pair[1] as i64, pair[0] as i64]));
            names.push(format!("fc{l}.bias"));
            params.push(uniform(pair[0], &[pair[1] as i64]));
        }
        Cnn { spec, names, params, buffers }
    }

    /// The first parameter index of the fully connected layers.
    fn fc_start(&self) -> usize {
        self.spec.channels.len() * if self.spec.batch_norm { 4 } else { 2 }
    }
}

impl Network for Cnn {
    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let s = &self.spec;
        let [c, h, w] = s.input.map(|d| d as i64);
        let mut x = xs.view([-1, c, h, w]);
        let per_block = if s.batch_norm { 4 } else { 2 };
        let pad = (s.kernel / 2) as i64;
        for b in 0..s.channels.len() {
            let p = &self.params[b * per_block..];
            x = x.conv2d(&p[0], Some(&p[1]), [1, 1], [pad, pad], [1, 1], 1);
            if s.batch_norm {
                let (mean, var) = (&self.buffers[2 * b].1, &self.buffers[2 * b + 1].1);
                x = x.batch_norm(Some(&p[2]), Some(&p[3]), Some(mean), Some(var), train, 0.1, 1e-5, false);
            }
            x = x.relu();
            x = match s.pooling {
                Pooling::Max => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
                Pooling::Avg => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>),
                Pooling::None => x,
            };
            if s.dropout > 0.0 {
                x = x.dropout(s.dropout, train);
            }
        }
        let mut x = x.flatten(1, -1);
        let fc = &self.params[self.fc_start()..];
        let layers = fc.len() / 2;
        for l in 0..layers {
            x = x.linear(&fc[2 * l], Some(&fc[2 * l + 1]));
            if l + 1 < layers {
                x = x.relu();
                if s.dropout > 0.0 {
                    x = x.dropout(s.dropout, train);
                }
            }
        }
        x
    }

    fn save(&self, file: &Path) -> std::io::Result<()> {
        let named: Vec<(String, Tensor)> = self
            .names
            .iter()
            .cloned()
            .zip(self.params.iter().map(|p| p.to_device(Device::Cpu)))
            .chain(self.buffers.iter().map(|(n, t)| (n.clone(), t.to_device(Device::Cpu))))
            .collect();
        Tensor::write_safetensors(&named, file).map_err(std::io::Error::other)
    }

    fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let targets =
            self.names.iter().zip(self.params.iter_mut()).chain(self.buffers.iter_mut().map(|(n, t)| (&*n, t)));
        for (name, p) in targets {
            let src = saved.get(name).ok_or_else(|| TrainError::Failed(format!("weights lack {name}")))?;
            tch::no_grad(|| p.f_copy_(src)).map_err(|e| TrainError::Failed(format!("restoring {name}: {e}")))?;
        }
        Ok(())
    }
}

/// Trains [`Cnn`]s on one shared data set of images.
pub struct CnnTrainable {
    data: Arc<Dataset>,
    device: Device,
}

impl CnnTrainable {
    /// A trainable over `data`, on CUDA when libtorch sees a GPU, else CPU.
    pub fn new(data: Arc<Dataset>) -> Self {
        CnnTrainable { data, device: crate::cuda::device() }
    }
}

impl Trainable for CnnTrainable {
    fn init_thread(&self, threads: u32) {
        tch::set_num_threads(threads as i32);
    }

    fn resident_bytes(&self) -> u64 {
        self.data.bytes()
    }

    fn check_space(&self, space: &SearchSpace) -> Result<(), String> {
        let shape = Shape::of(&self.data);
        CnnSpec::check_shapes(space, &shape)?;
        CnnSpec::too_large(space, &shape).map_or(Ok(()), Err)
    }

    fn describe(&self, params: &Params) -> Option<serde_json::Value> {
        let spec = CnnSpec::from_params(params, &Shape::of(&self.data)).ok()?;
        Some(serde_json::json!({
            "kind": KIND.name,
            "spec": spec,
            "weights": WEIGHTS_FILE,
            "class_names": self.data.class_names,
            "standardization": self.data.standardization,
            "feature_names": self.data.feature_names,
            "input": "flat samples as float32 (channels x height x width), as in the data files; apply `standardization` (if any) first",
        }))
    }

    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        let spec = CnnSpec::checked(ctx.params(), &Shape::of(&self.data))?;
        let mut cnn = Cnn::new(spec, ctx.seed(), self.device);
        super::fit::fit(ctx, &self.data, self.device, &mut cnn)
    }
}
