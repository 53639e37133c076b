//! The ractor_cluster node each process runs: its server, the shared secret
//! (the cluster's cookie), and what its connections do, as events.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::sync::mpsc::UnboundedSender;

/// The environment variable that may hold the shared secret.
pub const SECRET_ENV: &str = "GAUNTLET_SECRET";

/// Why a node could not start or connect.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No secret was given where one is needed.
    #[error("{0}")]
    NoSecret(String),
    /// The secret file is unusable.
    #[error("secret file {}: {message}", file.display())]
    SecretFile {
        /// The file.
        file: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The address does not parse or resolve.
    #[error("address `{address}`: {message}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// Nothing can listen at the address: its port is taken, no interface
    /// of this machine has it, or it is not allowed.
    #[error("cannot listen on {address}: {message}")]
    Bind {
        /// Where.
        address: String,
        /// Why, and what to do.
        message: String,
    },
    /// The node server could not start (the port is taken, ...).
    #[error("cannot start the cluster node on {address}: {message}")]
    Start {
        /// Where.
        address: String,
        /// Why.
        message: String,
    },
}

/// The longest secret a secret file may hold.
const MAX_SECRET_BYTES: u64 = 4096;

/// Reads the shared secret: from `file` when given (its first line), else from
/// `GAUNTLET_SECRET`. `None` when neither is set.
pub fn read_secret(file: Option<&Path>) -> Result<Option<String>, NodeError> {
    if let Some(file) = file {
        let bad = |message: String| NodeError::SecretFile { file: file.to_owned(), message };
        // A secret is a line: read a bounded prefix (the flag may name /dev/zero), keep the first line.
        let mut head = Vec::new();
        crate::files::open(file)
            .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_SECRET_BYTES + 1), &mut head))
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
        if first.len() as u64 > MAX_SECRET_BYTES {
            return Err(bad(format!("its first line is over {MAX_SECRET_BYTES} bytes; expected the shared secret")));
        }
        let secret = std::str::from_utf8(first)
            .map_err(|_| bad("its first line is not UTF-8 text; expected the shared secret".into()))?
            .trim_end_matches('\r')
            .to_owned();
        if secret.trim().is_empty() {
            return Err(bad("it is empty; expected the shared secret on its first line".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                tracing::warn!("secret file {} is readable by other users; `chmod 600` it", file.display());
            }
        }
        return Ok(Some(secret));
    }
    match std::env::var(SECRET_ENV) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s)),
        _ => Ok(None),
    }
}

/// A fresh random secret, for a coordinator and the local workers it spawns.
pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}

/// Parses `HOST:PORT`, resolving a host name.
pub fn resolve(address: &str) -> Result<SocketAddr, NodeError> {
    use std::net::ToSocketAddrs;
    let bad = |message: String| NodeError::Address { address: address.to_owned(), message };
    let mut addrs = address.to_socket_addrs().map_err(|e| bad(format!("{e}; expected HOST:PORT")))?;
    addrs.next().ok_or_else(|| bad("resolves to no address".into()))
}

/// What a node's connections did.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A peer passed the secret handshake.
    Authenticated {
        /// Its address.
        peer: String,
    },
    /// A connection closed; `authenticated` says whether it had passed the
    /// handshake (a refused secret closes it before).
    Disconnected {
        /// Its address.
        peer: String,
        /// Whether it had authenticated.
        authenticated: bool,
    },
}

/// Connections in the shared-secret handshake at once, at most: one more is
/// closed at once. With [`crate::cluster::wire::MAX_FRAME_BYTES`], this
/// bounds what peers that do not know the secret can make a node hold.
pub const MAX_HANDSHAKES: usize = 64;

/// How long a connection may take to pass the handshake before it is closed.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

