//! The cluster: how a coordinator and its worker processes find and talk to
//! each other over ractor_cluster.
//!
//! - [`node`]: each process's cluster node, the shared secret, connection events;
//! - [`wire`]: the messages between the coordinator's pool and its workers;
//! - [`transfer`]: checkpoints streamed between them, with flow control;
//! - [`local`]: the worker processes a coordinator spawns on its own machine;
//! - [`spawner`]: the process that forks them, ready in milliseconds.
//!
//! Traffic is not encrypted: ractor_cluster supports TLS, but Gauntlet does
//! not configure it yet. Across machines, run it on a trusted network or a
//! tunnel; the shared secret only keeps strangers from joining.

pub mod local;
pub mod node;
pub mod spawner;
pub mod transfer;
pub mod wire;
