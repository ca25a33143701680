//! One connection per node per process: however many calls run at once, on a multi-threaded or
//! a current-thread tokio runtime, a `Runtime` sends them all over a single TCP connection to each
//! node, as each node's own `CLIENT LIST` shows while the calls run and after they end.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_singleton::runtime::Runtime;
use cluster_singleton::{singleton, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes};
use futures_util::future::join_all;
use tokio::sync::Notify;

const NODES: usize = 3;
/// How many times every node is looked at while the calls run.
const SAMPLES: usize = 6;
const TTL: Duration = Duration::from_secs(30);

#[singleton(key = "connections-job:{n}", ttl = "30s")]
async fn job(n: usize) -> usize {
    n
}

/// What the calls did, and the flag that ends them once the sampling is done.
#[derive(Default)]
struct Progress {
    cycles: AtomicUsize,
    stop: AtomicBool,
    cycled: Notify,
}

/// Locks and releases its own key, with a `run` and a `#[singleton]` call every fourth cycle,
/// until told to stop (and at least once).
async fn calls(runtime: Runtime, n: usize, progress: Arc<Progress>) {
    let key = format!("connections-{n}");
    for cycle in 0.. {
        if cycle > 0 && progress.stop.load(Ordering::SeqCst) {
            break;
        }
        let lease = runtime.lock(&key, TTL).await.expect("quorum is up");
        lease.expect("an own key").release().await.expect("release");
        if cycle % 4 == 0 {
            let ran = runtime.run(&key, TTL, async { n }).await.expect("run");
            let job = runtime.scope(job(n)).await.expect("singleton");
            assert_eq!((ran, job), (Outcome::Ran(n), Outcome::Ran(n)));
        }
        progress.cycles.fetch_add(1, Ordering::SeqCst);
        progress.cycled.notify_one();
    }
}

/// The nodes, and a connection of the test's own to each with its `CLIENT ID`. Redis numbers
/// clients in order, so a client with a higher id connected later: after every connection the
/// node had before the runtime was built, the test's own included.
struct Watch {
    cluster: Cluster,
    admin: Vec<(redis::Connection, u64)>,
}

impl Watch {
    fn start() -> Watch {
        let cluster = Cluster::start(NODES).expect("start redis-server nodes");
        let admin = (0..NODES)
            .map(|i| {
                let mut admin = cluster.connection(i).expect("connect to node");
                let id = redis::cmd("CLIENT")
                    .arg("ID")
                    .query(&mut admin)
                    .expect("CLIENT ID");
                (admin, id)
            })
            .collect();
        Watch { cluster, admin }
    }

    /// Node `i`'s `CLIENT LIST` lines of the clients that connected after the test's own.
    fn newer(&mut self, i: usize) -> Vec<String> {
        let (admin, admin_id) = &mut self.admin[i];
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(admin)
            .expect("CLIENT LIST");
        list.lines()
            .filter(|line| id(line) > *admin_id)
            .map(str::to_owned)
            .collect()
    }

    fn assert_one_connection_each(&mut self, when: &str) {
        for i in 0..NODES {
            let newer = self.newer(i);
            assert_eq!(newer.len(), 1, "node {i} {when}: {newer:#?}");
        }
    }

    /// Looks at every node `SAMPLES` times, each after the calls made as many more cycles as
    /// there are calls, then stops them.
    async fn sample_while_running(&mut self, progress: &Progress, tasks: usize) {
        // A lock returns once a quorum voted: the last node's connection may still be opening.
        let connected = eventually(Duration::from_secs(10), || {
            (0..NODES).all(|i| !self.newer(i).is_empty())
        });
        assert!(connected.await, "the runtime never connected to every node");
        for sample in 0..SAMPLES {
            let target = progress.cycles.load(Ordering::SeqCst) + tasks;
            while progress.cycles.load(Ordering::SeqCst) < target {
                progress.cycled.notified().await;
            }
            self.assert_one_connection_each(&format!("at sample {sample}, while the calls run"));
        }
        progress.stop.store(true, Ordering::SeqCst);
    }
}

async fn one_connection_per_node(tasks: usize, spawned: bool) {
    let mut watch = Watch::start();
    let runtime = fresh_nodes(&watch.cluster)
        .node_timeout(Duration::from_secs(5)) // a loaded machine slows the calls, not the count
        .build()
        .expect("valid configuration");
    let progress = Arc::new(Progress::default());
    let workers = (0..tasks).map(|n| calls(runtime.clone(), n, progress.clone()));
    let sampling = watch.sample_while_running(&progress, tasks);
    if spawned {
        let handles: Vec<_> = workers.map(tokio::spawn).collect();
        sampling.await;
        for handle in handles {
            handle.await.expect("the calls panicked");
        }
    } else {
        tokio::join!(sampling, join_all(workers));
    }
    watch.assert_one_connection_each("after the calls");
    let cycles = progress.cycles.load(Ordering::SeqCst);
    assert!(cycles >= SAMPLES * tasks, "only {cycles} lock cycles ran");
}

/// The `id=` field of a `CLIENT LIST` line.
fn id(line: &str) -> u64 {
    let id = line
        .split(' ')
        .find_map(|field| field.strip_prefix("id=")?.parse().ok());
    id.expect("CLIENT LIST lines have ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_node_for_64_spawned_tasks() {
    one_connection_per_node(64, true).await;
}

#[tokio::test]
async fn one_connection_per_node_for_16_futures_on_one_thread() {
    one_connection_per_node(16, false).await;
}
