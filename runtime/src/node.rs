//! One Redis node: its connection, what we know of the server behind it, and the two commands a
//! lock sends it.
//!
//! The connection is one multiplexed connection per node, opened on first use and opened again
//! after it breaks (or after the runtime that drove it shut down: see [`crate::driver`]). Each
//! opening reads `INFO server`: its `uptime_in_seconds` tells how long the server has been up
//! (see [`Node::set_nx`] for why that matters). A restart usually breaks the connection, but not
//! behind a proxy that keeps clients connected across it, so [`Node::check`] reads `INFO server`
//! again every second and takes a changed `run_id` for a restart; the same check replaces a
//! connection that stopped answering (a flow black-holed on the way), which TCP alone would keep
//! for a quarter of an hour. Every reading of a node, and every vote, also reads the node's
//! clock, to notice it stepping (see [`crate::clock`]).
//!
//! The commands of a lock ([`Node::set_nx`], [`Node::release`], ...) never wait for a connection
//! to open: the round that sends one to every node opens the connections first (see
//! `round::Round`), and a node whose connection is not open then fails at once. Nor have they a
//! deadline of their own: the round bounds them all with one.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::checks::redact;
use crate::clock::ClockWatch;
use crate::telemetry;
use crate::{Config, Error, NodeFailure};

mod commands;
mod connection;
mod error;
mod grace;
mod memory;
mod operator;
mod scripts;
mod server;

pub(crate) use commands::{LeaseToExtend, Renewed};
pub(crate) use error::NodeError;
pub(crate) use grace::FleetGrace;
pub(crate) use operator::Checkup;

use connection::{client, within, Link, Session};
use error::ConnectFailure;
use grace::Seen;

/// One Redis node, named by its URL with the password hidden.
pub(crate) struct Node {
    /// Its place among the nodes, from 0.
    index: usize,
    name: String,
    backend: Backend,
    timeout: Duration,
    connect_timeout: Duration,
    /// `None` skips reading the server's uptime: every vote counts at once.
    grace: Option<Arc<FleetGrace>>,
    /// Read on every command, written only when the connection opens or breaks: a read lock
    /// costs no wait while other threads send on the same connection.
    link: RwLock<Link>,
    /// The server last seen behind this node, to tell a restart from a reconnect.
    seen: Mutex<Seen>,
    /// The crate's own runtime, which drives connections opened outside a multi-threaded one.
    crate_thread: Handle,
}

/// Where a node's commands go.
enum Backend {
    /// Boxed: with TLS set up, a client is larger than the rest of the node.
    Redis(Box<redis::Client>),
    /// In process, for tests (`memory://`): the same commands, answered by [`memory::Store`].
    Memory(Arc<memory::Store>),
}

impl Node {
    /// Checks `url` (the `position`-th of the configuration, counted from 1), without
    /// connecting.
    pub(crate) fn new(
        position: usize,
        url: &str,
        config: &Config,
        grace: Option<Arc<FleetGrace>>,
        crate_thread: &Handle,
    ) -> Result<Node, Error> {
        let name = redact(url);
        let backend = if url.starts_with(memory::SCHEME) {
            Backend::Memory(memory::store(url))
        } else {
            Backend::Redis(Box::new(client(position, &name, url, config)?))
        };
        Ok(Node {
            index: position - 1,
            name,
            backend,
            timeout: config.node_timeout,
            connect_timeout: config.connect_timeout,
            grace,
            link: RwLock::new(Link::Down {
                cause: ConnectFailure {
                    cause: "not connected yet".into(),
                    refused: false,
                },
                retry_after: Instant::now(),
            }),
            seen: Mutex::new(Seen {
                identity: None,
                young_from: None,
                started: None,
                clock: ClockWatch::default(),
                ahead: false,
                compared: false,
                jump: None,
                node_counts: None,
                lists_read: false,
            }),
            crate_thread: crate_thread.clone(),
        })
    }

    /// The identity of the server a URL points at, to find the same node listed twice.
    pub(crate) fn identity(url: &str) -> Option<String> {
        if url.starts_with(memory::SCHEME) {
            return Some(url.to_owned());
        }
        let client = redis::Client::open(url).ok()?;
        let info = client.get_connection_info();
        Some(format!("{}/{}", info.addr(), info.redis_settings().db()))
    }

    /// The node's URL with its password hidden.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What a caller is told of this node's `err`; each call counts it in the node's metrics, so
    /// call it once per failure.
    pub(crate) fn failure(&self, err: &NodeError) -> NodeFailure {
        telemetry::node_failed(&self.name, err.counted_as());
        NodeFailure {
            node: self.name.clone(),
            cause: err.to_string(),
            kind: err.kind(),
        }
    }

    /// Whether a command started now is queued at its first poll, ahead of any started later:
    /// the connection is open and the runtime that drives it runs (or the node is in process).
    pub(crate) fn is_connected(&self) -> bool {
        self.memory().is_some() || self.open_session().is_some()
    }

    /// The open connection, if there is one and the runtime that drives it runs: a read lock,
    /// the path of every command once connected.
    fn open_session(&self) -> Option<Arc<Session>> {
        match &*self
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            Link::Up(session) if session.is_usable() => Some(session.clone()),
            _ => None,
        }
    }

    /// Whether this node is an in-process `memory://` store.
    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// The in-process store, when this node is one: it answers at once, with no connection,
    /// timeout or restart to think of.
    fn memory(&self) -> Option<&memory::Store> {
        match &self.backend {
            Backend::Memory(store) => Some(store),
            Backend::Redis(_) => None,
        }
    }
}

/// A duration as whole milliseconds for `PX`, saturating far beyond any real ttl.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
