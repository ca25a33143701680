//! Redlock's quorums exclude each other because any two majorities of the same N nodes share a
//! node, which refuses the second `SET NX`. So every machine must lock on the same nodes: the
//! order of its list does not matter, but a machine given another list (a node added, removed or
//! replaced by a rolling deploy) has quorums that need not meet the others' (README, "Safety" 11).

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton_testkit::Cluster;
use common::{lose_copy_on_node_2, NODE_TIMEOUT};

const KEY: &str = "node-list-job";
const TTL: Duration = Duration::from_secs(10);

/// A machine locking on `urls`, fresh nodes that hold no lock a restart could have made them
/// forget.
fn machine(urls: &[String]) -> Runtime {
    Config::new(urls)
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .expect("valid configuration")
}

/// The first machine holds the lock on a bare quorum, nodes 0 and 1; the second lists the same
/// three nodes the other way round, and finds the lock taken on nodes 1 and 0.
#[tokio::test]
async fn machines_that_list_the_same_nodes_in_another_order_exclude_each_other() {
    let cluster = Cluster::start(3).unwrap();
    let urls = cluster.urls();
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let (first, second) = (machine(&urls), machine(&reversed));

    let held = first
        .lock(KEY, TTL)
        .await
        .unwrap()
        .expect("the key is free");
    lose_copy_on_node_2(&cluster, &held).await;
    let intruder = second.lock(KEY, TTL).await.unwrap();

    assert!(
        intruder.is_none(),
        "a second holder on the same nodes listed in another order"
    );
    assert!(held.validity() > Duration::ZERO, "the first lease ran out");
}

/// What happens when the assumption fails: a fleet moving from three nodes to five, with one
/// machine on each list. The old machine holds the lock on nodes 0 and 1, a majority of its
/// three; nodes 2, 3 and 4 are a majority of the new machine's five, and grant it too.
#[tokio::test]
async fn machines_that_list_different_nodes_can_both_hold() {
    let cluster = Cluster::start(5).unwrap();
    let urls = cluster.urls();
    let (old, new) = (machine(&urls[..3]), machine(&urls));

    let held = old.lock(KEY, TTL).await.unwrap().expect("the key is free");
    lose_copy_on_node_2(&cluster, &held).await;
    let intruder = new
        .lock(KEY, TTL)
        .await
        .unwrap()
        .expect("nodes 2, 3 and 4 are a majority of five, and none of them holds the lock");

    assert!(
        held.validity() > Duration::ZERO && intruder.validity() > Duration::ZERO,
        "both leases are valid at once"
    );
    assert_ne!(held.token(), intruder.token());
}
