//! `kind = "torchscript"`: a model written in PyTorch, exported with
//! `torch.jit.script(model).save(path)`, and trained here by the shared
//! loop of [`super::fit`]: the same optimizers, checkpoints, restarts and
//! pruning as the built-in networks.
//!
//! A worker reads the module file once and gives every trial its own copy,
//! starting from the exported weights (the trial's seed drives batch order
//! and dropout). A checkpoint saves the whole module (parameters and
//! buffers, e.g. batch-norm statistics) as [`MODULE_FILE`], which is also
//! what `best/` holds and what `gauntlet predict` and
//! `torch.jit.load` read back.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

use super::fit::Network;
use super::kind::{self, first_line, KeyError, Loaded, Model, Predictor, Section};
use super::{TrainError, Trainable, TrialContext};
use crate::config::fields::Keys;
use crate::config::{Config, Params};
use crate::data::{DataError, Dataset};

/// `[model] kind = "torchscript"`.
pub const KIND: kind::ModelKind = kind::ModelKind {
    name: "torchscript",
    parse: |model| Ok(Box::new(ScriptModel::take(model)?)),
    predictor: Some(Predictor { weights: MODULE_FILE, load: load_best }),
};

/// `[model] kind = "torchscript"`: the module file and how samples go in.
/// Its architecture is fixed; its hyperparameters are those of `[train]`.
#[derive(Debug, Clone)]
pub struct ScriptModel {
    /// The module file (relative to the config file until resolved).
    pub module: PathBuf,
    /// Feed samples as images `[N, C, H, W]` rather than flat rows.
    pub image_input: bool,
}

impl ScriptModel {
    /// Takes `module` and `input` out of `[model]`.
    fn take(model: &mut Section) -> Result<Self, KeyError> {
        let module = kind::take_text(model, "module")?.ok_or_else(|| {
            ("model.module".to_owned(), "missing; expected the path of a module saved by torch.jit.save".to_owned())
        })?;
        let image_input = match kind::take_text(model, "input")?.as_deref() {
            None | Some("flat") => false,
            Some("image") => true,
            Some(other) => {
                return Err((
                    "model.input".into(),
                    format!("`{other}`: expected \"flat\" ([N, features]) or \"image\" ([N, C, H, W])"),
                ))
            }
        };
        Ok(ScriptModel { module: PathBuf::from(module), image_input })
    }
}

impl Model for ScriptModel {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn model_keys(&self) -> Keys {
        Keys::Fields(&[])
    }

    fn settings(&self) -> &'static [&'static str] {
        &["module", "input"]
    }

    fn keys_note(&self) -> &'static str {
        " (a TorchScript module's architecture is fixed; its hyperparameters are those of [train])"
    }

    fn fixed_under_pbt(&self) -> &'static [&'static str] {
        // The optimizer's state is copied with the module.
        &["optimizer"]
    }

    fn resolve_paths(&mut self, base: &Path) {
        // An absolute path stays as it is: `join` replaces the base with it.
        self.module = base.join(&self.module);
    }

    fn check_files(&self) -> Result<(), KeyError> {
        if self.module.is_file() {
            return Ok(());
        }
        Err((
            "model.module".into(),
            format!(
                "{} does not exist or is not a file; expected a module saved by torch.jit.script(model).save(path) \
                 (scripts/export-torchscript writes an example)",
                self.module.display()
            ),
        ))
    }

    fn build(&self, config: &Config) -> Result<Arc<dyn Trainable>, DataError> {
        let data = Arc::new(Dataset::load(config)?);
        Ok(Arc::new(TorchScriptTrainable::new(data, &self.module, self.image_input)?))
    }

    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

/// Loads a module from `best/` for `predict`: the file is both the
/// network and its weights.
fn load_best(dir: &Path, spec: serde_json::Value, _held: u64) -> Result<Loaded, String> {
    let spec: ScriptSpec = serde_json::from_value(spec).map_err(|e| format!("model.json `spec`: {e}"))?;
    let inputs = spec.input.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    let inputs = inputs.ok_or_else(|| format!("model.json: input {:?} is no sample size", spec.input))?;
    let classes = spec.classes;
    if inputs == 0 || classes < 2 {
        return Err(format!("model.json `spec`: input {:?}, {classes} classes: no classifier", spec.input));
    }
    let net = ScriptNet::load(&dir.join(MODULE_FILE), spec.input, Device::Cpu).map_err(first_line)?;
    Ok(Loaded { net: Box::new(net), inputs, classes })
}

