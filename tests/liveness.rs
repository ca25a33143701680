//! Liveness under faults, measured: a frozen minority costs the lock nothing (the attempt returns
//! as soon as a quorum answered), a frozen or killed majority fails within about one node
//! timeout, and when the nodes come back the same runtime locks again.
//!
//! The bounds are generous, for loaded CI machines; run with `--nocapture` to see the figures.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::Runtime;
use cluster_singleton::Error;
use common::{Nodes, NODE_TIMEOUT};

const SAMPLES: usize = 40;
const TTL: Duration = Duration::from_secs(10);

/// The median time to take (and then release) a free lock.
async fn median_acquire(nodes: &Nodes, key: &str) -> Duration {
    let mut took = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let lease = nodes.runtime.lock(key, TTL).await.unwrap().expect("free");
        took.push(started.elapsed());
        lease.release().await.unwrap();
    }
    took.sort();
    took[SAMPLES / 2]
}

#[tokio::test]
async fn one_frozen_node_of_five_costs_the_lock_nothing() {
    let mut nodes = Nodes::start(5);
    let healthy = median_acquire(&nodes, "healthy").await;

    nodes.cluster.freeze(4).unwrap();
    let frozen = median_acquire(&nodes, "one-frozen").await;

    println!("acquire p50: healthy {healthy:?}, one of five frozen {frozen:?} (node timeout {NODE_TIMEOUT:?})");
    assert!(
        frozen < NODE_TIMEOUT / 4,
        "with one node frozen the lock waited for it: p50 {frozen:?} (healthy {healthy:?})"
    );
}

/// The slowest of a few attempts, each of which must fail for want of a quorum.
async fn slowest_no_quorum(runtime: &Runtime) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let err = runtime.lock("job", TTL).await.unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert!(matches!(err, Error::NoQuorum(_)), "{err}");
    }
    slowest
}

/// Polls until `runtime` takes the lock again, without being rebuilt; fails after five seconds.
async fn locks_again(runtime: &Runtime) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(lease)) = runtime.lock("job", TTL).await {
            lease.release().await.unwrap();
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the same runtime never locked again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One lock and release while every node is healthy, so that the faults meet a runtime that
/// has connected already.
async fn connect_every_node(runtime: &Runtime) {
    runtime
        .lock("warm", TTL)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

async fn majority_fails_fast_then_recovers(freeze: bool) {
    let mut nodes = Nodes::start(5);
    connect_every_node(&nodes.runtime).await;
    for i in 0..3 {
        if freeze {
            nodes.cluster.freeze(i).unwrap();
        } else {
            nodes.cluster.kill(i).unwrap();
        }
    }

    let slowest = slowest_no_quorum(&nodes.runtime).await;
    println!(
        "majority {}: slowest no-quorum error after {slowest:?}",
        if freeze { "frozen" } else { "killed" }
    );
    assert!(slowest < NODE_TIMEOUT * 3, "{slowest:?}");

    for i in 0..3 {
        if freeze {
            nodes.cluster.resume(i).unwrap();
        } else {
            nodes.cluster.start_node(i).unwrap();
        }
    }
    let back = Instant::now();
    locks_again(&nodes.runtime).await;
    println!(
        "locking again {:?} after the majority came back",
        back.elapsed()
    );
}

#[tokio::test]
async fn a_frozen_majority_fails_within_a_node_timeout_and_recovers() {
    majority_fails_fast_then_recovers(true).await;
}

#[tokio::test]
async fn a_killed_majority_fails_fast_and_recovers() {
    majority_fails_fast_then_recovers(false).await;
}

#[tokio::test]
async fn a_partitioned_majority_fails_within_a_node_timeout_and_recovers_when_healed() {
    let cluster = cluster_singleton_testkit::Cluster::builder()
        .nodes(5)
        .proxied(true)
        .start()
        .unwrap();
    let runtime = common::runtime_for(&cluster);
    connect_every_node(&runtime).await;
    for i in 0..3 {
        cluster.proxy(i).partition();
    }

    let slowest = slowest_no_quorum(&runtime).await;
    println!("majority partitioned: slowest no-quorum error after {slowest:?}");
    assert!(slowest < NODE_TIMEOUT * 3, "{slowest:?}");

    for i in 0..3 {
        cluster.proxy(i).heal();
    }
    let healed = Instant::now();
    locks_again(&runtime).await;
    println!(
        "locking again {:?} after the partition healed",
        healed.elapsed()
    );
}
