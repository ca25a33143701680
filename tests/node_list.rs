//! Redlock's quorums exclude each other because any two majorities of the same N nodes share a
//! node, which refuses the second `SET NX`. So every machine must lock on the same nodes: the
//! order of its list does not matter, but a machine given another list (a node added, removed or
//! replaced by a rolling deploy) has quorums that need not meet the others' (README, "Safety"
//! 11). Every machine that locks announces how many nodes it locks on, and one that reads
//! different numbers on any of its nodes counts no vote; lists of the same length are not
//! compared.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::{Error, FailureKind};
use cluster_singleton_testkit::Cluster;
use common::{lose_copy_on, until_nodes_vote, NODE_TIMEOUT};

const KEY: &str = "node-list-job";
/// The fleet's longest ttl, and so the restart grace the fresh nodes serve first.
const MAX_TTL: Duration = Duration::from_secs(3);
/// The once-a-second check of each node reads the announcements again.
const PAST_A_CHECK: Duration = Duration::from_secs(3);

/// A machine locking on `urls`, with the restart grace on, as a user has it.
fn machine(urls: &[String]) -> Runtime {
    Config::new(urls)
        .max_ttl(MAX_TTL)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .expect("valid configuration")
}

/// The failures of a call that must not take the lock: it found no quorum, most of its nodes
/// refusing (`Error::Refused`, a configuration to fix) or not.
fn no_quorum(
    result: Result<Option<cluster_singleton::Lease>, Error>,
) -> cluster_singleton::NoQuorum {
    match result {
        Err(Error::NoQuorum(no_quorum) | Error::Refused(no_quorum)) => no_quorum,
        Ok(Some(lease)) => panic!("a second holder: {}", lease.token()),
        other => panic!("expected NoQuorum, got {other:?}"),
    }
}

/// The first machine holds the lock on a bare quorum, nodes 0 and 1; the second lists the same
/// three nodes the other way round, and finds the lock taken on nodes 1 and 0.
#[tokio::test]
async fn machines_that_list_the_same_nodes_in_another_order_exclude_each_other() {
    let cluster = Cluster::start(3).unwrap();
    let urls = cluster.urls();
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let (first, second) = (machine(&urls), machine(&reversed));
    until_nodes_vote(&first, MAX_TTL).await;
    until_nodes_vote(&second, MAX_TTL).await;

    let held = first.lock(KEY, MAX_TTL).await.unwrap().expect("free");
    lose_copy_on(&cluster, 2, &held).await;
    let intruder = second.lock(KEY, MAX_TTL).await.unwrap();

    assert!(
        intruder.is_none(),
        "a second holder on the same nodes listed in another order"
    );
    assert!(held.validity() > Duration::ZERO, "the first lease ran out");
}

