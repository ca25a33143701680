//! Real `redis-server` nodes on loopback ports, for tests, examples and
//! benchmarks of `cluster-singleton`.
//!
//! A Redlock lock is only as good as its behaviour when nodes die, stall or
//! come back empty, and a mock cannot show that. This crate starts real
//! `redis-server` processes, each on a free `127.0.0.1` port in its own
//! temporary directory, with persistence off, and lets a test kill, freeze,
//! resume and restart them one by one. Everything it starts is stopped when the
//! [`Cluster`] is dropped, and even if the test process itself is killed.
//!
//! `redis-server` is taken from `PATH`, or from the path in the environment
//! variable `CLUSTER_SINGLETON_REDIS_SERVER` (see [`REDIS_SERVER_ENV`]). Each
//! node runs with `--bind 127.0.0.1 --save "" --appendonly no` and its own
//! `--dir` and `--logfile` (see [`Cluster::log`]).
//!
//! # No orphans
//!
//! Nodes are stopped by pid, never by name: [`Cluster`]'s `Drop` sends
//! `SIGKILL` to each process it started and reaps it. Should the test process
//! die without running `Drop` (a panic with `panic = "abort"`, a `SIGKILL`, a
//! `Cluster` kept in a `static`), the kernel kills the nodes too, because each
//! is started with `PR_SET_PDEATHSIG`. Linux only.
//!
//! # Example
//!
//! ```no_run
//! use cluster_singleton_testkit::Cluster;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Three independent Redis nodes, as Redlock wants.
//! let mut cluster = Cluster::start(3)?;
//! let urls: Vec<String> = cluster.urls(); // hand these to the code under test
//! assert_eq!(urls.len(), 3);
//!
//! // Check what the code under test left behind.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("SET").arg("k").arg("v").exec(&mut con)?;
//!
//! // Make node 1 unresponsive (SIGSTOP), then bring it back.
//! cluster.freeze(1)?;
//! cluster.resume(1)?;
//!
//! // Node 2 crashes and comes back without its data.
//! cluster.restart(2)?;
//! # Ok(())
//! # }
//! // Dropping `cluster` kills all three processes and removes their directories.
//! ```
//!
//! # TLS
//!
//! With the `tls` feature, `ClusterBuilder::tls` starts nodes that speak
//! only TLS (`--port 0 --tls-port PORT`), with a CA and a server certificate
//! for `127.0.0.1` made afresh for each cluster: nothing is checked in. The
//! URLs are then `rediss://127.0.0.1:PORT`, and clients must trust
//! `Cluster::tls_ca_pem`. `unrelated_ca_pem` gives a CA that signed
//! nothing, for tests of a client that trusts the wrong one.
//! `ClusterBuilder::tls_auth_clients` makes the nodes require client
//! certificates signed by the cluster's CA (mutual TLS), such as
//! `Cluster::tls_client_certificate`; `unrelated_client_certificate` gives
//! one that another CA signed. (All of these exist only with the feature.)
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cluster_singleton_testkit::Cluster;
//!
//! let cluster = Cluster::builder().nodes(3).tls(true).start()?;
//! assert!(cluster.url(0).starts_with("rediss://127.0.0.1:"));
//! let ca_pem: &str = cluster.tls_ca_pem(); // hand this to the code under test
//!
//! // The test's own connections trust it already.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("PING").exec(&mut con)?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "tls"))]
//! # fn main() {}
//! ```
//!
//! # Network faults
//!
//! A node can also be cut off, slowed down or disconnected while it keeps
//! running, through a [`Proxy`] in front of it. With
//! [`ClusterBuilder::proxied`], every node gets one: [`Cluster::url`] then
//! points at the proxy, which is what the code under test should use, while
//! [`Cluster::direct_url`] and [`Cluster::connection`] go straight to the
//! node, for checks that must work during a partition.
//!
//! ```no_run
//! use std::time::Duration;
//! use cluster_singleton_testkit::Cluster;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::builder().nodes(3).proxied(true).start()?;
//! let urls = cluster.urls(); // through the proxies
//!
//! cluster.proxy(0).partition(); // node 0 is unreachable: timeouts, not errors
//! cluster.proxy(0).heal();
//! cluster.proxy(1).set_latency(Duration::from_millis(80));
//! cluster.proxy(2).reset(); // every connection to node 2 is dropped at once
//!
//! // Checks bypass the proxies.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("PING").exec(&mut con)?;
//! # Ok(())
//! # }
//! ```

// On docs.rs (every feature, `--cfg docsrs`; see Cargo.toml), the items that need `tls` say so.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod clock;
mod proxy;
mod resp;
#[cfg(feature = "tls")]
mod tls;

