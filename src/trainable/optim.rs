//! SGD and Adam written over tensors, so that their state (momentum
//! buffers, moments, step count) goes into checkpoints and a restarted trial
//! continues exactly where it stopped. tch's built-in optimizers keep their
//! state inside libtorch, out of reach of a checkpoint.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::TrainError;

/// An optimizer and its state, one slot per parameter tensor.
pub enum Optimizer {
    /// Stochastic gradient descent with momentum and L2 weight decay.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor (0 for none).
        momentum: f64,
        /// L2 penalty.
        weight_decay: f64,
        /// Momentum buffers.
        buffers: Vec<Tensor>,
    },
    /// Adam (Kingma and Ba) with L2 weight decay, as `torch.optim.Adam`.
    Adam {
        /// Learning rate.
        lr: f64,
        /// L2 penalty.
        weight_decay: f64,
        /// Steps taken.
        step: i64,
        /// First moments.
        m: Vec<Tensor>,
        /// Second moments.
        v: Vec<Tensor>,
    },
}

/// The optimizers [`Optimizer::new`] knows, by name.
pub const OPTIMIZERS: &[&str] = &["adam", "sgd"];

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Optimizer {
    /// An optimizer by name (`adam`, `sgd`) for `params`.
    pub fn new(name: &str, lr: f64, momentum: f64, weight_decay: f64, params: &[Tensor]) -> Result<Self, TrainError> {
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        match name {
            "sgd" => Ok(Optimizer::Sgd { lr, momentum, weight_decay, buffers: zeros() }),
            "adam" => Ok(Optimizer::Adam { lr, weight_decay, step: 0, m: zeros(), v: zeros() }),
            other => Err(TrainError::Invalid(format!("unknown optimizer `{other}`; expected adam or sgd"))),
        }
    }

    /// Clears the gradients of `params`.
    pub fn zero_grad(params: &mut [Tensor]) {
        for p in params {
            p.zero_grad();
        }
    }

    /// One update of `params` from their gradients.
    pub fn step(&mut self, params: &[Tensor]) {
        tch::no_grad(|| match self {
            Optimizer::Sgd { lr, momentum, weight_decay, buffers } => {
                for (p, buf) in params.iter().zip(buffers.iter_mut()) {
                    let g = decayed_grad(p, *weight_decay);
                    let update = if *momentum > 0.0 {
                        let _ = buf.g_mul_scalar_(*momentum).g_add_(&g);
                        buf.shallow_clone()
                    } else {
                        g
                    };
                    let _ = p.shallow_clone().g_sub_(&(update * *lr));
                }
            }
            Optimizer::Adam { lr, weight_decay, step, m, v } => {
                *step += 1;
                let bc1 = 1.0 - BETA1.powi(*step as i32);
                let bc2 = 1.0 - BETA2.powi(*step as i32);
                // As torch.optim.Adam's single-tensor loop, in place where it
                // can be: two temporaries per parameter (g², the denominator).
                let step_size = *lr / bc1;
                for ((p, m), v) in params.iter().zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = decayed_grad(p, *weight_decay);
                    let _ = m.lerp_(&g, 1.0 - BETA1);
                    let _ = v.lerp_(&g.square(), 1.0 - BETA2);
                    // -(sqrt(v / bc2) + eps) / step_size, so that p += m / denom.
                    let mut denom = v.sqrt();
                    let _ = denom.g_mul_scalar_(1.0 / bc2.sqrt()).g_add_scalar_(EPS).g_mul_scalar_(-1.0 / step_size);
                    let _ = p.shallow_clone().addcdiv_(m, &denom);
                }
            }
        })
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let named = |prefix: &str, ts: &[Tensor]| {
            ts.iter().enumerate().map(move |(i, t)| (format!("{prefix}.{i}"), t.shallow_clone())).collect::<Vec<_>>()
        };
        match self {
            Optimizer::Sgd { buffers, .. } => named("optim.buf", buffers),
            Optimizer::Adam { step, m, v, .. } => {
                let mut out = named("optim.m", m);
                out.extend(named("optim.v", v));
                out.push(("optim.step".into(), Tensor::from_slice(&[*step]).to_kind(Kind::Int64)));
                out
            }
        }
    }

    /// Restores the state saved by [`Optimizer::state`].
    pub fn load(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let restore = |prefix: &str, ts: &mut [Tensor]| -> Result<(), TrainError> {
            for (i, t) in ts.iter_mut().enumerate() {
                let key = format!("{prefix}.{i}");
                let src = saved.get(&key).ok_or_else(|| TrainError::Failed(format!("checkpoint lacks {key}")))?;
                tch::no_grad(|| t.f_copy_(src)).map_err(|e| TrainError::Failed(format!("restoring {key}: {e}")))?;
            }
            Ok(())
        };
        match self {
            Optimizer::Sgd { buffers, .. } => restore("optim.buf", buffers),
            Optimizer::Adam { step, m, v, .. } => {
                restore("optim.m", m)?;
                restore("optim.v", v)?;
                *step = saved
                    .get("optim.step")
                    .map(|t| t.int64_value(&[0]))
                    .ok_or_else(|| TrainError::Failed("checkpoint lacks optim.step".into()))?;
                Ok(())
            }
        }
    }
}

fn decayed_grad(p: &Tensor, weight_decay: f64) -> Tensor {
    let g = p.grad();
    if weight_decay > 0.0 {
        g + p * weight_decay
    } else {
        g
    }
}
