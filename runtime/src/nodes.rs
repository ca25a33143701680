//! The nodes a runtime locks on: the list, the quorum, the deadline of a node's answer, and the
//! crate's own thread, where the work that outlives its caller runs (a release of a dropped
//! lease, the slower nodes' commands).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::runtime::Handle;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::backlog::Backlog;
use crate::node::{FleetGrace, Node};
use crate::{driver, telemetry, Config, Error};

/// The crate's own tokio runtime, one background thread that lives as long as the process: it
/// drives the connections that no caller's multi-threaded runtime drives (see
/// [`crate::driver`]), runs renewal and the releases of dropped leases (a release spawned on a
/// runtime that is shutting down might never run), and keeps the clock of every deadline.
static CRATE_THREAD: LazyLock<Result<tokio::runtime::Runtime, String>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cluster-singleton")
        .enable_all()
        .build()
        .map_err(|err| format!("could not start the background thread: {err}"))
});

/// How often every node's connection is checked: the server's `run_id` (a restart behind a
/// proxy that kept the connection open) and whether it answers at all (a dead flow). A restart
/// behind such a proxy may go unnoticed for this long, plus the node timeout.
const NODE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Lock attempts and releases that may be in flight at once. A burst of calls beyond it waits
/// for its turn before its clock starts, rather than queueing so many commands that the later
/// ones miss their node timeout (or the clock check's allowance), which would report an overload
/// as an outage. Sixty-four keep three local nodes as busy as they get (the benchmark's floor
/// runs 64 tasks); 50,000 calls at once then all decide, where 256 left a few hundred of them
/// too slow for the clock check on two cores. Extensions take no turn: a lease must not wait
/// behind a burst of acquisitions for its renewal.
const ROUNDS_IN_FLIGHT: usize = 64;

/// How many votes decide: a strict majority of the nodes.
pub(crate) fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// The nodes of one runtime, and what every round on them shares.
pub(crate) struct Nodes {
    list: Vec<Node>,
    quorum: usize,
    /// How long a round waits for a node's answer.
    timeout: Duration,
    drift_factor: f64,
    holder_id: String,
    crate_thread: Handle,
    /// Where commands nobody waits for any more are kept until answered.
    backlog: Arc<Backlog>,
    /// The restart grace and what feeds it; `None` when off.
    grace: Option<Arc<FleetGrace>>,
    /// Attempts in flight and releases running in the background, which `shutdown` waits for.
    in_flight: Arc<AtomicUsize>,
    /// Turns for lock attempts and releases: [`ROUNDS_IN_FLIGHT`] at a time.
    turns: Arc<Semaphore>,
}

impl Nodes {
    /// The nodes of `config`, checked (URLs, no node listed twice, `memory://` alone), not
    /// connected yet; their once-a-second check starts on the crate's thread.
    pub(crate) fn new(config: &Config) -> Result<Arc<Nodes>, Error> {
        let crate_thread = CRATE_THREAD
            .as_ref()
            .map_err(|err| Error::Internal(err.clone()))?
            .handle();
        let grace = config
            .effective_restart_grace()
            .map(|grace| FleetGrace::new(grace, config));
        let mut seen = HashMap::new();
        let mut list = Vec::with_capacity(config.urls.len());
        for (index, url) in config.urls.iter().enumerate() {
            let position = index + 1;
            let node = Node::new(position, url, config, grace.clone(), crate_thread)?;
            if let Some(first) = Node::identity(url).and_then(|id| seen.insert(id, position)) {
                return Err(Error::InvalidConfig(format!(
                    "Redis node {} is listed twice (URLs #{first} and #{position}); list each \
                     independent node once",
                    node.name()
                )));
            }
            list.push(node);
        }
        if list.iter().any(Node::is_memory) && !list.iter().all(Node::is_memory) {
            return Err(Error::InvalidConfig(
                "`memory://` nodes cannot be mixed with Redis nodes; use `memory://` alone, in tests".into(),
            ));
        }
        if list.len() > 1 && list.len().is_multiple_of(2) {
            tracing::warn!(
                nodes = list.len(),
                "an even number of Redis nodes tolerates no more failures than one node fewer; use an odd number"
            );
        }
        let nodes = Arc::new(Nodes {
            quorum: quorum(list.len()),
            list,
            timeout: config.node_timeout,
            drift_factor: config.drift_factor,
            holder_id: config.holder_id.clone(),
            crate_thread: crate_thread.clone(),
            backlog: Backlog::new(crate_thread.clone()),
            grace,
            in_flight: Arc::default(),
            turns: Arc::new(Semaphore::new(ROUNDS_IN_FLIGHT)),
        });
        if !nodes.is_memory() {
            drop(crate_thread.spawn(check_every_second(Arc::downgrade(&nodes))));
        }
        Ok(nodes)
    }