/// A fleet moving from three nodes to five, with one machine on each list. The old machine holds
/// the lock on nodes 0 and 1, a majority of its three; nodes 2, 3 and 4 are a majority of the
/// new machine's five, and would grant it too. But nodes 0 to 2 have both announcements: the new
/// machine counts no node's vote, and the old one none from its next check of its nodes on.
#[tokio::test]
async fn machines_that_list_different_numbers_of_nodes_get_no_vote() {
    let cluster = Cluster::start(5).unwrap();
    let urls = cluster.urls();
    let old = machine(&urls[..3]);
    until_nodes_vote(&old, MAX_TTL).await;
    let held = old.lock(KEY, MAX_TTL).await.unwrap().expect("free");
    lose_copy_on(&cluster, 2, &held).await;

    let new = machine(&urls);
    let refused = no_quorum(new.lock(KEY, MAX_TTL).await);
    assert!(held.validity() > Duration::ZERO, "the first lease ran out");
    assert_eq!(refused.answered, 0, "{refused}");
    for node in &urls {
        let failure = refused
            .failures
            .iter()
            .find(|failure| failure.node == *node)
            .unwrap_or_else(|| panic!("{node} is not named: {refused}"));
        assert_eq!(failure.kind, FailureKind::Refused, "{refused}");
        let says = "different numbers of them (3 to 5, as announced on them; this one on 5)";
        assert!(failure.cause.contains(says), "{refused}");
    }

    // The old machine reads the new announcement at its next check of each node.
    let deadline = Instant::now() + PAST_A_CHECK;
    let refused = loop {
        match old.lock("another-job", MAX_TTL).await {
            Err(Error::NoQuorum(no_quorum) | Error::Refused(no_quorum)) => break no_quorum,
            Ok(Some(lease)) => lease.release().await.unwrap(),
            other => panic!("expected a lease or NoQuorum, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "the old machine still locks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.to_string().contains("this one on 3"), "{refused}");
}

/// The fix, as `docs/deployment.md` gives it: the old machines stop, the announcements of their
/// list are deleted on every node, and the new machine locks from its next check of the nodes on.
#[tokio::test]
async fn once_the_old_list_is_gone_and_its_announcements_deleted_the_new_one_locks() {
    let cluster = Cluster::start(5).unwrap();
    let urls = cluster.urls();
    let old = machine(&urls[..3]);
    until_nodes_vote(&old, MAX_TTL).await;
    let new = machine(&urls);
    no_quorum(new.lock(KEY, MAX_TTL).await);

    old.shutdown(MAX_TTL).await.unwrap();
    drop(old);
    // Deleted again at each try: a check of the old runtime's that was under way when it was
    // dropped may still announce its list once.
    let forget_the_lists = || {
        for node in 0..urls.len() {
            let mut connection = cluster.connection(node).unwrap();
            let _: () = redis::cmd("DEL")
                .arg("singleton:nodes-fewest")
                .arg("singleton:nodes-most")
                .query(&mut connection)
                .unwrap();
        }
    };
    let deadline = Instant::now() + PAST_A_CHECK + MAX_TTL;
    loop {
        forget_the_lists();
        if let Ok(Some(_)) = new.lock(KEY, MAX_TTL).await {
            break;
        }
        assert!(Instant::now() < deadline, "the new machine never locked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A machine with another list need not have announced it on every node: here the old machine
/// cannot reach its third node (node 2 of the cluster, which the new machine reaches), and holds
/// the lock on nodes 0 and 1. Nodes 2, 3 and 4 never heard of a list of three, and would make a
/// majority of the new machine's five; but nodes 0 and 1 did, so the new machine counts no vote.
#[tokio::test]
async fn a_list_seen_on_some_nodes_stops_the_votes_of_all() {
    let cluster = Cluster::start(5).unwrap();
    let urls = cluster.urls();
    let closed_port = "redis://127.0.0.1:1".to_owned();
    let old = machine(&[urls[0].clone(), urls[1].clone(), closed_port]);
    until_nodes_vote(&old, MAX_TTL).await;
    let held = old.lock(KEY, MAX_TTL).await.unwrap().expect("free");

    let new = machine(&urls);
    let refused = no_quorum(new.lock(KEY, MAX_TTL).await);
    assert!(held.validity() > Duration::ZERO, "the first lease ran out");
    assert_eq!(refused.answered, 0, "{refused}");
    assert!(
        refused
            .failures
            .iter()
            .all(|failure| failure.kind == FailureKind::Refused),
        "{refused}"
    );
}

/// A node counts only once it has been read in the script that announced this runtime's own
/// list: a reading that comes too late is no reading. (From a review: before this rule, the
/// second machine's first lock went on when its checks of the shared nodes timed out, and held a
/// majority of its own list beside the first machine's.) The first machine, on nodes 0 to 2 and
/// connected directly, holds the lock on nodes 0 and 1. The second, on all five through proxies,
/// takes its first lock while its links to nodes 0 to 2 hold their traffic: its checks of them
/// time out, and node 2's link heals just after, in time for a vote. Nodes 3 and 4 alone are no
/// majority of five.
#[tokio::test]
async fn a_node_whose_reading_stalled_at_the_first_lock_does_not_count() {
    // Long enough that a vote answered a stall later still passes the clock check.
    const LONG_TTL: Duration = Duration::from_secs(10);
    let cluster = Cluster::builder().nodes(5).proxied(true).start().unwrap();
    let direct: Vec<String> = (0..3).map(|i| cluster.direct_url(i)).collect();
    let fleet = |urls: &[String], timeout| {
        Config::new(urls)
            .max_ttl(LONG_TTL)
            .node_timeout(timeout)
            .build()
            .expect("valid configuration")
    };
    let old = fleet(&direct, NODE_TIMEOUT);
    let new = fleet(&cluster.urls(), Duration::from_millis(250));
    // Both connect (no lock, so no list announced), and the nodes serve out the restart grace.
    let deadline = Instant::now() + LONG_TTL * 2;
    while !new.health().await.iter().all(|node| node.votes) {
        assert!(Instant::now() < deadline, "the nodes never came of age");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for node in 0..3 {
        cluster.proxy(node).partition();
    }
    let held = old.lock(KEY, LONG_TTL).await.unwrap().expect("free");
    lose_copy_on(&cluster, 2, &held).await;
    let intruder = tokio::spawn({
        let new = new.clone();
        async move { new.lock(KEY, LONG_TTL).await }
    });
    // The first lock's checks give up after the node timeout (250 ms); the votes follow.
    tokio::time::sleep(Duration::from_millis(290)).await;
    cluster.proxy(2).heal();
    let refused = no_quorum(intruder.await.unwrap());
    for node in 0..2 {
        cluster.proxy(node).heal();
    }

    assert!(held.validity() > Duration::ZERO, "the first lease ran out");
    let node_2 = refused
        .failures
        .iter()
        .find(|failure| failure.node == cluster.urls()[2])
        .unwrap_or_else(|| panic!("node 2 is not named: {refused}"));
    assert!(
        node_2
            .cause
            .contains("has not read the node since it began to lock"),
        "{refused}"
    );
}

/// What happens where the check cannot see: a machine whose list replaces node 2 of three with
/// node 3. Both list three nodes, so their announcements agree. The old machine holds the lock on
/// nodes 0 and 2; nodes 1 and 3 are a majority of the new machine's list, and grant it too.
#[tokio::test]
async fn machines_that_list_as_many_nodes_but_other_ones_can_both_hold() {
    let cluster = Cluster::start(4).unwrap();
    let urls = cluster.urls();
    let old = machine(&urls[..3]);
    let replaced = [urls[0].clone(), urls[1].clone(), urls[3].clone()];
    let new = machine(&replaced);
    until_nodes_vote(&old, MAX_TTL).await;
    until_nodes_vote(&new, MAX_TTL).await;

    let held = old.lock(KEY, MAX_TTL).await.unwrap().expect("free");
    lose_copy_on(&cluster, 1, &held).await;
    let intruder = new
        .lock(KEY, MAX_TTL)
        .await
        .unwrap()
        .expect("nodes 1 and 3 are a majority of the new list, and neither holds the lock");

    assert!(
        held.validity() > Duration::ZERO && intruder.validity() > Duration::ZERO,
        "both leases are valid at once"
    );
    assert_ne!(held.token(), intruder.token());
}

/// The other thing the check cannot see (from a review): a longer list with a majority outside
/// the shorter one, on a machine cut off from the nodes the two share. A fleet moving from nodes
/// 0 to 2 to nodes 0, 1 and 3 to 5: the old machine, connected directly, holds the lock on all of
/// its nodes; the new one cannot reach nodes 0 and 1, so it reads only 3, 4 and 5, where no other
/// list was announced, and they are a majority of its five.
#[tokio::test]
async fn a_list_with_a_majority_outside_the_other_is_not_seen_from_behind_a_cut() {
    let cluster = Cluster::builder().nodes(6).proxied(true).start().unwrap();
    let old_urls: Vec<String> = (0..3).map(|i| cluster.direct_url(i)).collect();
    let all = cluster.urls();
    let new_urls: Vec<String> = [0, 1, 3, 4, 5].iter().map(|&i| all[i].clone()).collect();
    cluster.proxy(0).partition();
    cluster.proxy(1).partition();
    let (old, new) = (machine(&old_urls), machine(&new_urls));
    until_nodes_vote(&old, MAX_TTL).await;
    until_nodes_vote(&new, MAX_TTL).await;

    let held = old.lock(KEY, MAX_TTL).await.unwrap().expect("free");
    let intruder = new
        .lock(KEY, MAX_TTL)
        .await
        .unwrap()
        .expect("nodes 3, 4 and 5 are a majority of the new list, and know of no other");

    assert!(
        held.validity() > Duration::ZERO && intruder.validity() > Duration::ZERO,
        "both leases are valid at once"
    );
}

/// A runtime that only looks at some of the fleet's nodes (`health` on one of them, as the
/// command-line tool does) announces no list: a machine of the fleet that connects after it still
/// gets every vote. Its list counts from its first lock attempt on.
#[tokio::test]
async fn a_runtime_that_only_looks_at_some_of_the_nodes_does_not_count() {
    let cluster = Cluster::start(3).unwrap();
    let urls = cluster.urls();
    until_nodes_vote(&machine(&urls), MAX_TTL).await;
    let looking = machine(&urls[..1]);
    let health = looking.health().await;
    assert!(health[0].votes, "{health:?}");

    let late = machine(&urls);
    let deadline = Instant::now() + PAST_A_CHECK;
    loop {
        match late.lock(KEY, MAX_TTL).await {
            Ok(Some(_)) => break,
            Err(err) => assert!(
                !err.to_string().contains("different numbers"),
                "the looking runtime counted as a machine of the fleet: {err}"
            ),
            Ok(None) => panic!("nobody holds the key"),
        }
        assert!(Instant::now() < deadline, "the late machine never locked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
