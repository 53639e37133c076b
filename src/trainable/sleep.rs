//! A trainable that trains nothing: each epoch sleeps `epoch_ms` and reports
//! a score that climbs towards the trial's `quality`. It measures what the
//! engine itself costs (dispatch, reports, journal, network) with trials of
//! a known length, and gives tests fast trials with a predictable ranking.

use std::time::Duration;

use super::{Stop, TrainError, Trainable, TrialContext};
use crate::config::Params;

/// `[model] kind = "sleep"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepTrainable;

impl Trainable for SleepTrainable {
    fn describe(&self, params: &Params) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "kind": "sleep", "params": params }))
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