pub use clock::{FAKETIME_REDIS_SERVER_ENV, LIBFAKETIME_ENV};
pub use proxy::Proxy;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{unrelated_ca_pem, unrelated_client_certificate, ClientCertificate};

/// The environment variable that, when set, names the `redis-server` binary to
/// run instead of the one found on `PATH`.
///
/// # Example
///
/// ```
/// assert_eq!(
///     cluster_singleton_testkit::REDIS_SERVER_ENV,
///     "CLUSTER_SINGLETON_REDIS_SERVER"
/// );
/// ```
pub const REDIS_SERVER_ENV: &str = "CLUSTER_SINGLETON_REDIS_SERVER";

/// The program looked up on `PATH` when [`REDIS_SERVER_ENV`] is not set.
const REDIS_SERVER_PROGRAM: &str = "redis-server";

/// How long a freshly started node may take to answer `PING`. A loaded CI
/// machine with two cores starts Redis in well under a second; ten leaves room
/// for heavy parallel test runs without letting a broken setup hang a suite.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness probes: short, so tests start quickly, yet long
/// enough not to burn a core while Redis boots.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Connect, read and write timeout of one readiness probe, so a probe of a
/// port that is not (yet) answering cannot eat the whole readiness deadline.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Connect timeout of [`Cluster::connection`], so asking for a connection to a
/// frozen node fails instead of hanging the test.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh ports to try when the port the OS handed out was taken by
/// someone else before `redis-server` could bind it.
const MAX_PORT_ATTEMPTS: usize = 5;

/// How many lines at the end of a node's log go into an error message.
const LOG_TAIL_LINES: usize = 25;

/// What `redis-server` logs when its port is already taken.
const PORT_IN_USE_MARKER: &str = "Address already in use";

/// File name of a node's log, inside the node's temporary directory.
const LOG_FILE_NAME: &str = "redis.log";

/// Directory, inside the node's temporary directory, that each start of the
/// node gets afresh as its `--dir`, so whatever an earlier run saved (by an
/// explicit `SAVE`, say) cannot be loaded by a restarted node.
const DATA_DIR_NAME: &str = "data";

/// The only address nodes and proxies listen on.
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// Prefix of temporary directory names, so leftovers are easy to recognise.
const TEMP_DIR_PREFIX: &str = "cluster-singleton-redis-";

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

/// Several independent `redis-server` processes ("nodes") on loopback ports.
///
/// Node `i` keeps its port for the life of the `Cluster`, across
/// [`kill`](Cluster::kill), [`start_node`](Cluster::start_node) and
/// [`restart`](Cluster::restart), so URLs handed to the code under test stay
/// valid.
///
/// Dropping the `Cluster` kills every process it started (frozen ones too),
/// reaps them and removes their temporary directories. A `Cluster` kept in a
/// `static` is never dropped: its processes still die with the test process
/// (see [the crate docs](crate#no-orphans)), but its temporary directories
/// stay behind.
///
/// # Panics
///
/// Every method that takes a node index `i` panics if `i >= self.len()`.
///
/// # Example
///
/// ```no_run
/// use cluster_singleton_testkit::Cluster;
///
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// let mut cluster = Cluster::builder().nodes(5).password("s3cret").start()?;
/// assert_eq!(cluster.len(), 5);
/// cluster.kill(4)?;
/// assert_eq!(cluster.pid(4), None);
/// cluster.start_node(4)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Cluster {
    program: PathBuf,
    password: Option<String>,
    args: Vec<String>,
    nodes: Vec<Node>,
    /// How nodes are run when their clocks can be stepped.
    faketime: Option<clock::Faketime>,
    /// One per node when the cluster is proxied, else empty.
    proxies: Vec<Proxy>,
    /// The nodes' certificates, when they speak TLS (boxed: they would double the size of
    /// every `Cluster`, TLS or not).
    #[cfg(feature = "tls")]
    tls: Option<Box<tls::Certificates>>,
}

/// Options for a [`Cluster`]; made by [`Cluster::builder`].
///
/// # Example
///
/// ```no_run
/// use cluster_singleton_testkit::Cluster;
///
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// let cluster = Cluster::builder()
///     .nodes(3)
///     .password("s3cret")
///     .arg("--maxmemory")
///     .arg("64mb")
///     .start()?;
/// assert!(cluster.url(0).starts_with("redis://:s3cret@127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a ClusterBuilder does nothing until `.start()` is called"]
pub struct ClusterBuilder {
    nodes: usize,
    password: Option<String>,
    args: Vec<String>,
    proxied: bool,
    steppable_clocks: bool,
    #[cfg(feature = "tls")]
    tls: bool,
    #[cfg(feature = "tls")]
    tls_auth_clients: bool,
}

