//! Gauntlet: a fault-tolerant hyperparameter-sweep engine.
//!
//! The crate reads like the architecture:
//! - [`supervision`]: the actors (ractor) that own lifecycles: experiment
//!   supervisor, leaderboard, trial actors, the worker pool, and the slot
//!   threads that train.
//! - [`state`]: one experiment's state, a pure fold over its [`event`]s,
//!   shared by the live leaderboard and journal replay.
//! - [`search`] and [`schedule`]: the policies, pure code with serde state:
//!   which parameters to try next, which trials to stop early or exploit.
//! - [`trainable`]: what trains a trial: the libtorch MLP, or any closure.
//! - [`cluster`] and [`worker`]: worker processes, local or on other
//!   machines, that run trials for a coordinator over ractor_cluster.
//! - [`config`], [`data`], [`checkpoint`], [`run_dir`]: the edges: files in, files out.
//! - [`cuda`]: libtorch's CUDA half, opened only where there is a GPU.
//!
//! A sweep from code:
//! ```no_run
//! use gauntlet::{Domain, SearchSpace, Sweep, TrialContext, TrainError};
//! let space = SearchSpace::new().with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 });
//! let summary = Sweep::new("demo", space, |ctx: &mut TrialContext| -> Result<(), TrainError> {
//!     let lr = ctx.float("lr")?;
//!     for epoch in ctx.first_epoch()..=ctx.max_epochs() {
//!         ctx.report(epoch, &[("val_accuracy", 1.0 - (lr.log10() + 2.5).abs() / 10.0)])?;
//!     }
//!     Ok(())
//! })
//! .max_trials(8)
//! .run_blocking()?;
//! println!("{:?}", summary.best());
//! # Ok::<(), gauntlet::SweepError>(())
//! ```
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod cuda;
pub mod daemon;
pub mod data;
pub mod engine;
pub mod event;
pub mod files;
pub mod journal;
pub mod placement;
pub mod predict;
pub mod run_dir;
pub mod schedule;
pub mod search;
pub mod space;
pub mod state;
pub mod supervision;
pub mod trainable;
pub mod trial;
pub mod worker;

pub use config::{Config, ConfigError, Domain, Mode, ParamValue, Params, SearchSpace};
pub use state::ExperimentState;
pub use supervision::{Summary, Sweep, SweepError, SweepEvent};
pub use trainable::{Stop, TrainError, Trainable, TrialContext};
pub use trial::{Report, Trial, TrialId, TrialStatus};