/// The module file inside a checkpoint and in `best/`.
pub const MODULE_FILE: &str = "module.pt";

/// The largest module file read (each worker holds it in memory).
pub const MAX_MODULE_BYTES: u64 = 4 << 30;

/// What a TorchScript classifier takes and gives: enough to predict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptSpec {
    /// The shape of one sample as the module takes it (`[features]` or `[C, H, W]`).
    pub input: Vec<usize>,
    /// Output classes (the module returns `[N, classes]` logits).
    pub classes: usize,
}

/// One trial's copy of a TorchScript module.
pub struct ScriptNet {
    module: CModule,
    params: Vec<Tensor>,
    shape: Vec<i64>,
    device: Device,
}

impl ScriptNet {
    /// Loads a module file for samples of shape `input`.
    pub fn load(file: &Path, input: Vec<usize>, device: Device) -> Result<Self, TrainError> {
        let module = CModule::load_on_device(file, device)
            .map_err(|e| TrainError::Failed(format!("loading TorchScript module {}: {e}", file.display())))?;
        Self::new(module, input, device)
    }

    /// Loads a module from the bytes of its file.
    fn from_bytes(bytes: &[u8], input: Vec<usize>, device: Device) -> Result<Self, TrainError> {
        let module = CModule::load_data_on_device(&mut Cursor::new(bytes), device)
            .map_err(|e| TrainError::Failed(format!("loading the TorchScript module: {e}")))?;
        Self::new(module, input, device)
    }

    fn new(module: CModule, input: Vec<usize>, device: Device) -> Result<Self, TrainError> {
        let params = trainable_params(&module)?;
        let shape = std::iter::once(-1).chain(input.iter().map(|&d| d as i64)).collect();
        Ok(ScriptNet { module, params, shape, device })
    }

    /// Logits for a batch, or the module's own error (wrong input shape,
    /// an output that is not one tensor).
    pub fn try_forward(&self, xs: &Tensor) -> Result<Tensor, String> {
        let xs =
            xs.f_view(self.shape.as_slice()).map_err(|e| format!("reshaping the input to {:?}: {e}", self.shape))?;
        self.module.forward_ts(&[xs]).map_err(|e| e.to_string())
    }
}

fn trainable_params(module: &CModule) -> Result<Vec<Tensor>, TrainError> {
    let named = module.named_parameters().map_err(|e| TrainError::Failed(format!("module parameters: {e}")))?;
    let params: Vec<Tensor> = named.into_iter().map(|(_, t)| t).filter(Tensor::requires_grad).collect();
    if params.is_empty() {
        return Err(TrainError::Invalid("the TorchScript module has no parameters that require grad".into()));
    }
    Ok(params)
}

impl Network for ScriptNet {
    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&self, xs: &Tensor, _train: bool) -> Tensor {
        // The module was checked on real samples when the worker loaded it,
        // so an error here is a crash of this attempt (restarted as one).
        self.try_forward(xs).unwrap_or_else(|e| panic!("TorchScript forward failed: {e}"))
    }

    fn set_train(&mut self, train: bool) {
        if train {
            self.module.set_train();
        } else {
            self.module.set_eval();
        }
    }

    fn save(&self, file: &Path) -> std::io::Result<()> {
        let named = self.module.named_parameters().map_err(std::io::Error::other)?;
        let named: Vec<(String, Tensor)> = named.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect();
        Tensor::write_safetensors(&named, file).map_err(std::io::Error::other)
    }

    fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let named = self.module.named_parameters().map_err(|e| TrainError::Failed(e.to_string()))?;
        for (name, p) in named {
            let src = saved.get(&name).ok_or_else(|| TrainError::Failed(format!("weights lack {name}")))?;
            tch::no_grad(|| p.shallow_clone().f_copy_(src))
                .map_err(|e| TrainError::Failed(format!("restoring {name}: {e}")))?;
        }
        Ok(())
    }

    fn save_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.module.save(dir.join(MODULE_FILE)).map_err(std::io::Error::other)
    }

    fn restore_dir(&mut self, dir: &Path) -> Result<(), TrainError> {
        let file = dir.join(MODULE_FILE);
        self.module = CModule::load_on_device(&file, self.device)
            .map_err(|e| TrainError::Failed(format!("loading {}: {e}", file.display())))?;
        self.params = trainable_params(&self.module)?;
        Ok(())
    }
}

