//! What travels between the coordinator and its workers. Messages are
//! rmp-serde maps inside ractor_cluster frames; checkpoints travel as files
//! cut into chunks well under the cluster's frame limit.

use std::path::PathBuf;

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::{ConfigFormat, Params};
use crate::schedule::Decision;
use crate::trainable::ContextSettings;
use crate::trial::{AttemptEnd, Report, TrialId};

/// Bumped when a message changes shape; a worker of another protocol is refused.
pub const PROTOCOL: u32 = 7;

/// The process group the coordinator's worker pool joins.
pub const POOL_GROUP: &str = "gauntlet.pool";

/// The process group every worker actor joins.
pub const WORKER_GROUP: &str = "gauntlet.workers";

/// The largest piece of a checkpoint file in one message: far under
/// ractor_cluster's 16 MiB inbound frame limit, small enough not to stall
/// the connection's other traffic for long.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The most slots one worker may offer (`worker --slots`; a hello that
/// offers more is refused).
pub const MAX_SLOTS: u32 = 1024;

/// The largest frame a node takes from a peer. Each message is far
/// smaller (a part of [`CHUNK_BYTES`], a config of at most
/// [`crate::config::MAX_CONFIG_BYTES`], an output batch under 1.1 MiB);
/// the limit bounds what a connection that has not passed the handshake
/// can make the node hold.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// A worker stops hearing from a coordinator for this long, or a coordinator
/// from a worker: the other side is gone.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(4);

/// How often both sides say they are alive.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// An experiment's number within one coordinator's life: every placement,
/// job and load names one. A worker holds each experiment it serves once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExperimentKey(pub u64);

impl std::fmt::Display for ExperimentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Where an experiment's workers load it from: its config as the run
/// recorded it. The sweep adds the trials' context ([`Experiment::new`]).
#[derive(Debug, Clone)]
pub struct ExperimentSource {
    /// The experiment's name.
    pub name: String,
    /// The config file's text, as the run recorded it.
    pub config_text: String,
    /// How the text is written.
    pub format: ConfigFormat,
    /// Where the config file was on the coordinator.
    pub config_path: PathBuf,
}

/// What a worker needs to know about an experiment to train its trials:
/// sent when the experiment starts (or when a worker joins while it runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Experiment {
    /// The experiment's name.
    pub name: String,
    /// The config file's text, as the run recorded it.
    pub config_text: String,
    /// How the text is written.
    pub format: ConfigFormat,
    /// Where the config file was on the coordinator: relative data paths
    /// are resolved against it.
    pub config_path: PathBuf,
    /// What each trial's context needs.
    pub context: ContextSettings,
}

impl Experiment {
    /// The experiment `source` describes, its trials trained with `context`.
    pub fn new(source: ExperimentSource, context: ContextSettings) -> Self {
        let ExperimentSource { name, config_text, format, config_path } = source;
        Experiment { name, config_text, format, config_path, context }
    }
}

/// One attempt of one trial, placed on a worker's slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The placement this attempt runs under.
    pub lease: u64,
    /// The experiment the trial belongs to (loaded on the worker before).
    pub experiment: ExperimentKey,
    /// The trial.
    pub id: TrialId,
    /// Which attempt.
    pub attempt: u32,
    /// Restarts so far (the chaos draws depend on it).
    pub restarts: u32,
    /// The trial's seed.
    pub seed: u64,
    /// Its parameters.
    pub params: Params,
    /// The checkpoint to resume from; its files arrived before as
    /// [`ToWorker::CheckpointPart`]s.
    pub resume: Option<Checkpoint>,
}