#[derive(Debug)]
struct Node {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// How far its clock has been stepped, in milliseconds (steppable clocks only).
    clock_offset_ms: i64,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 1,
            password: None,
            args: Vec::new(),
            proxied: false,
            steppable_clocks: false,
            #[cfg(feature = "tls")]
            tls: false,
            #[cfg(feature = "tls")]
            tls_auth_clients: false,
        }
    }
}

impl ClusterBuilder {
    /// Sets how many nodes to start (default 1). Zero is allowed and starts
    /// nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).start()?;
    /// assert_eq!(cluster.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Makes every node require this password (`requirepass`). URLs from
    /// [`Cluster::url`] then carry it, and [`Cluster::connection`] uses it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .password("s3cret")
    ///     .start()?;
    /// assert!(cluster.url(0).starts_with("redis://:s3cret@"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn password(mut self, p: impl Into<String>) -> Self {
        self.password = Some(p.into());
        self
    }

    /// Adds one extra command-line argument for every node's `redis-server`.
    /// Call it once per argument: `.arg("--maxmemory").arg("64mb")`.
    ///
    /// Extra arguments may override the persistence defaults (`--save ""`,
    /// `--appendonly no`), but not the port, bind address, directory, log
    /// file, daemonize setting or password, which the testkit needs to manage
    /// the node.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .arg("--maxclients")
    ///     .arg("100")
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Puts a [`Proxy`] in front of every node (default: no proxies), so that a
    /// test can partition a node from its clients, slow it down or drop its
    /// connections with [`Cluster::proxy`].
    ///
    /// [`Cluster::url`] and [`Cluster::urls`] then give the proxies'
    /// addresses: hand those to the code under test. [`Cluster::direct_url`]
    /// and [`Cluster::connection`] still reach the node itself. A proxy keeps
    /// its port across kills and restarts of its node.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .proxied(true)
    ///     .start()?;
    /// assert_eq!(cluster.url(0), format!("redis://127.0.0.1:{}", cluster.proxy(0).port()));
    /// assert_eq!(cluster.direct_url(0), format!("redis://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn proxied(mut self, proxied: bool) -> Self {
        self.proxied = proxied;
        self
    }

    /// Runs every node with a wall clock that [`Cluster::step_clock`] can step while it runs
    /// (default off). These nodes are a redis-server built with libc malloc, with libfaketime
    /// preloaded: `scripts/ensure-faketime` installs both, or see
    /// [`FAKETIME_REDIS_SERVER_ENV`] and [`LIBFAKETIME_ENV`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .steppable_clocks(true)
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn steppable_clocks(mut self, steppable: bool) -> Self {
        self.steppable_clocks = steppable;
        self
    }

    /// Makes every node speak TLS only (default: plain TCP only), with a
    /// certificate for `127.0.0.1` signed by a CA made for this cluster. Only
    /// with the `tls` feature.
    ///
    /// [`Cluster::url`] then gives `rediss://` URLs, [`Cluster::tls_ca_pem`]
    /// the CA that clients must trust, and [`Cluster::connection`] trusts it
    /// already. Proxies, if any, pass the TLS traffic through untouched.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls(true).start()?;
    /// assert_eq!(cluster.url(0), format!("rediss://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Makes every node require a client certificate signed by the
    /// cluster's CA (`--tls-auth-clients yes`: mutual TLS), and so speak TLS
    /// ([`tls(true)`](ClusterBuilder::tls) is implied). Default `false`: the
    /// nodes ask for no client certificate. Only with the `tls` feature.
    ///
    /// [`Cluster::tls_client_certificate`] is such a certificate, and
    /// [`Cluster::connection`] shows it already; a client without one, or
    /// with one from [`unrelated_client_certificate`], is refused.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .tls_auth_clients(true)
    ///     .start()?;
    /// assert!(cluster.url(0).starts_with("rediss://"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls_auth_clients = required;
        self
    }

    /// Starts the nodes and waits until each answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::RedisServerNotFound`] at once if there is no `redis-server`;
    /// otherwise whatever stopped a node from starting. Nodes already started
    /// are stopped again before the error is returned.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<Cluster, Error> {
        let faketime = self
            .steppable_clocks
            .then(clock::Faketime::find)
            .transpose()?;
        let program = match &faketime {
            Some(faketime) => faketime.server.clone(),
            None => find_redis_server()?,
        };
        let mut cluster = Cluster {
            program,
            password: self.password,
            args: self.args,
            nodes: Vec::with_capacity(self.nodes),
            faketime,
            proxies: Vec::new(),
            #[cfg(feature = "tls")]
            tls: (self.tls || self.tls_auth_clients)
                .then(|| tls::Certificates::generate(self.tls_auth_clients).map(Box::new))
                .transpose()?,
        };
        for i in 0..self.nodes {
            let dir = tempfile::Builder::new()
                .prefix(TEMP_DIR_PREFIX)
                .tempdir()
                .map_err(Error::TempDir)?;
            // Port 0 until the first start picks a free one.
            cluster.nodes.push(Node {
                port: 0,
                dir,
                child: None,
                clock_offset_ms: 0,
            });
            // On error, dropping `cluster` stops the nodes started so far.
            cluster.launch(i, PortChoice::AnyFree)?;
            if self.proxied {
                let target = (LOOPBACK, cluster.port(i)).into();
                let proxy =
                    Proxy::start(target).map_err(|source| Error::Proxy { node: i, source })?;
                cluster.proxies.push(proxy);
            }
        }
        Ok(cluster)
    }
}

