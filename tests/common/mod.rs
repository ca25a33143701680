//! What every behaviour test needs: real Redis nodes, a runtime on them, and polling with a
//! deadline instead of sleeping and hoping.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::future::Future;
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton_testkit::Cluster;

/// Short, so that tests of dead and frozen nodes stay fast; loopback answers in microseconds.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a test waits for something that should happen "at once" (a background release).
pub const PROMPTLY: Duration = Duration::from_secs(1);

/// How often polling looks again.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// How many times node `i` of `cluster` has run `command` (lower case, as `INFO commandstats`
/// names it; `evalsha` counts the scripts).
pub fn calls_on(cluster: &Cluster, i: usize, command: &str) -> u64 {
    let mut connection = cluster.connection(i).expect("connect to node");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// What is left of `key`'s ttl on node `i` of `cluster`, in milliseconds (`-2`: no such key).
pub fn pttl(cluster: &Cluster, i: usize, key: &str) -> i64 {
    let mut connection = cluster.connection(i).expect("connect to node");
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut connection)
        .expect("PTTL")
}

/// `n` real redis-server nodes and a runtime that locks on them.
pub struct Nodes {
    pub cluster: Cluster,
    pub runtime: Runtime,
}

impl Nodes {
    pub fn start(n: usize) -> Nodes {
        let cluster = Cluster::start(n).expect("start redis-server nodes");
        let runtime = runtime_for(&cluster);
        Nodes { cluster, runtime }
    }

    /// Runs `future` with this runtime in scope, as `#[singleton]` functions need.
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        self.runtime.scope(future).await
    }

    /// The value of the Redis key `key` on node `i`.
    pub fn get(&self, i: usize, key: &str) -> Option<String> {
        let mut connection = self.cluster.connection(i).expect("connect to node");
        redis::cmd("GET")
            .arg(key)
            .query(&mut connection)
            .expect("GET")
    }

    /// The value of `key` on every node that is not in `skip` (frozen or killed nodes).
    pub fn values(&self, key: &str, skip: &[usize]) -> Vec<Option<String>> {
        (0..self.cluster.len())
            .filter(|i| !skip.contains(i))
            .map(|i| self.get(i, key))
            .collect()
    }

    /// On how many nodes `key` holds `value`. A lock is taken once a quorum granted it, so the
    /// other nodes' copies may still be on their way: count, don't look at one node.
    pub fn holding(&self, key: &str, value: &str) -> usize {
        self.values(key, &[])
            .iter()
            .filter(|held| held.as_deref() == Some(value))
            .count()
    }

    /// Whether no reachable node has `key`.
    pub fn absent(&self, key: &str, skip: &[usize]) -> bool {
        self.values(key, skip).iter().all(Option::is_none)
    }

    /// How many scripts (`EVALSHA`) node `i` has run: how a test knows that a release reached a
    /// node, so that it can look at what the release did without sleeping.
    pub fn scripts_run(&self, i: usize) -> u64 {
        self.calls(i, "evalsha")
    }

    /// How many times node `i` has run `command` (lower case, as `INFO commandstats` names it).
    pub fn calls(&self, i: usize, command: &str) -> u64 {
        calls_on(&self.cluster, i, command)
    }

    /// Sets `key` to `value` on every node, as another holder would.
    pub fn set_everywhere(&self, key: &str, value: &str) {
        for i in 0..self.cluster.len() {
            let mut connection = self.cluster.connection(i).expect("connect to node");
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query(&mut connection)
                .expect("SET");
        }
    }
}

/// A runtime on `cluster`'s nodes with the tests' short node timeout.
pub fn runtime_for(cluster: &Cluster) -> Runtime {
    fresh_nodes(cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .expect("valid configuration")
}

/// Waits until `runtime` can lock: the fresh nodes have served out a restart grace of `grace`
/// (and the seconds by which Redis rounds uptimes), and the runtime has connected to every node.
pub async fn until_nodes_vote(runtime: &Runtime, grace: Duration) {
    const UPTIME_RESOLUTION: Duration = Duration::from_secs(1);
    let deadline = Instant::now() + grace + UPTIME_RESOLUTION * 3;
    while runtime.lock("warm-up", grace).await.is_err() {
        assert!(Instant::now() < deadline, "the nodes never came of age");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Deletes `held`'s copy on node 2, as a `SET` that never arrived would have left it: the lease
/// then stands on a bare quorum of nodes 0 and 1 (see [`lose_copy_on`]).
pub async fn lose_copy_on_node_2(cluster: &Cluster, held: &cluster_singleton::Lease) {
    lose_copy_on(cluster, 2, held).await;
}

/// Deletes `held`'s copy on node `node`, as a `SET` that never arrived would have left it. A lock
/// is taken once a majority granted it, so the `SET` on that node may still be on its way: the
/// copy is deleted once it has landed (or, if it has not within a second, at once), or it could
/// land after the delete.
pub async fn lose_copy_on(cluster: &Cluster, node: usize, held: &cluster_singleton::Lease) {
    let mut connection = cluster.connection(node).expect("connect to the node");
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg(held.key())
            .query(&mut connection)
            .expect("GET on the node");
        if value.as_deref() == Some(held.token()) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _: () = redis::cmd("DEL")
        .arg(held.key())
        .query(&mut connection)
        .expect("DEL on the node");
}

/// A configuration for nodes the test has just started: they hold no lock that a restart could
/// have made them forget, so their votes count at once rather than after the restart grace.
pub fn fresh_nodes(cluster: &Cluster) -> Config {
    Config::new(cluster.urls()).restart_grace(Duration::ZERO)
}

/// Polls `condition` until it holds or `within` has passed; returns whether it held.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A multi-threaded runtime, as a program's `#[tokio::main]` builds: it drives the connections of
/// the calls made on it.
pub fn program_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `future` on a current-thread runtime of its own, for tests of runtimes, which cannot run
/// inside one.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// For a body: waits on its lease's loss for at most `for_at_most`, noting in `seen` every
/// `every` the latest deadline its validity gave, and when the loss was heard.
pub async fn watch_the_deadline(
    seen: &std::sync::Mutex<(Instant, Option<Instant>)>,
    every: Duration,
    for_at_most: Duration,
) {
    let lease = cluster_singleton::lease().expect("called in a body");
    let lost = lease.lost();
    tokio::pin!(lost);
    let end = Instant::now() + for_at_most;
    loop {
        let until = Instant::now() + lease.validity();
        {
            let mut seen = seen.lock().unwrap();
            seen.0 = seen.0.max(until);
        }
        tokio::select! {
            _ = &mut lost => {
                seen.lock().unwrap().1 = Some(Instant::now());
                return;
            }
            () = tokio::time::sleep(every) => {}
        }
        if Instant::now() >= end {
            return;
        }
    }
}