/// A piece of one checkpoint file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// The file's path inside the checkpoint directory (`/`-separated).
    pub file: String,
    /// Where the piece goes in the file.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// The worker joined; experiments to load follow.
    Welcome,
    /// Load this experiment's data and model description, once for all its
    /// trials on this worker.
    Load {
        /// The experiment.
        experiment: ExperimentKey,
        /// What it needs.
        spec: Box<Experiment>,
    },
    /// The experiment ended: drop what was loaded for it.
    Unload {
        /// The experiment.
        experiment: ExperimentKey,
    },
    /// The worker may not join; it exits with the reason.
    Refused(String),
    /// A piece of the checkpoint the next `Start` of this lease resumes from
    /// (at most [`super::transfer::WINDOW_PARTS`] beyond the last
    /// [`FromWorker::CheckpointAck`]).
    CheckpointPart {
        /// The placement.
        lease: u64,
        /// The piece.
        part: Part,
    },
    /// The coordinator has this many parts of the lease's checkpoint of
    /// `epoch` on disk: the worker may send more.
    CheckpointAck {
        /// The placement.
        lease: u64,
        /// The checkpoint's epoch.
        epoch: u32,
        /// Parts received so far.
        parts: u64,
    },
    /// Train this attempt on a free slot.
    Start(Job),
    /// The decision on the lease's last report; `None`: the sweep is gone.
    Decision {
        /// The placement.
        lease: u64,
        /// The scheduler's answer.
        decision: Option<Decision>,
    },
    /// Stop this attempt at its next report.
    Cancel {
        /// The placement.
        lease: u64,
    },
    /// The coordinator is alive.
    Heartbeat,
    /// The coordinator is done with this worker: exit.
    Shutdown(String),
    /// The coordinator gave this worker up (its heartbeats stopped: a
    /// stalled process, a paused VM) and re-placed its trials: the worker
    /// joins again as a new one, as after losing the coordinator.
    Dropped(String),
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// A worker offers its slots.
    Hello {
        /// Unique name of the worker's actor.
        name: String,
        /// Slots it offers.
        slots: u32,
        /// Its host name.
        host: String,
        /// Its process id.
        pid: u32,
        /// Whether the coordinator spawned it.
        local: bool,
        /// Its wire protocol.
        protocol: u32,
        /// Its gauntlet version.
        version: String,
    },
    /// The worker was welcomed and waits for experiments.
    Ready {
        /// The worker.
        name: String,
    },
    /// The worker loaded an experiment and takes its trials.
    Loaded {
        /// The worker.
        name: String,
        /// The experiment.
        experiment: ExperimentKey,
    },
    /// The worker cannot serve an experiment (its data did not load there).
    Unfit {
        /// The worker.
        name: String,
        /// The experiment.
        experiment: ExperimentKey,
        /// Why.
        error: String,
    },
    /// The worker is alive.
    Heartbeat {
        /// The worker.
        name: String,
    },
    /// The worker is leaving (SIGTERM): no new trials; its running ones
    /// checkpoint at their next report and come back as preempted.
    Leaving {
        /// The worker.
        name: String,
    },
    /// An epoch's report; the worker waits for the decision.
    Report {
        /// The placement.
        lease: u64,
        /// The report.
        report: Report,
    },
    /// A piece of the checkpoint of `epoch` the attempt just wrote (at most
    /// [`super::transfer::WINDOW_PARTS`] beyond the last
    /// [`ToWorker::CheckpointAck`]).
    CheckpointPart {
        /// The placement.
        lease: u64,
        /// The checkpoint's epoch: a part of another epoch starts a new one.
        epoch: u32,
        /// The piece.
        part: Part,
    },
    /// The worker has this many parts of the checkpoint the lease resumes
    /// from on disk: the coordinator may send more.
    CheckpointAck {
        /// The placement.
        lease: u64,
        /// Parts received so far.
        parts: u64,
    },
    /// Output of a trial's program (`kind = "command"`) for its log.
    Output {
        /// The placement.
        lease: u64,
        /// Whole lines.
        text: String,
    },
    /// The checkpoint whose parts came before is whole.
    CheckpointDone {
        /// The placement.
        lease: u64,
        /// How many parts it was sent in (the receiver checks it has them all).
        parts: u64,
        /// Its epoch, score and seed.
        meta: Checkpoint,
    },
    /// The attempt ended.
    Finished {
        /// The placement.
        lease: u64,
        /// How.
        end: AttemptEnd,
    },
}

/// A message type that carries one wire enum across ractor_cluster; local
/// variants stay local (serialising them is refused), and an undecodable
/// frame arrives as `garbled` rather than failing the receiving actor.
pub(crate) trait WireMessage: Sized {
    type Wire: Serialize + serde::de::DeserializeOwned;
    fn into_wire(self) -> Option<Self::Wire>;
    fn from_wire(wire: Self::Wire) -> Self;
    fn garbled(error: String) -> Self;
}

pub(crate) fn serialize<M: WireMessage>(msg: M) -> Result<SerializedMessage, BoxedDowncastErr> {
    let wire = msg.into_wire().ok_or(BoxedDowncastErr)?;
    let args = rmp_serde::to_vec_named(&wire).map_err(|_| BoxedDowncastErr)?;
    Ok(SerializedMessage::Cast { variant: String::new(), args, metadata: None })
}

pub(crate) fn deserialize<M: WireMessage>(msg: SerializedMessage) -> Result<M, BoxedDowncastErr> {
    match msg {
        SerializedMessage::Cast { args, .. } => Ok(match rmp_serde::from_slice(&args) {
            Ok(wire) => M::from_wire(wire),
            Err(e) => M::garbled(format!("cannot decode a {} byte message: {e}", args.len())),
        }),
        _ => Err(BoxedDowncastErr),
    }
}

/// Makes `$t` a message that carries `$wire` across ractor_cluster in its
/// variant `$t::$carry(..)`; undecodable frames arrive as `$t::$garbled(..)`.
macro_rules! wire_message {
    ($t:ident, $wire:ty, $carry:ident, $garbled:ident) => {
        impl $crate::cluster::wire::WireMessage for $t {
            type Wire = $wire;
            fn into_wire(self) -> Option<$wire> {
                match self {
                    $t::$carry(w) => Some(w),
                    _ => None,
                }
            }
            fn from_wire(wire: $wire) -> Self {
                $t::$carry(wire)
            }
            fn garbled(error: String) -> Self {
                $t::$garbled(error)
            }
        }

        impl ractor::Message for $t {
            fn serializable() -> bool {
                true
            }
            fn serialize(self) -> Result<ractor::message::SerializedMessage, ractor::message::BoxedDowncastErr> {
                $crate::cluster::wire::serialize(self)
            }
            fn deserialize(m: ractor::message::SerializedMessage) -> Result<Self, ractor::message::BoxedDowncastErr> {
                $crate::cluster::wire::deserialize(m)
            }
        }
    };
}
pub(crate) use wire_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_load_fits_half_a_frame() {
        // The largest config a worker loads, in one frame, with room for the envelope.
        let spec = Experiment {
            name: "x".repeat(255),
            config_text: "#".repeat(crate::config::MAX_CONFIG_BYTES as usize),
            format: crate::config::ConfigFormat::Toml,
            config_path: std::path::PathBuf::from("/".repeat(4096)),
            context: ContextSettings {
                metric: "m".repeat(1000),
                mode: crate::space::Mode::Max,
                max_epochs: 1,
                checkpoint_every: 1,
                max_checkpoint_bytes: u64::MAX,
                threads: 1,
                panic_probability: 0.0,
                abort_probability: 0.0,
            },
        };
        let load = rmp_serde::to_vec_named(&ToWorker::Load { experiment: ExperimentKey(1), spec: Box::new(spec) });
        assert!(load.unwrap().len() < MAX_FRAME_BYTES / 2);
    }
}