/// Whether a start may move to another port.
#[derive(Clone, Copy)]
enum PortChoice {
    /// First start: any free port will do.
    AnyFree,
    /// Later starts: URLs handed out must stay valid.
    Same(u16),
}

impl Cluster {
    /// Starts `nodes` nodes; the same as `Cluster::builder().nodes(nodes).start()`.
    ///
    /// # Errors
    ///
    /// See [`ClusterBuilder::start`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(nodes: usize) -> Result<Cluster, Error> {
        Cluster::builder().nodes(nodes).start()
    }

    /// Returns a builder for a cluster with options (password, extra
    /// arguments).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(2).start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Returns the number of nodes, running or not.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert_eq!(cluster_singleton_testkit::Cluster::start(3)?.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Returns whether the cluster has no nodes at all.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(cluster_singleton_testkit::Cluster::start(0)?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Returns node `i`'s URL: `redis://127.0.0.1:PORT`, or
    /// `redis://:PASSWORD@127.0.0.1:PORT` when a password is set (with the
    /// password percent-encoded). In a [proxied](ClusterBuilder::proxied)
    /// cluster, `PORT` is that of the node's [`Proxy`]; the node's own is in
    /// [`direct_url`](Cluster::direct_url).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert_eq!(cluster.url(0), format!("redis://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self, i: usize) -> String {
        match self.proxies.get(i) {
            Some(proxy) => self.url_for_port(proxy.port()),
            None => self.url_for_port(self.node(i).port),
        }
    }

    /// Returns node `i`'s own URL, which bypasses its [`Proxy`] in a
    /// [proxied](ClusterBuilder::proxied) cluster: for checks that must see
    /// the node while its proxy is partitioned or slow. The same as
    /// [`url`](Cluster::url) when the cluster is not proxied.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().proxied(true).start()?;
    /// assert_ne!(cluster.url(0), cluster.direct_url(0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn direct_url(&self, i: usize) -> String {
        self.url_for_port(self.node(i).port)
    }

    /// Returns the [`Proxy`] in front of node `i`, to partition, delay or
    /// reset its traffic.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`, or if the cluster was not built with
    /// [`proxied(true)`](ClusterBuilder::proxied).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).proxied(true).start()?;
    /// cluster.proxy(2).partition();
    /// // ... the code under test now sees node 2 time out ...
    /// cluster.proxy(2).heal();
    /// # Ok(())
    /// # }
    /// ```
    pub fn proxy(&self, i: usize) -> &Proxy {
        let len = self.nodes.len();
        if i >= len {
            out_of_range(i, len);
        }
        self.proxies.get(i).unwrap_or_else(|| {
            panic!(
                "node {i} has no proxy: build the cluster with `Cluster::builder().proxied(true)`"
            )
        })
    }

    /// Returns whether every node has a [`Proxy`] in front of it (see
    /// [`ClusterBuilder::proxied`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(!cluster_singleton_testkit::Cluster::start(1)?.is_proxied());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_proxied(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Returns whether the nodes speak TLS (see `ClusterBuilder::tls`;
    /// always `false` without the `tls` feature).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(!cluster_singleton_testkit::Cluster::start(1)?.is_tls());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_tls(&self) -> bool {
        self.ca_pem().is_some()
    }

    /// Returns the PEM of the CA that signed the nodes' certificates: what a
    /// client of the `rediss://` URLs must trust. Made afresh for each
    /// cluster. Only with the `tls` feature.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`tls(true)`](ClusterBuilder::tls).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls(true).start()?;
    /// assert!(cluster.tls_ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_pem(&self) -> &str {
        self.ca_pem().unwrap_or_else(|| {
            panic!("this cluster does not use TLS: build it with `Cluster::builder().tls(true)`")
        })
    }

    /// Returns a client certificate (and its key) that the cluster's CA
    /// signed: what a client of nodes built with
    /// [`tls_auth_clients(true)`](ClusterBuilder::tls_auth_clients) must show.
    /// Made afresh for each TLS cluster. Only with the `tls` feature.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`tls(true)`](ClusterBuilder::tls)
    /// or `tls_auth_clients(true)`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls_auth_clients(true).start()?;
    /// let client = cluster.tls_client_certificate();
    /// assert!(client.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_certificate(&self) -> &ClientCertificate {
        match &self.tls {
            Some(certificates) => certificates.client(),
            None => panic!(
                "this cluster does not use TLS: build it with `Cluster::builder().tls(true)`"
            ),
        }
    }

    /// Returns every node's URL, in index order.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// assert_eq!(cluster.urls().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// Returns node `i`'s port on `127.0.0.1`. It does not change when the
    /// node is killed, started again or restarted. In a
    /// [proxied](ClusterBuilder::proxied) cluster it is the node's own port;
    /// clients use the proxy's, [`proxy(i).port()`](Proxy::port).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let port = cluster.port(0);
    /// cluster.restart(0)?;
    /// assert_eq!(cluster.port(0), port);
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// Returns the pid of node `i`'s `redis-server`, or `None` while the node
    /// is killed. A frozen node still has its pid.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert!(cluster.pid(0).is_some());
    /// cluster.kill(0)?;
    /// assert_eq!(cluster.pid(0), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Kills node `i` with `SIGKILL` and waits for the process to end, as a
    /// crash would. Killing a killed node does nothing. A frozen node is
    /// killed too.
    ///
    /// # Errors
    ///
    /// [`Error::Process`] if the OS refuses to signal or reap the process.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// cluster.kill(2)?;
    /// assert!(cluster.connection(2).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill(&mut self, i: usize) -> Result<(), Error> {
        let node = self.node_mut(i);
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        // ESRCH cannot happen for an unreaped child, even one that exited on
        // its own (it is a zombie), so any error here is real.
        signal(pid, libc::SIGKILL).map_err(|source| Error::Process {
            action: "send SIGKILL to",
            node: i,
            pid,
            source,
        })?;
        child.wait().map_err(|source| Error::Process {
            action: "wait for",
            node: i,
            pid,
            source,
        })?;
        node.child = None;
        Ok(())
    }

    /// Freezes node `i` with `SIGSTOP`: the process stays alive and its port
    /// keeps accepting TCP connections, but it answers nothing, like a node
    /// stuck in a long GC pause or swap storm. Returns once the process is
    /// actually stopped. Freezing a frozen node does nothing.
    ///
    /// Use a read timeout on connections to a frozen node, or they block until
    /// it is resumed.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Process`] if the
    /// OS refuses to signal it.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// cluster.freeze(0)?;
    /// // ... the code under test now sees node 0 time out ...
    /// cluster.resume(0)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn freeze(&mut self, i: usize) -> Result<(), Error> {
        let pid = self.running_pid(i)?;
        let process_error = |action, source| Error::Process {
            action,
            node: i,
            pid,
            source,
        };
        signal(pid, libc::SIGSTOP).map_err(|e| process_error("send SIGSTOP to", e))?;
        // The signal is delivered asynchronously; wait until the kernel reports
        // the process stopped, so a test's very next request is guaranteed to
        // meet a frozen node.
        wait_until_stopped(pid).map_err(|e| process_error("wait for SIGSTOP of", e))
    }

    /// Resumes a node frozen by [`freeze`](Cluster::freeze), with `SIGCONT`.
    /// It then answers the requests that queued up meanwhile. Resuming a node
    /// that is not frozen does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Process`] if the
    /// OS refuses to signal it.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// cluster.freeze(0)?;
    /// cluster.resume(0)?;
    /// let mut con = cluster.connection(0)?;
    /// redis::cmd("PING").exec(&mut con).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub fn resume(&mut self, i: usize) -> Result<(), Error> {
        let pid = self.running_pid(i)?;
        // SIGCONT wakes a stopped process while the signal is being sent, so
        // unlike freeze there is nothing to wait for.
        signal(pid, libc::SIGCONT).map_err(|source| Error::Process {
            action: "send SIGCONT to",
            node: i,
            pid,
            source,
        })
    }

    /// Kills node `i` if it runs, then starts it again on the same port with
    /// an empty dataset, and waits until it answers `PING`: a node restarted
    /// without persistence, which forgets every key (and every lock). The new
    /// process has a new `run_id`.
    ///
    /// # Errors
    ///
    /// As [`kill`](Cluster::kill) and [`start_node`](Cluster::start_node).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let mut con = cluster.connection(0)?;
    /// redis::cmd("SET").arg("k").arg("v").exec(&mut con)?;
    /// cluster.restart(0)?;
    /// let mut con = cluster.connection(0)?;
    /// let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con)?;
    /// assert_eq!(v, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.kill(i)?;
        self.start_node(i)
    }

    /// Steps node `i`'s wall clock by `by_ms` milliseconds (forward when positive, back when
    /// negative) while it runs, as an NTP step or an operator setting the time would: keys it
    /// holds expire by the stepped clock from then on. The step stays across restarts of the
    /// node. Its monotonic clock does not move.
    ///
    /// # Errors
    ///
    /// [`Error::ClockNotSteppable`] unless the cluster was started with
    /// [`ClusterBuilder::steppable_clocks`]; [`Error::StepClock`] if the offset file could not
    /// be written.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .steppable_clocks(true)
    ///     .start()?;
    /// cluster.step_clock(1, 120_000)?; // node 1 is now two minutes ahead
    /// # Ok(())
    /// # }
    /// ```
    pub fn step_clock(&mut self, i: usize, by_ms: i64) -> Result<(), Error> {
        if self.faketime.is_none() {
            return Err(Error::ClockNotSteppable { node: i });
        }
        let node = self.node_mut(i);
        let offset = node.clock_offset_ms.saturating_add(by_ms);
        clock::write_offset(node.dir.path(), offset)
            .map_err(|source| Error::StepClock { node: i, source })?;
        node.clock_offset_ms = offset;
        Ok(())
    }

    /// Starts killed node `i` again on its port, with an empty dataset, and
    /// waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if the node runs (use
    /// [`restart`](Cluster::restart) for that); otherwise whatever stopped the
    /// node from starting, e.g. [`Error::Exited`] if another process took the
    /// port meanwhile.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// cluster.kill(1)?;
    /// // ... the code under test runs with one node down ...
    /// cluster.start_node(1)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_node(&mut self, i: usize) -> Result<(), Error> {
        let node = self.node(i);
        if node.child.is_some() {
            return Err(Error::AlreadyRunning { node: i });
        }
        self.launch(i, PortChoice::Same(node.port))
    }

    /// Opens a synchronous redis-rs connection to node `i` (authenticated if a
    /// password is set, over TLS trusting `Cluster::tls_ca_pem` and showing
    /// `Cluster::tls_client_certificate` if the nodes speak TLS), for setting up and checking state in tests. It goes
    /// to the node's [`direct_url`](Cluster::direct_url), bypassing any
    /// [`Proxy`]. It has no read timeout; set one with
    /// [`set_read_timeout`](redis::Connection::set_read_timeout) when talking
    /// to a node that may be frozen.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Connect`] if
    /// connecting fails, e.g. within 5 seconds to a frozen node.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let mut con = cluster.connection(0)?;
    /// let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con)?;
    /// assert!(keys.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn connection(&self, i: usize) -> Result<redis::Connection, Error> {
        if self.node(i).child.is_none() {
            return Err(Error::NotRunning { node: i });
        }
        let url = self.direct_url(i);
        let connect_error = |source| Error::Connect {
            node: i,
            url: url.clone(),
            source,
        };
        self.client(&url)
            .map_err(connect_error)?
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(connect_error)
    }

    /// Returns the contents of node `i`'s log file, which also collects the
    /// process's stdout and stderr, over all of its starts (each start begins
    /// with a line from the testkit). Empty if it cannot be read.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert!(cluster.log(0).contains("Ready to accept connections"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.node(i).log_path(), 0)
    }

    /// The CA's PEM when the nodes speak TLS.
    fn ca_pem(&self) -> Option<&str> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            return Some(certificates.ca_pem());
        }
        None
    }

    /// A redis-rs client for one of this cluster's URLs, trusting the
    /// cluster's CA and showing its client certificate when the nodes speak
    /// TLS.
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            return tls::client(url, certificates);
        }
        redis::Client::open(url)
    }

    fn node(&self, i: usize) -> &Node {
        let len = self.nodes.len();
        self.nodes.get(i).unwrap_or_else(|| out_of_range(i, len))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| out_of_range(i, len))
    }

    fn running_pid(&self, i: usize) -> Result<u32, Error> {
        self.pid(i).ok_or(Error::NotRunning { node: i })
    }

    /// Starts node `i`'s process and waits until it is ready, trying new
    /// ports when allowed and the chosen one turned out to be taken.
    fn launch(&mut self, i: usize, choice: PortChoice) -> Result<(), Error> {
        let attempts = match choice {
            PortChoice::AnyFree => MAX_PORT_ATTEMPTS,
            PortChoice::Same(_) => 1,
        };
        let mut attempt = 1;
        loop {
            let port = match choice {
                PortChoice::AnyFree => free_port()?,
                PortChoice::Same(port) => port,
            };
            match self.launch_on(i, port) {
                Ok(child) => {
                    let node = self.node_mut(i);
                    node.port = port;
                    node.child = Some(child);
                    return Ok(());
                }
                Err((error, port_in_use)) => {
                    if !(port_in_use && attempt < attempts) {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
        }
    }

    /// One try at starting node `i` on `port`. On failure the process is
    /// gone, and the flag says whether the port was taken.
    fn launch_on(&self, i: usize, port: u16) -> Result<Child, (Error, bool)> {
        let node = self.node(i);
        let data_dir = node.dir.path().join(DATA_DIR_NAME);
        let log_path = node.log_path();
        let (log, log_start) = prepare_start(&data_dir, &log_path, port).map_err(|e| (e, false))?;

        let mut command = Command::new(&self.program);
        if let Some(faketime) = &self.faketime {
            faketime
                .prepare(&mut command, node.dir.path())
                .map_err(|e| (e, false))?;
        }
        // Persistence defaults first, so extra arguments may override them;
        // what the testkit relies on last, so they cannot.
        command.args(["--save", "", "--appendonly", "no"]);
        command.args(&self.args);
        self.listen(&mut command, port);
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&data_dir)
            .arg("--logfile")
            .arg(&log_path)
            .args(["--daemonize", "no"]);
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        let stderr = log.try_clone().map_err(|e| (Error::TempDir(e), false))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));

        let mut child = spawn(command).map_err(|source| {
            let error = Error::Spawn {
                program: self.program.clone(),
                source,
            };
            (error, false)
        })?;

        let url = self.url_for_port(port);
        let ready = match self.client(&url) {
            Ok(client) => wait_ready(&mut child, &client),
            Err(source) => Err(NotReady::Client(source)),
        };
        match ready {
            Ok(()) => Ok(child),
            Err(outcome) => {
                // Never leave a half-started process behind; errors are moot
                // since the process may already be gone.
                let _ = signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                let log_tail = tail(&read_lossy(&log_path, log_start), LOG_TAIL_LINES);
                let port_in_use = log_tail.contains(PORT_IN_USE_MARKER);
                let error = match outcome {
                    NotReady::Exited(status) => Error::Exited {
                        node: i,
                        port,
                        status,
                        log_tail,
                    },
                    NotReady::Timeout => Error::NotReady {
                        node: i,
                        port,
                        timeout: READY_TIMEOUT,
                        log_tail,
                    },
                    NotReady::Wait(source) => Error::Process {
                        action: "wait for",
                        node: i,
                        pid: child.id(),
                        source,
                    },
                    NotReady::Client(source) => Error::Connect {
                        node: i,
                        url,
                        source,
                    },
                };
                Err((error, port_in_use))
            }
        }
    }

    /// Makes the node listen on `port`: plain TCP, or TLS only.
    fn listen(&self, command: &mut Command, port: u16) {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            certificates.listen(command, port);
            return;
        }
        command.arg("--port").arg(port.to_string());
    }

    fn url_for_port(&self, port: u16) -> String {
        let scheme = if self.is_tls() { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{}@127.0.0.1:{port}", percent_encode(p)),
            None => format!("{scheme}://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // Nothing better to do with an error in drop; SIGKILL of our own
            // unreaped child does not fail in practice.
            let _ = self.kill(i);
        }
        // The nodes' TempDirs are removed as the fields drop, after the
        // processes writing into them are gone.
    }
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE_NAME)
    }
}

