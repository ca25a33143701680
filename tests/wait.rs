//! `wait`: a busy lock is tried again, with random pauses, until the deadline.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::Options;
use cluster_singleton::{Error, Outcome, Skip};
use common::Nodes;

const TTL: Duration = Duration::from_secs(10);
const HELD_FOR: Duration = Duration::from_millis(300);

/// A holder releases after `HELD_FOR`; a waiter with a long `wait` runs then, not before.
async fn a_waiter_runs_once_the_holder_is_done(nodes: &Nodes) {
    let holder = nodes.runtime.lock("queue", TTL).await.unwrap().unwrap();
    let started = Instant::now();
    let release_later = async {
        tokio::time::sleep(HELD_FOR).await;
        holder.release().await.unwrap();
    };

    let waiting = nodes.runtime.run_with(
        "queue",
        Options::new(TTL).wait(Duration::from_secs(5)),
        async { "ran" },
        |_| true,
    );
    let ((), outcome) = tokio::join!(release_later, waiting);

    assert_eq!(outcome.unwrap(), Outcome::Ran("ran"));
    let took = started.elapsed();
    assert!(
        took >= HELD_FOR && took < HELD_FOR + Duration::from_secs(2),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_waiter_runs_once_the_holder_is_done_on_three_nodes() {
    a_waiter_runs_once_the_holder_is_done(&Nodes::start(3)).await;
}

#[tokio::test]
async fn a_waiter_skips_when_its_wait_runs_out() {
    let nodes = Nodes::start(3);
    let _holder = nodes.runtime.lock("queue", TTL).await.unwrap().unwrap();
    let wait = Duration::from_millis(200);
    let started = Instant::now();

    let outcome = nodes
        .runtime
        .run_with("queue", Options::new(TTL).wait(wait), async {}, |_| true)
        .await;

    assert_eq!(outcome.unwrap(), Outcome::Skipped(Skip::Busy));
    let took = started.elapsed();
    assert!(took < wait + Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn without_wait_a_busy_lock_skips_at_once() {
    let nodes = Nodes::start(3);
    let _holder = nodes.runtime.lock("queue", TTL).await.unwrap().unwrap();
    let started = Instant::now();
    let outcome = nodes
        .runtime
        .run_with("queue", Options::new(TTL), async {}, |_| true)
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Skipped(Skip::Busy));
    assert!(started.elapsed() < HELD_FOR, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_waiter_gets_the_lock_when_a_majority_comes_back() {
    let mut nodes = Nodes::start(3);
    nodes.cluster.kill(0).unwrap();
    nodes.cluster.kill(1).unwrap();
    let bring_back = async {
        tokio::time::sleep(HELD_FOR).await;
        nodes.cluster.start_node(1).unwrap();
    };
    let runtime = nodes.runtime.clone();
    let waiting = runtime.run_with(
        "queue",
        Options::new(TTL).wait(Duration::from_secs(5)),
        async { 1 },
        |_| true,
    );
    // The test kit's start blocks this task while the node boots; the waiter polls meanwhile.
    let (outcome, ()) = tokio::join!(waiting, bring_back);
    assert_eq!(outcome.unwrap(), Outcome::Ran(1));
}

#[tokio::test]
async fn a_waiter_reports_the_outage_when_its_wait_runs_out() {
    let mut nodes = Nodes::start(1);
    nodes.cluster.kill(0).unwrap();
    let outcome = nodes
        .runtime
        .run_with(
            "queue",
            Options::new(TTL).wait(Duration::from_millis(200)),
            async {},
            |_| true,
        )
        .await;
    assert!(matches!(outcome, Err(Error::NoQuorum(_))), "{outcome:?}");
}

#[tokio::test]
async fn a_waiter_runs_once_the_holder_is_done_with_a_minority_down() {
    let mut nodes = Nodes::start(5);
    nodes.cluster.kill(0).unwrap();
    nodes.cluster.freeze(1).unwrap();
    a_waiter_runs_once_the_holder_is_done(&nodes).await;
}