struct Events {
    tx: UnboundedSender<NodeEvent>,
    authenticated: Arc<Mutex<HashSet<u64>>>,
    /// Connections opened and not yet authenticated.
    handshaking: Arc<Mutex<HashSet<u64>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NodeEventSubscription for Events {
    /// Bounds connections that have not passed the handshake: in number, and in time.
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let mut handshaking = locked(&self.handshaking);
        if handshaking.len() >= MAX_HANDSHAKES {
            drop(handshaking);
            tracing::warn!(
                peer = %ses.peer_addr,
                "closed a connection at once: {MAX_HANDSHAKES} others are in the shared-secret handshake"
            );
            ses.actor.stop(Some("too many connections in the handshake".into()));
            return;
        }
        handshaking.insert(ses.node_id);
        drop(handshaking);
        let handshaking = Arc::clone(&self.handshaking);
        tokio::spawn(async move {
            tokio::time::sleep(HANDSHAKE_DEADLINE).await;
            if locked(&handshaking).remove(&ses.node_id) {
                tracing::warn!(
                    peer = %ses.peer_addr,
                    "closed a connection that did not pass the shared-secret handshake within {HANDSHAKE_DEADLINE:?}"
                );
                ses.actor.stop(Some("no handshake in time".into()));
            }
        });
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        locked(&self.handshaking).remove(&ses.node_id);
        let authenticated = self.authenticated.lock().map(|mut a| a.remove(&ses.node_id)).unwrap_or(false);
        let _ = self.tx.send(NodeEvent::Disconnected { peer: ses.peer_addr, authenticated });
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        locked(&self.handshaking).remove(&ses.node_id);
        if let Ok(mut a) = self.authenticated.lock() {
            a.insert(ses.node_id);
        }
        let _ = self.tx.send(NodeEvent::Authenticated { peer: ses.peer_addr });
    }
}

/// A running node server.
pub struct Node {
    /// The server actor.
    pub server: ActorRef<NodeServerMessage>,
    /// The port it listens on.
    pub port: u16,
}

/// Starts a node server on `listen` (port 0: a free one) that accepts peers
/// knowing `secret`, sending its connection events to `events`.
pub async fn start(
    name: &str,
    listen: SocketAddr,
    secret: &str,
    events: UnboundedSender<NodeEvent>,
) -> Result<Node, NodeError> {
    let address = listen.to_string();
    // The node server binds in its start-up, whose failure reads as a panic: say why first.
    check_listen(listen)?;
    let port = match listen.port() {
        0 => {
            free_port(listen.ip()).map_err(|e| NodeError::Start { address: address.clone(), message: e.to_string() })?
        }
        p => p,
    };
    let server = NodeServer::new(port, secret.to_owned(), name.to_owned(), listen.ip().to_string(), None, None)
        .with_listen_addr(listen.ip())
        .with_max_inbound_frame_size(crate::cluster::wire::MAX_FRAME_BYTES as u64);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| NodeError::Start { address: address.clone(), message: e.to_string() })?;
    let subscription = Events { tx: events, authenticated: Arc::default(), handshaking: Arc::default() };
    server
        .cast(NodeServerMessage::SubscribeToEvents { id: "gauntlet".into(), subscription: Box::new(subscription) })
        .map_err(|e| NodeError::Start { address, message: e.to_string() })?;
    Ok(Node { server, port })
}

/// Whether a node could listen at `listen` now (port 0: any free port):
/// the reason in words when it could not, before anything is started.
pub fn check_listen(listen: SocketAddr) -> Result<(), NodeError> {
    std::net::TcpListener::bind(listen).map(drop).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "its port is in use (another gauntlet, or another program); choose another port, or port 0 for a \
                 free one"
                    .to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address; use one of its own, 127.0.0.1 or 0.0.0.0".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("not allowed ({e}; ports below 1024 need privileges)")
            }
            _ => e.to_string(),
        };
        NodeError::Bind { address: listen.to_string(), message }
    })
}

/// A port the OS says is free now.
fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()?.port())
}

/// Whether an address only reaches this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