#[cold]
fn out_of_range(i: usize, len: usize) -> ! {
    panic!("node index {i} is out of range: this cluster has {len} node(s)")
}

/// Makes an empty data directory and opens the log for appending, marking
/// where this start begins. Returns the log and the offset of this start's
/// output in it.
fn prepare_start(data_dir: &Path, log_path: &Path, port: u16) -> Result<(File, u64), Error> {
    match fs::remove_dir_all(data_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::TempDir(e)),
        _ => {}
    }
    fs::create_dir(data_dir).map_err(Error::TempDir)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(Error::TempDir)?;
    let start = log.metadata().map_err(Error::TempDir)?.len();
    writeln!(
        log,
        "--- cluster-singleton-testkit: starting redis-server on 127.0.0.1:{port} ---"
    )
    .map_err(Error::TempDir)?;
    Ok((log, start))
}

/// Why a node did not become ready.
enum NotReady {
    Exited(String),
    Timeout,
    Wait(io::Error),
    /// No client could be made for the node's URL.
    Client(redis::RedisError),
}

/// Polls until `child` answers through `client`, it exits, or the deadline
/// passes.
fn wait_ready(child: &mut Child, client: &redis::Client) -> Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(NotReady::Exited(status.to_string())),
            Ok(None) => {}
            Err(e) => return Err(NotReady::Wait(e)),
        }
        if answers_as(client, child.id()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout);
        }
        thread::sleep(READY_POLL_INTERVAL);
    }
}

