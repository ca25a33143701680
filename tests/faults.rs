//! Locking goes on while a majority of nodes is up, and fails fast, never running the body,
//! when it is not.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_singleton::{singleton, Error, Outcome};
use common::{eventually, Nodes, NODE_TIMEOUT, PROMPTLY};

const KEY: &str = "singleton:fault-job";

/// "About one node timeout": the timeout itself plus room for a loaded 2-core CI machine.
const ABOUT_ONE_NODE_TIMEOUT: Duration = NODE_TIMEOUT.saturating_add(Duration::from_millis(800));

#[singleton(key = "fault-job", ttl = "10s")]
async fn fault_job(runs: &AtomicUsize) {
    runs.fetch_add(1, Ordering::SeqCst);
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Freeze,
}

fn inflict(nodes: &mut Nodes, fault: Fault, which: &[usize]) {
    for &i in which {
        match fault {
            Fault::Kill => nodes.cluster.kill(i).unwrap(),
            Fault::Freeze => nodes.cluster.freeze(i).unwrap(),
        }
    }
}

async fn a_minority_down_still_locks_and_releases(node_count: usize, fault: Fault) {
    let mut nodes = Nodes::start(node_count);
    let down: Vec<usize> = (0..node_count - nodes.runtime.quorum()).collect();
    inflict(&mut nodes, fault, &down);
    let runs = AtomicUsize::new(0);

    for round in 1..=3 {
        let outcome = nodes
            .scope(fault_job(&runs))
            .await
            .expect("a majority is up");
        assert_eq!(
            outcome,
            Outcome::Ran(()),
            "round {round} with {fault:?} on {down:?}"
        );
        assert!(
            eventually(PROMPTLY, || nodes.absent(KEY, &down)).await,
            "released on the nodes that are up: {:?}",
            nodes.values(KEY, &down)
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn one_of_three_killed_still_locks() {
    a_minority_down_still_locks_and_releases(3, Fault::Kill).await;
}

#[tokio::test]
async fn one_of_three_frozen_still_locks() {
    a_minority_down_still_locks_and_releases(3, Fault::Freeze).await;
}

#[tokio::test]
async fn two_of_five_killed_still_locks() {
    a_minority_down_still_locks_and_releases(5, Fault::Kill).await;
}

#[tokio::test]
async fn two_of_five_frozen_still_locks() {
    a_minority_down_still_locks_and_releases(5, Fault::Freeze).await;
}

async fn a_majority_down_fails_fast(node_count: usize, fault: Fault) {
    let mut nodes = Nodes::start(node_count);
    let down: Vec<usize> = (0..nodes.runtime.quorum()).collect();
    // Connect first, so that the fault hits live connections as it would in production.
    assert_eq!(
        nodes.scope(fault_job(&AtomicUsize::new(0))).await.unwrap(),
        Outcome::Ran(())
    );
    inflict(&mut nodes, fault, &down);
    let runs = AtomicUsize::new(0);

    for _ in 0..3 {
        let started = Instant::now();
        let result = nodes.scope(fault_job(&runs)).await;
        let took = started.elapsed();

        let Err(Error::NoQuorum(no_quorum)) = result else {
            panic!("expected a no-quorum error with {fault:?} on {down:?}, got {result:?}");
        };
        assert!(took < ABOUT_ONE_NODE_TIMEOUT, "took {took:?}");
        assert_eq!(no_quorum.needed, nodes.runtime.quorum());
        // The attempt stops as soon as a quorum is out of reach, so a live node may not have
        // answered yet; every failure named is a node that is down.
        assert!(no_quorum.answered <= node_count - down.len(), "{no_quorum}");
        let failed: Vec<&str> = no_quorum.failures.iter().map(|f| f.node.as_str()).collect();
        let down_urls: Vec<String> = down.iter().map(|&i| nodes.cluster.url(i)).collect();
        assert_eq!(failed.len(), down.len(), "{no_quorum}");
        assert!(
            failed
                .iter()
                .all(|node| down_urls.iter().any(|url| url == node)),
            "{no_quorum}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "never run without a quorum");
    assert!(
        eventually(PROMPTLY, || nodes.absent(KEY, &down)).await,
        "a failed attempt releases what it took: {:?}",
        nodes.values(KEY, &down)
    );
}

#[tokio::test]
async fn two_of_three_killed_fail_fast() {
    a_majority_down_fails_fast(3, Fault::Kill).await;
}

#[tokio::test]
async fn two_of_three_frozen_fail_within_a_node_timeout() {
    a_majority_down_fails_fast(3, Fault::Freeze).await;
}

#[tokio::test]
async fn three_of_five_frozen_fail_within_a_node_timeout() {
    a_majority_down_fails_fast(5, Fault::Freeze).await;
}

#[tokio::test]
async fn the_only_node_killed_fails_fast() {
    a_majority_down_fails_fast(1, Fault::Kill).await;
}

#[tokio::test]
async fn a_node_down_at_start_up_is_retried_later() {
    let mut nodes = Nodes::start(3);
    nodes.cluster.kill(0).unwrap();
    nodes.cluster.kill(1).unwrap();
    let runs = AtomicUsize::new(0);
    assert!(matches!(
        nodes.scope(fault_job(&runs)).await,
        Err(Error::NoQuorum(_))
    ));

    nodes.cluster.start_node(1).unwrap();

    // The node is back: a later call reconnects on its own, without a new runtime.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = nodes.scope(fault_job(&runs)).await;
        if matches!(outcome, Ok(Outcome::Ran(()))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still failing after the node came back: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
