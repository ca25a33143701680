//! Locking goes on while a majority of nodes is up, and fails fast, never running the body,
//! when it is not.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_singleton::{singleton, Error, FailureKind, Lease, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, Nodes, NODE_TIMEOUT, PROMPTLY};

const KEY: &str = "singleton:lock:fault-job";

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
        // answered yet, and is named as such; every other failure named is a node that is down.
        assert!(no_quorum.answered <= node_count - down.len(), "{no_quorum}");
        let failed: Vec<&str> = no_quorum
            .failures
            .iter()
            .filter(|failure| failure.kind != FailureKind::Unanswered)
            .map(|failure| failure.node.as_str())
            .collect();
        let down_urls: Vec<String> = down.iter().map(|&i| nodes.cluster.url(i)).collect();
        assert_eq!(
            no_quorum.answered + no_quorum.failures.len(),
            node_count,
            "every node is named or answered: {no_quorum}"
        );
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

/// A lease taken on three nodes while the third one's first connection is still opening (a
/// frozen node accepts the connection and answers nothing), with that node still frozen: the
/// lock waits a node timeout for that connection, then goes on without it. The runtime gives a
/// node's answer seconds rather than the tests' usual fraction of one, and the connection far
/// longer, so that nothing times out on a loaded machine before the test resumes the node.
async fn lease_while_node_2_connects() -> (Nodes, Lease, String) {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let runtime = fresh_nodes(&cluster)
        .node_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(30))
        .build()
        .expect("valid configuration");
    let mut nodes = Nodes { cluster, runtime };
    nodes.cluster.freeze(2).unwrap();
    let lease = nodes
        .runtime
        .lock("opening", Duration::from_secs(10))
        .await
        .expect("a majority is up")
        .expect("the key is free");
    let key = lease.key().to_owned();
    (nodes, lease, key)
}

/// A node whose first connection is still opening when the others have granted gets no `SET`:
/// a vote never waits for a connection, since a `SET` queued only once its connection opened
/// could land after the release. The lock stands on the other two; once the connection is open,
/// an extension puts the token there too, and the release leaves nothing behind.
#[tokio::test]
async fn a_node_still_connecting_gets_no_set_and_an_extension_repairs_it() {
    let (mut nodes, mut lease, key) = lease_while_node_2_connects().await;
    assert_eq!(
        nodes.values(&key, &[2]),
        vec![Some(lease.token().to_owned()); 2]
    );

    nodes.cluster.resume(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes.get(2, &key).as_deref() != Some(lease.token()) {
        assert!(
            Instant::now() < deadline,
            "an extension put the token on node 2 once its connection opened"
        );
        lease.extend().await.expect("extended on a quorum");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lease.release().await.expect("released");
    assert!(eventually(PROMPTLY, || nodes.absent(&key, &[])).await);
}

/// The same, released before the connection opens, with that node needed for the release's
/// quorum: a release may wait for its connection (what it deletes is already there), so it
/// reaches node 2 once it answers; node 2 never saw the `SET`, so nothing is left behind.
#[tokio::test]
async fn a_release_waits_for_a_connection_that_no_set_waited_for() {
    let (mut nodes, lease, key) = lease_while_node_2_connects().await;
    nodes.cluster.kill(1).unwrap();
    let release = tokio::spawn(lease.release());
    // The release has reached node 0; node 1 is dead, so it needs node 2 for its quorum.
    assert!(eventually(PROMPTLY, || nodes.scripts_run(0) >= 1).await);
    assert!(!release.is_finished());

    nodes.cluster.resume(2).unwrap();
    release.await.unwrap().expect("released on nodes 0 and 2");
    assert_eq!(nodes.calls(2, "set"), 0, "no SET reached node 2");
    assert_eq!(nodes.get(2, &key), None, "nothing is left on node 2");
}