/// Trains copies of one TorchScript module on one shared data set.
pub struct TorchScriptTrainable {
    data: Arc<Dataset>,
    module: Arc<Vec<u8>>,
    file: PathBuf,
    input: Vec<usize>,
    device: Device,
}

impl TorchScriptTrainable {
    /// Reads `file` and checks, on two validation samples, that the module
    /// takes samples of the data's shape (flat, or `[C, H, W]` with
    /// `image_input`) and returns one logit per class.
    pub fn new(data: Arc<Dataset>, file: &Path, image_input: bool) -> Result<Self, DataError> {
        let bad = |message: String| DataError { file: file.to_owned(), offset: None, message };
        let module = crate::files::read_at_most(file, MAX_MODULE_BYTES)
            .map_err(|e| bad(format!("cannot read the module: {e}")))?
            .ok_or_else(|| {
                bad(format!("the module is over {MAX_MODULE_BYTES} bytes: expected a TorchScript module"))
            })?;
        let input = if image_input {
            match &data.shape {
                Some(s) if s.len() == 3 => s.clone(),
                _ => {
                    return Err(bad("model.input = \"image\" needs image-shaped samples (fashion-mnist, or idx/npy \
                                    samples of 2 or 3 dimensions); this source gives flat rows"
                        .into()))
                }
            }
        } else {
            vec![data.features]
        };
        // Checked on the CPU: the coordinator builds this too, and must not
        // hold a GPU context for the whole sweep.
        let mut net = ScriptNet::from_bytes(&module, input.clone(), Device::Cpu)
            .map_err(|e| bad(format!("{} (expected a file saved by torch.jit.save)", first_line(e))))?;
        net.set_train(false);
        let rows = data.validation.rows().min(2) as i64;
        let xs =
            Tensor::from_slice(&data.validation.x[..rows as usize * data.features]).view([rows, data.features as i64]);
        let out = tch::no_grad(|| net.try_forward(&xs)).map_err(|e| {
            bad(format!("the module failed on samples of shape {input:?} (model.input = \"flat\" or \"image\"): {e}"))
        })?;
        if out.size() != [rows, data.classes as i64] || out.kind() != Kind::Float {
            return Err(bad(format!(
                "the module returned {:?} {:?} for {rows} samples; expected float logits of shape [{rows}, {}] \
                 (one per class)",
                out.kind(),
                out.size(),
                data.classes
            )));
        }
        let device = crate::cuda::device();
        Ok(TorchScriptTrainable { data, module: Arc::new(module), file: file.to_owned(), input, device })
    }
}

impl Trainable for TorchScriptTrainable {
    fn resident_bytes(&self) -> u64 {
        self.data.bytes()
    }

    fn init_thread(&self, threads: u32) {
        tch::set_num_threads(threads as i32);
    }

    fn describe(&self, _params: &Params) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "kind": KIND.name,
            "spec": ScriptSpec { input: self.input.clone(), classes: self.data.classes },
            "weights": MODULE_FILE,
            "exported_from": self.file,
            "class_names": self.data.class_names,
            "standardization": self.data.standardization,
            "feature_names": self.data.feature_names,
            "input": "features as float32, as in the data files; apply `standardization` (if any), reshape to \
                      [N, *spec.input] and call the module (torch.jit.load) for logits",
        }))
    }

    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        let mut net = ScriptNet::from_bytes(&self.module, self.input.clone(), self.device)?;
        super::fit::fit(ctx, &self.data, self.device, &mut net)
    }
}
