//! Many calls at once, from several "machines" (runtimes with their own connections): exactly one
//! runs the body.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_singleton::{singleton, Outcome, Skip};
use common::{runtime_for, Nodes};

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
