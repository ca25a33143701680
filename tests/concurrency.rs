//! Many calls at once, from several "machines" (runtimes with their own connections): exactly one
//! runs the body. And bursts far beyond the calls a runtime lets vote at once: on one key, never
//! two bodies inside at once; with short locks, every call runs or fails closed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_singleton::runtime::{Config, Options};
use cluster_singleton::{singleton, Error, FailureKind, Outcome, Skip};
use common::{eventually, runtime_for, until_nodes_vote, Nodes, PROMPTLY};

const CALLS: usize = 50;
const MACHINES: usize = 5;

#[singleton(key = "slow-job", ttl = "30s")]
async fn slow_job(inside: Arc<AtomicUsize>, most_inside: Arc<AtomicUsize>) {
    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
    most_inside.fetch_max(now, Ordering::SeqCst);
    // Long enough that every other call attempts while this one holds the lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    inside.fetch_sub(1, Ordering::SeqCst);
}

async fn exactly_one_of_fifty_runs(node_count: usize) {
    let nodes = Nodes::start(node_count);
    let machines: Vec<_> = (0..MACHINES).map(|_| runtime_for(&nodes.cluster)).collect();
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));

    let calls: Vec<_> = (0..CALLS)
        .map(|call| {
            let machine = machines[call % MACHINES].clone();
            let job = slow_job(inside.clone(), most_inside.clone());
            tokio::spawn(async move { machine.scope(job).await })
        })
        .collect();
    let mut ran = 0;
    let mut skipped = 0;
    for call in calls {
        match call.await.unwrap().expect("quorum is up") {
            Outcome::Ran(()) => ran += 1,
            // Calls that fire at the same instant can split the vote on every retry, until one
            // of them wins; the others then find it busy.
            Outcome::Skipped(Skip::Busy | Skip::SplitVote { .. }) => skipped += 1,
            Outcome::Skipped(other) => panic!("unexpected skip {other:?}"),
        }
    }

    assert_eq!((ran, skipped), (1, CALLS - 1));
    assert_eq!(most_inside.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_fifty_runs_on_one_node() {
    exactly_one_of_fifty_runs(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_fifty_runs_on_three_nodes() {
    exactly_one_of_fifty_runs(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_fifty_runs_on_five_nodes() {
    exactly_one_of_fifty_runs(5).await;
}

/// 3,000 calls on one key at once, from one runtime (which lets 64 vote at a time, the rest
/// waiting for their turn), with fencing and bodies that yield a few times: at most one body is
/// inside at any moment, no call fails on healthy nodes, and the key is free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_key_never_has_two_bodies_inside() {
    let nodes = Nodes::start(3);
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..3_000)
        .map(|_| {
            let runtime = nodes.runtime.clone();
            let (inside, most_inside) = (inside.clone(), most_inside.clone());
            tokio::spawn(async move {
                let body = async move {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    for _ in 0..5 {
                        tokio::task::yield_now().await;
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                };
                let options = Options::new(Duration::from_secs(5)).fencing(true);
                runtime.run_with("one-key", options, body, |_| true).await
            })
        })
        .collect();
    let (mut ran, mut skipped) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(Outcome::Ran(())) => ran += 1,
            Ok(Outcome::Skipped(_)) => skipped += 1,
            Err(err) => panic!("a call failed on healthy nodes: {err}"),
        }
    }
    assert!(ran >= 1, "no call ran ({skipped} skipped)");
    assert_eq!(most_inside.load(Ordering::SeqCst), 1);
    assert!(eventually(PROMPTLY, || nodes.absent("singleton:lock:one-key", &[])).await);
}

/// 3,000 calls at once on keys of their own, with 300 ms locks, whose allowance for clocks is
/// 5 ms: while the runtime first polls the burst's tasks, a reply can wait for a thread longer
/// than that, and the clock check then refuses the vote as answered too slowly (README,
/// "Bursts"). However many that refuses on a given machine, each call runs or fails closed with
/// `NoQuorum`, every node it counts against either unverified or not yet answered, and no call
/// leaves its key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_short_locks_runs_or_fails_closed() {
    const TTL: Duration = Duration::from_millis(300);
    let nodes = Nodes::start(3);
    // As a program has it: the restart grace on (the longest ttl), so that every vote reads the
    // node's epoch and clock back, and the clock check on.
    let runtime = Config::new(nodes.cluster.urls())
        .max_ttl(TTL)
        .build()
        .expect("valid configuration");
    until_nodes_vote(&runtime, TTL).await;
    let calls: Vec<_> = (0..3_000)
        .map(|i| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let options = Options::new(TTL).fencing(true);
                let key = format!("short:{i}");
                runtime.run_with(&key, options, async {}, |_| true).await
            })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(Outcome::Ran(())) => {}
            Err(Error::NoQuorum(no_quorum)) => {
                let kinds = no_quorum.failures.iter().map(|failure| failure.kind);
                assert!(
                    kinds.clone().all(|kind| matches!(
                        kind,
                        FailureKind::Unverified | FailureKind::Unanswered
                    )),
                    "a call failed on healthy nodes for another reason: {no_quorum:?}"
                );
                if refused == 0 {
                    eprintln!("the first refused: {no_quorum:?}");
                }
                refused += 1;
            }
            other => panic!("a call neither ran nor failed closed: {other:?}"),
        }
    }
    eprintln!("{refused} of 3,000 calls refused as answered too slowly");
    let left = || (0..3_000).all(|i| nodes.absent(&format!("singleton:lock:short:{i}"), &[]));
    assert!(eventually(PROMPTLY, left).await, "a call left its key");
}
