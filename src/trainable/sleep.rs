//! A trainable that trains nothing: each epoch sleeps `epoch_ms` and reports
//! a score that climbs towards the trial's `quality`. It measures what the
//! engine itself costs (dispatch, reports, journal, network) with trials of
//! a known length, and gives tests fast trials with a predictable ranking.

use std::sync::Arc;
use std::time::Duration;

use super::kind::{DataUse, Model, ModelKind};
use super::{Stop, TrainError, Trainable, TrialContext};
use crate::config::fields::{Expect, Field, Keys};
use crate::config::{Config, Params};
use crate::data::DataError;
use crate::space::ParamValue;

/// `[model] kind = "sleep"`.
pub const KIND: ModelKind = ModelKind { name: "sleep", parse: |_| Ok(Box::new(SleepModel)), predictor: None };

/// The fields of `[model] kind = "sleep"`.
pub const MODEL_FIELDS: &[Field] = &[
    Field { name: "epoch_ms", expect: Expect::Int { min: 0, max: 3_600_000 }, default: || ParamValue::Int(100) },
    Field {
        name: "quality",
        expect: Expect::Float { min: 0.0, min_open: false, max: Some(1.0) },
        default: || ParamValue::Float(0.5),
    },
];

/// `[model] kind = "sleep"`: no settings besides its fields. It takes the
/// fields of `[train]` the training loop takes, and uses none of them.
#[derive(Debug, Clone, Copy)]
pub struct SleepModel;

impl Model for SleepModel {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn model_keys(&self) -> Keys {
        Keys::Fields(MODEL_FIELDS)
    }

    fn data(&self) -> DataUse {
        DataUse::Unused
    }

    fn build(&self, _config: &Config) -> Result<Arc<dyn Trainable>, DataError> {
        Ok(Arc::new(SleepTrainable))
    }

    fn boxed(&self) -> Box<dyn Model> {
        Box::new(*self)
    }
}

/// `[model] kind = "sleep"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepTrainable;

impl Trainable for SleepTrainable {
    fn describe(&self, params: &Params) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "kind": KIND.name, "params": params }))
    }

    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        let epoch_ms = ctx.int("epoch_ms")?.max(0) as u64;
        let quality = ctx.float("quality")?;
        let max = f64::from(ctx.max_epochs());
        for epoch in ctx.first_epoch()..=ctx.max_epochs() {
            std::thread::sleep(Duration::from_millis(epoch_ms));
            let progress = f64::from(epoch) / max;
            let accuracy = quality * (0.5 + 0.5 * progress);
            let verdict = ctx.report(epoch, &[("val_accuracy", accuracy), ("val_loss", 1.0 - accuracy)]);
            // Checkpoints when due and when stopped to continue later; not at
            // the end: there is no model to keep, and the engine's cost is
            // what this kind measures, not a checkpoint's files.
            let cancelled = matches!(verdict, Err(TrainError::Stopped(Stop::Cancelled | Stop::Paused)));
            if (verdict.is_ok() && ctx.checkpoint_due(epoch)) || cancelled {
                ctx.save_checkpoint(epoch, |dir| {
                    std::fs::write(dir.join("state.json"), format!("{{\"epoch\":{epoch}}}"))
                })?;
            }
            verdict?;
        }
        Ok(())
    }
}
