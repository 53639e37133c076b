//! The training loop every built-in libtorch classifier shares: seeded
//! batch order, the optimizer of [`super::optim`], a report per epoch, and
//! checkpoints of weights and optimizer state that a restart resumes from.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::optim::{Optimizer, OPTIMIZERS};
use super::{Stop, TrainError, TrialContext};
use crate::config::fields::{Expect, Field};
use crate::data::{Dataset, Split};
use crate::space::ParamValue;

/// The fields of `[train]` this loop reads, for every kind that trains with it.
pub const TRAIN_FIELDS: &[Field] = &[
    Field { name: "optimizer", expect: Expect::OneOf(OPTIMIZERS), default: || ParamValue::Str("adam".into()) },
    Field {
        name: "lr",
        expect: Expect::Float { min: 0.0, min_open: true, max: None },
        default: || ParamValue::Float(1e-3),
    },
    Field { name: "batch_size", expect: Expect::Int { min: 1, max: 1 << 24 }, default: || ParamValue::Int(128) },
    Field {
        name: "momentum",
        expect: Expect::Float { min: 0.0, min_open: false, max: Some(1.0) },
        default: || ParamValue::Float(0.9),
    },
    Field {
        name: "weight_decay",
        expect: Expect::Float { min: 0.0, min_open: false, max: None },
        default: || ParamValue::Float(0.0),
    },
];

/// The metrics this loop reports each epoch.
pub const METRICS: &[&str] = &["val_accuracy", "val_loss", "train_loss"];

/// The weights file inside a checkpoint and in `best/`.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A network the loop can train.
pub trait Network {
    /// The trainable tensors, in a fixed order (the optimizer's slots).
    fn params(&self) -> &[Tensor];
    /// The same, to clear their gradients.
    fn params_mut(&mut self) -> &mut [Tensor];
    /// Logits for a batch of flat samples.
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor;
    /// Writes weights (and buffers) as safetensors.
    fn save(&self, file: &Path) -> std::io::Result<()>;
    /// Loads what [`Network::save`] wrote.
    fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError>;

    /// Writes the network into a checkpoint (or `best/`) directory.
    fn save_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.save(&dir.join(WEIGHTS_FILE))
    }

    /// Loads what [`Network::save_dir`] wrote.
    fn restore_dir(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.restore(&read_named(&dir.join(WEIGHTS_FILE))?)
    }

    /// Switches between training and evaluation (for networks that hold the
    /// mode themselves; the others take it in [`Network::forward`]).
    fn set_train(&mut self, _train: bool) {}
}

/// Trains `net` on `data` from the trial's parameters (`optimizer`, `lr`,
/// `momentum`, `weight_decay`, `batch_size`), resuming from the context's
/// checkpoint when there is one.
pub fn fit(ctx: &mut TrialContext, data: &Dataset, device: Device, net: &mut impl Network) -> Result<(), TrainError> {
    let batch = ctx.int("batch_size")?.max(1);
    let mut opt = Optimizer::new(
        ctx.string("optimizer")?,
        ctx.float("lr")?,
        ctx.float("momentum")?,
        ctx.float("weight_decay")?,
        net.params(),
    )?;
    if let Some(ckpt) = ctx.resume() {
        net.restore_dir(&ckpt.dir)?;
        opt.load(&read_named(&ckpt.dir.join(OPTIMIZER_FILE))?)?;
    }
    let train = tensors(&data.train, data.features, device);
    let val = tensors(&data.validation, data.features, device);
    let rows = data.train.rows();
    for epoch in ctx.first_epoch()..=ctx.max_epochs() {
        let epoch_seed = ctx.seed() ^ (u64::from(epoch) << 40);
        tch::manual_seed(epoch_seed as i64); // dropout masks
        let mut order: Vec<i64> = (0..rows as i64).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed));
        let order = Tensor::from_slice(&order).to_device(device);
        let (mut loss_sum, mut batches) = (0.0, 0);
        net.set_train(true);
        for start in (0..rows as i64).step_by(batch as usize) {
            let len = batch.min(rows as i64 - start);
            let idx = order.narrow(0, start, len);
            let xs = train.x.index_select(0, &idx);
            let ys = train.y.index_select(0, &idx);
            Optimizer::zero_grad(net.params_mut());
            let loss = net.forward(&xs, true).cross_entropy_for_logits(&ys);
            loss.backward();
            opt.step(net.params());
            loss_sum += loss.double_value(&[]);
            batches += 1;
        }
        let train_loss = loss_sum / f64::from(batches.max(1));
        let (val_loss, val_accuracy) = evaluate(net, &val);
        let verdict =
            ctx.report(epoch, &[("val_accuracy", val_accuracy), ("val_loss", val_loss), ("train_loss", train_loss)]);
        // Checkpoint when due, at the end, and when the sweep is stopping
        // (so a resumed run loses no epoch); not for pruned or diverged trials.
        let completed = verdict == Err(TrainError::Stopped(Stop::Completed));
        let cancelled = matches!(verdict, Err(TrainError::Stopped(Stop::Cancelled | Stop::Paused)));
        let last = completed || epoch == ctx.max_epochs();
        if (verdict.is_ok() && (ctx.checkpoint_due(epoch) || last)) || completed || cancelled {
            ctx.save_checkpoint(epoch, |dir| {
                net.save_dir(dir)?;
                Tensor::write_safetensors(&opt.state(), dir.join(OPTIMIZER_FILE)).map_err(std::io::Error::other)
            })?;
        }
        verdict?;
    }
    Ok(())
}

/// A split wrapped as tensors without copying (CPU), or copied once to the GPU.
struct Tensors {
    x: Tensor,
    y: Tensor,
    _keep: Split,
}

fn tensors(split: &Split, features: usize, device: Device) -> Tensors {
    let rows = split.rows() as i64;
    // SAFETY: the tensors borrow the split's buffers, which `_keep` holds
    // alive for as long as the tensors; they are never written to.
    let (x, y) = unsafe {
        (
            Tensor::from_blob(split.x.as_ptr().cast(), &[rows, features as i64], &[], Kind::Float, Device::Cpu),
            Tensor::from_blob(split.y.as_ptr().cast(), &[rows], &[], Kind::Int64, Device::Cpu),
        )
    };
    let (x, y) = if device == Device::Cpu { (x, y) } else { (x.to_device(device), y.to_device(device)) };
    Tensors { x, y, _keep: split.clone() }
}

fn evaluate(net: &mut impl Network, val: &Tensors) -> (f64, f64) {
    net.set_train(false);
    tch::no_grad(|| {
        let rows = val.y.size()[0];
        let (mut loss, mut correct) = (0.0, 0.0);
        for start in (0..rows).step_by(4096) {
            let len = 4096.min(rows - start);
            let logits = net.forward(&val.x.narrow(0, start, len), false);
            let ys = val.y.narrow(0, start, len);
            loss += logits.cross_entropy_for_logits(&ys).double_value(&[]) * len as f64;
            correct += logits.argmax(-1, false).eq_tensor(&ys).to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
        }
        (loss / rows as f64, correct / rows as f64)
    })
}

/// Reads a safetensors file into named tensors.
pub fn read_named(file: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    Tensor::read_safetensors(file)
        .map(|v| v.into_iter().collect())
        .map_err(|e| TrainError::Failed(format!("reading {}: {e}", file.display())))
}