/// Whether the server behind `client` answers PING and is the process `pid`. The
/// second check matters when another process grabbed our port: our node is
/// about to exit with "Address already in use", and the squatter's answers
/// must not pass for its readiness.
fn answers_as(client: &redis::Client, pid: u32) -> bool {
    let probe = || -> redis::RedisResult<bool> {
        let mut con = client.get_connection_with_timeout(PROBE_TIMEOUT)?;
        con.set_read_timeout(Some(PROBE_TIMEOUT))?;
        con.set_write_timeout(Some(PROBE_TIMEOUT))?;
        let pong: String = redis::cmd("PING").query(&mut con)?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut con)?;
        let process_id = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        Ok(pong == "PONG" && process_id == Some(pid))
    };
    probe().unwrap_or(false)
}

/// Asks the OS for a port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}

/// Finds the `redis-server` to run, failing at once with advice if there is
/// none.
fn find_redis_server() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::RedisServerNotFound(format!(
                "{REDIS_SERVER_ENV} is set to `{}`, but that is not an executable file; \
                 point it at a redis-server binary, or unset it to use `{REDIS_SERVER_PROGRAM}` from PATH",
                path.display()
            )))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(REDIS_SERVER_PROGRAM))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            Error::RedisServerNotFound(format!(
                "`{REDIS_SERVER_PROGRAM}` was not found on PATH; install it \
                 (Debian: `apt-get install redis-server`) or set {REDIS_SERVER_ENV} to its path"
            ))
        })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    const ANY_EXECUTE_BIT: u32 = 0o111;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & ANY_EXECUTE_BIT != 0)
        .unwrap_or(false)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// password survives inside a URL's userinfo.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Reads a file from `offset` on, replacing invalid UTF-8; empty on error,
