//! What can go wrong starting, stopping or talking to a node.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(doc)]
use crate::{Cluster, ClusterBuilder, Proxy};

/// Something went wrong starting, stopping or talking to a node.
///
/// # Example
///
/// ```no_run
/// use cluster_singleton_testkit::{Cluster, Error};
///
/// match Cluster::start(3) {
///     Ok(cluster) => println!("nodes at {:?}", cluster.urls()),
///     Err(Error::RedisServerNotFound { .. }) => eprintln!("skipping: no redis-server"),
///     Err(e) => panic!("{e}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `redis-server` binary could be found.
    #[error("{0}")]
    RedisServerNotFound(String),

    /// A temporary directory or file for a node could not be made.
    #[error("could not prepare the temporary directory for a redis node: {0}; check that the temp dir ($TMPDIR or /tmp) is writable and not full")]
    TempDir(#[source] io::Error),

    /// The OS would not hand out a free loopback port.
    #[error("could not get a free port on 127.0.0.1 from the OS: {0}; check that loopback networking works")]
    FreePort(#[source] io::Error),

    /// The `redis-server` process could not be started.
    #[error(
        "could not start `{program}`: {source}; check that it is an executable redis-server binary"
    )]
    Spawn {
        /// The binary that was run.
        program: PathBuf,
        /// Why starting it failed.
        #[source]
        source: io::Error,
    },

    /// `redis-server` exited before it answered `PING`.
    #[error("redis-server for node {node} on port {port} exited ({status}) before it answered PING; the end of its log should say why (a bad extra argument? a port taken by another process?):\n{log_tail}")]
    Exited {
        /// Index of the node.
        node: usize,
        /// Port it was started on.
        port: u16,
        /// How it exited.
        status: String,
        /// The last lines of its log (and its stdout/stderr).
        log_tail: String,
    },

    /// `redis-server` did not answer `PING` in time.
    #[error("redis-server for node {node} on port {port} did not answer PING within {timeout:?}; the machine may be overloaded, or see the end of its log:\n{log_tail}")]
    NotReady {
        /// Index of the node.
        node: usize,
        /// Port it was started on.
        port: u16,
        /// How long it was given.
        timeout: Duration,
        /// The last lines of its log (and its stdout/stderr).
        log_tail: String,
    },

    /// The operation needs a running node, but the node was killed.
    #[error("node {node} is not running (it was killed); start it again with `start_node({node})` or `restart({node})`")]
    NotRunning {
        /// Index of the node.
        node: usize,
    },

    /// [`Cluster::start_node`] was called on a node that is running.
    #[error("node {node} is already running; kill it first, or use `restart({node})`")]
    AlreadyRunning {
        /// Index of the node.
        node: usize,
    },

    /// Sending a signal to, or waiting for, a node's process failed.
    #[error("could not {action} redis-server of node {node} (pid {pid}): {source}")]
    Process {
        /// What was being done, e.g. "send SIGSTOP to".
        action: &'static str,
        /// Index of the node.
        node: usize,
        /// The process id.
        pid: u32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The [`Proxy`] in front of a node could not be started.
    #[error("could not start the proxy in front of node {node}: {source}")]
    Proxy {
        /// Index of the node.
        node: usize,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A Redis connection to a node failed.
    #[error("could not connect to node {node} at {url}: {source}; is the node frozen or killed?")]
    Connect {
        /// Index of the node.
        node: usize,
        /// Its URL.
        url: String,
        /// What redis-rs said.
        #[source]
        source: redis::RedisError,
    },

    /// [`Cluster::step_clock`] on a cluster started without
    /// [`ClusterBuilder::steppable_clocks`].
    #[error(
        "node {node}'s clock cannot be stepped: start the cluster with `.steppable_clocks(true)`"
    )]
    ClockNotSteppable {
        /// Index of the node.
        node: usize,
    },

    /// The file a node's clock offset is read from could not be written.
    #[error("could not step the clock of node {node}: {source}")]
    StepClock {
        /// Index of the node.
        node: usize,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The TLS certificates for the nodes could not be made (only with the
    /// `tls` feature).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("could not make the TLS certificates for the redis nodes: {0}")]
    Certificates(String),
}