    pub(crate) fn node(&self, index: usize) -> &Node {
        &self.list[index]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Node> {
        self.list.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// How many nodes must agree: a strict majority.
    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    /// How long a round waits for a node's answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn drift_factor(&self) -> f64 {
        self.drift_factor
    }

    /// How this process names itself in the locks it takes.
    pub(crate) fn holder_id(&self) -> &str {
        &self.holder_id
    }

    /// The crate's own runtime, whose clock every deadline uses.
    pub(crate) fn crate_thread(&self) -> &Handle {
        &self.crate_thread
    }

    pub(crate) fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// Whether these are in-process `memory://` stores.
    pub(crate) fn is_memory(&self) -> bool {
        self.list.iter().all(Node::is_memory)
    }

    /// Changes each time a node's clock is seen to step forward; `None` when nothing watches
    /// the clocks (see `Config::detect_clock_jumps`).
    pub(crate) fn clock_jumps(&self) -> Option<watch::Receiver<u64>> {
        self.grace.as_ref().map(|grace| grace.clock_jumps())
    }

    /// Opens a connection to every node, waiting at most the connect timeout; failures are left
    /// for later calls to retry. Warns when locking cannot work yet.
    pub(crate) async fn connect(&self) {
        // Each opening runs as a task of its own: it goes on if this wait is cut short.
        join_all(self.list.iter().map(|node| async move {
            if let Err(err) = node.connect().await {
                tracing::warn!(node = node.name(), error = %err, "cannot reach a Redis node yet; later calls retry it");
            }
        }))
        .await;
        if self.is_memory() {
            tracing::warn!(
                "cluster-singleton runs on `memory://`, a store inside this process: it locks \
                 nothing across processes or machines; give `init` the URLs of Redis nodes"
            );
            return;
        }
        // Fresh nodes (a cluster that just started) give no vote until their restart grace has
        // passed: say when locking can begin, so that a first run is not a mystery.
        let mut grace_ends: Vec<Instant> = self.list.iter().filter_map(Node::grace_ends).collect();
        let counting = self.len() - grace_ends.len();
        if counting < self.quorum {
            grace_ends.sort_unstable();
            if let Some(ends) = grace_ends.get(self.quorum - counting - 1) {
                tracing::warn!(
                    young = grace_ends.len(),
                    nodes = self.len(),
                    locking_in = ?ends.saturating_duration_since(Instant::now()),
                    "too many Redis nodes are inside their restart grace to lock yet (they \
                     started recently, and may have forgotten locks); calls fail with `NoQuorum` \
                     until then (see `Config::restart_grace`)"
                );
            }
        }
    }

    /// Opens the connections that are not open, before a round that puts our token on the
    /// nodes (a vote, an extension), waiting up to the node timeout for those worth waiting for
    /// (see `Node::worth_waiting_for`): after a restart, or when the runtime that drove them shut
    /// down, or on the first call of a runtime that was never connected.
    ///
    /// Such a round never waits for a connection itself: a node without an open connection fails
    /// in it at once, and the once-a-second check opens it in the background. A command that
    /// waited for its connection would be queued only once it opened, after whatever was sent
    /// meanwhile: a `SET` overtaken by its release, or an extension overtaken by a release (it
    /// puts our token back where the key is absent), would leave a copy behind.
    pub(crate) async fn open_connections(&self) {
        let opening: Vec<_> = self
            .list
            .iter()
            .filter(|node| node.worth_waiting_for(self.timeout))
            .map(Node::open)
            .collect();
        if opening.is_empty() {
            return;
        }
        // An attempt cut short here goes on as a task of its own (see `Node::open`).
        let _ = driver::timeout(&self.crate_thread, self.timeout, join_all(opening)).await;
    }

    /// Before the runtime's first lock attempt: every node is checked (within the node timeout),
    /// which announces how many nodes this runtime locks on and reads the other machines'. A node
    /// whose check did not answer in time gives no vote until a later check has read it (see
    /// `Node::voting_session`), so that of two machines with lists of different lengths, the one
    /// that reads a node where the other announced counts no vote (see `FleetGrace`).
    pub(crate) async fn begin_locking(&self) {
        let Some(grace) = &self.grace else {
            return;
        };
        grace
            .begin_locking(|| async {
                let checks = join_all(self.list.iter().map(Node::check));
                let _ = driver::timeout(&self.crate_thread, self.timeout, checks).await;
            })
            .await;
    }

    /// Waits for a turn to start a lock attempt or a release (see [`ROUNDS_IN_FLIGHT`]); the
    /// turn ends when the returned permit is dropped. A caller whose clock (a lock's validity, a round's deadline)
    /// starts only after this returns does not count the wait against it.
    pub(crate) async fn turn(&self) -> OwnedSemaphorePermit {
        self.turns
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore of turns is never closed")
    }

    /// Runs `work` on the crate's own runtime, counted as work in flight that `shutdown` waits
    /// for.
    pub(crate) fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        let in_flight = self.in_flight();
        drop(self.crate_thread.spawn(async move {
            let _in_flight = in_flight;
            work.await;
        }));
    }

    /// Counts work that `shutdown` waits for (an attempt, a background release) for as long as
    /// the returned guard lives.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Whether no attempt, background release or straggling command is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.backlog.is_empty()
    }
}

/// Work that `shutdown` waits for, counted while this lives.
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Checks every node once a second (see [`Node::check`]) for as long as the nodes are in use.
async fn check_every_second(nodes: Weak<Nodes>) {
    loop {
        tokio::time::sleep(NODE_CHECK_EVERY).await;
        let Some(nodes) = nodes.upgrade() else {
            return;
        };
        join_all(nodes.list.iter().map(Node::check)).await;
        for node in &nodes.list {
            let left = node.grace_ends().map_or(Duration::ZERO, |ends| {
                ends.saturating_duration_since(Instant::now())
            });
            telemetry::node_grace(node.name(), left);
        }
    }
}