/// since this only feeds diagnostics.
fn read_lossy(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `sig` to the process `pid`.
fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is that of
    // our own child, which has not been reaped, so it cannot have been reused
    // by an unrelated process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocks until the child `pid` is stopped (or has exited), without reaping
/// it, so `Child::wait` still works afterwards.
fn wait_until_stopped(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C
        // struct, and waitid only writes into the one we pass.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the
        // child's state to be collected later by `Child::wait`.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

// Why a spawner thread: every node is started with PR_SET_PDEATHSIG =
// SIGKILL so that it dies with the test process even when that is SIGKILLed
// and no Drop runs. But Linux sends the death signal when the *thread* that
// forked the child exits, not the process. The Rust test harness runs each
// test on its own short-lived thread, and a Cluster may outlive it (kept in a
// static, or shared between tests), so forking from the caller's thread would
// kill nodes as soon as the test that started them returns. Instead, every
// child is forked by one dedicated thread that lives as long as the process.

/// A request to the spawner thread: the command, and where to send the result.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's inbox; `None` until the thread is first needed.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// Spawns `command` from the spawner thread, with the death signal set.
fn spawn(command: Command) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        // A panic while holding the lock cannot leave the Option half-written.
        let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        let sender = match spawner.as_ref() {
            Some(sender) => sender,
            None => spawner.insert(start_spawner()?),
        };
        sender
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?
}

fn start_spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    thread::Builder::new()
        .name("cluster-singleton-testkit-spawner".into())
        .spawn(move || {
            // Runs until the process exits: the Sender lives in a static.
            for (command, reply) in rx {
                // If the requester is gone, the Child drops here; its death
                // signal still ends it when the process exits.
                let _ = reply.send(spawn_with_death_signal(command));
            }
        })?;
    Ok(tx)
}

fn spawn_with_death_signal(mut command: Command) -> io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: the hook runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid) and builds io::Errors from
    // raw OS codes, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the parent died between fork and prctl, the death signal
            // will never come: the child was already reparented. Give up.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("p@ss:w/rd %"), "p%40ss%3Aw%2Frd%20%25");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    #[should_panic(expected = "node index 3 is out of range")]
    fn out_of_range_index_panics_clearly() {
        let cluster = Cluster::start(0).unwrap();
        let _ = cluster.port(3);
    }
}
