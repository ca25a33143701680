//! A node restarted without persistence has forgotten the locks it held. If its fresh vote
//! counted at once, a second caller could win a majority while the first still holds the lock.
//! The runtime counts a node's votes only once it has been up for the restart grace, by default
//! the longest ttl of the fleet (`Config::max_ttl`), whatever the ttl of the call.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::Error;
use cluster_singleton_testkit::Cluster;
use common::{fresh_nodes, lose_copy_on_node_2, until_nodes_vote, NODE_TIMEOUT};

const KEY: &str = "restart-job";
const TTL: Duration = Duration::from_secs(3);
/// `uptime_in_seconds` is whole seconds, so a node's age is known to within one second.
const UPTIME_RESOLUTION: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// A restarted server starts a little before the test kit reports it ready.
const RESTART_SLACK: Duration = Duration::from_millis(500);

/// A machine of the fleet: a runtime on `cluster`'s nodes whose longest ttl is `max_ttl`, and so
/// whose restart grace is too.
fn machine(cluster: &Cluster, max_ttl: Duration) -> Runtime {
    Config::new(cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(max_ttl)
        .build()
        .unwrap()
}

/// How long after a fault the tests try again: past the runtime's once-a-second check of every
/// node, which reads the node again and must not make it older.
const PAST_A_CHECK: Duration = Duration::from_millis(2500);

/// Asserts that none of `callers` can take `KEY` while `held` is still valid: the node that lost
/// its data must not count, neither at once nor after the runtime's next check of it.
async fn no_second_holder(held: &cluster_singleton::Lease, callers: &[&Runtime], ttl: Duration) {
    for (i, caller) in callers.iter().enumerate() {
        let intruder = caller.lock(KEY, ttl).await;
        assert!(
            held.validity() > Duration::ZERO,
            "the first lease ran out before caller {i} tried"
        );
        assert!(
            !matches!(intruder, Ok(Some(_))),
            "a second holder (caller {i}): the node that lost its data counted"
        );
    }
}

/// Leaves the first caller's lock on nodes 0 and 1 only, then makes both of the nodes that
/// could complete a second majority (0 and 2) forget everything: node 2 was down while the lock
/// was taken and comes back empty, node 0 restarts without persistence.
async fn lock_then_lose_it_on_a_majority(
    cluster: &mut Cluster,
    first: &Runtime,
) -> cluster_singleton::Lease {
    cluster.kill(2).unwrap();
    let lease = first
        .lock(KEY, TTL)
        .await
        .unwrap()
        .expect("nodes 0 and 1 grant it");
    cluster.start_node(2).unwrap();
    cluster.restart(0).unwrap();
    lease
}

#[tokio::test]
async fn without_the_grace_a_restarted_node_lets_a_second_holder_in() {
    let mut cluster = Cluster::start(3).unwrap();
    let no_grace = || {
        fresh_nodes(&cluster)
            .node_timeout(NODE_TIMEOUT)
            .build()
            .unwrap()
    };
    let (first, second) = (no_grace(), no_grace());

    let held = lock_then_lose_it_on_a_majority(&mut cluster, &first).await;
    let intruder = second.lock(KEY, TTL).await.unwrap();

    assert!(
        held.validity() > Duration::ZERO,
        "the first lock is still valid"
    );
    assert!(
        intruder.is_some(),
        "this is the double holding that the restart grace prevents"
    );
}

#[tokio::test]
async fn with_the_default_grace_a_restarted_node_cannot_let_a_second_holder_in() {
    let mut cluster = Cluster::start(3).unwrap();
    // The grace defaults to the longest ttl of the fleet.
    let (first, second) = (machine(&cluster, TTL), machine(&cluster, TTL));

    // Fresh nodes count only once they have been up for the grace.
    let young = first.lock(KEY, TTL).await.unwrap_err();
    assert!(
        young
            .to_string()
            .contains("its vote counts once it has been up for 3s"),
        "{young}"
    );
    until_nodes_vote(&first, TTL).await;

    let held = lock_then_lose_it_on_a_majority(&mut cluster, &first).await;
    let restarted_at = Instant::now();
    let held_until = restarted_at + held.validity();

    // The second caller is refused until the restarted nodes have been up for the grace, which
    // is after the first lock ran out.
    let mut refusals = 0;
    let deadline = restarted_at + TTL + UPTIME_RESOLUTION * 3;
    loop {
        match second.lock(KEY, TTL).await {
            Ok(Some(lease)) => {
                let won_at = Instant::now();
                assert!(
                    won_at >= held_until,
                    "a second holder {:?} before the first lock ran out",
                    held_until - won_at
                );
                assert!(
                    won_at + RESTART_SLACK >= restarted_at + TTL,
                    "a restarted node counted {:?} after its restart, before the grace",
                    won_at - restarted_at
                );
                lease.release().await.unwrap();
                break;
            }
            Ok(None) => {}
            Err(Error::NoQuorum(no_quorum)) => {
                // The grace, or (the first time) a connection the restart broke.
                let reason = no_quorum.to_string();
                assert!(
                    reason.contains("its vote counts once it has been up for 3s")
                        || reason.contains("broken pipe"),
                    "{reason}"
                );
            }
            Err(other) => panic!("unexpected error {other}"),
        }
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "the restarted nodes never counted again"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(refusals > 0);
}

#[tokio::test]
async fn a_grace_longer_than_the_longest_ttl_counts() {
    let cluster = Cluster::start(1).unwrap();
    let runtime = Config::new(cluster.urls())
        .restart_grace(Duration::from_secs(3600))
        .build()
        .unwrap();
    let err = runtime
        .lock(KEY, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("once it has been up for 3600s"),
        "{err}"
    );
}

/// The longest ttl of the fleet in the test below; the restart grace defaults to it.
const FLEET_MAX_TTL: Duration = Duration::from_secs(5);

/// Two callers of one key with different ttls (a rolling deploy that changed the ttl, two
/// attributes on one key): node 2 is down while the first locks with the long ttl on {0, 1};
/// node 0 restarts without persistence and node 2 comes back empty; two seconds later the second
/// asks with a ttl of one second. A grace of the caller's own ttl would count nodes 0 and 2, and
/// hand it {0, 2} while the first lease is valid; a grace of the fleet's longest ttl does not.
#[tokio::test]
async fn callers_with_different_ttls_are_never_both_holders() {
    let mut cluster = Cluster::start(3).unwrap();
    let fleet = || machine(&cluster, FLEET_MAX_TTL);
    let (long, short) = (fleet(), fleet());
    until_nodes_vote(&long, FLEET_MAX_TTL).await;

    cluster.kill(2).unwrap();
    let held = long
        .lock(KEY, FLEET_MAX_TTL)
        .await
        .unwrap()
        .expect("nodes 0 and 1 grant it");
    cluster.restart(0).unwrap();
    cluster.start_node(2).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let intruder = short.lock(KEY, Duration::from_secs(1)).await;
    let still_valid = held.validity();
    assert!(
        still_valid > Duration::ZERO,
        "the first lease is still valid"
    );
    match intruder {
        Ok(Some(_)) => panic!("a second holder while the first lease has {still_valid:?} left"),
        Ok(None) => panic!("node 1 alone cannot make the attempt busy"),
        Err(Error::NoQuorum(no_quorum)) => {
            let reason = no_quorum.to_string();
            assert!(reason.contains("up for 5s"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// A Redis-aware proxy (or a managed endpoint) keeps the client's connection open across a
/// restart of the node behind it, so no reconnect reads the new server's uptime, and the check of
/// its `run_id` comes up to a second later. Every vote reads the node's epoch back in the same
/// round trip, though: the restarted node has lost it, and its vote does not count, from the
/// first call after the restart on, and for a grace from when the new epoch was written.
#[tokio::test]
async fn a_restart_behind_a_redis_aware_proxy_is_noticed() {
    const GRACE: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    cluster.proxy(0).set_redis_aware(true);
    let fleet = || machine(&cluster, GRACE);
    let (first, second) = (fleet(), fleet());
    for runtime in [&first, &second] {
        until_nodes_vote(runtime, GRACE).await;
    }
    assert_eq!(
        cluster.proxy(0).connections(),
        2,
        "one connection per runtime"
    );

    let held = first.lock(KEY, GRACE).await.unwrap().expect("free");
    // Node 2 lost its copy (a SET that never arrived), and node 0 restarts without persistence
    // behind the proxy: a second majority, {0, 2}, would be free but for the restart.
    lose_copy_on_node_2(&cluster, &held).await;
    cluster.restart(0).unwrap();
    let restarted = Instant::now();

    no_second_holder(&held, &[&second], GRACE).await;
    assert_eq!(
        cluster.proxy(0).connections(),
        2,
        "the runtimes' connections to node 0 survived the restart"
    );
    // Past the check, which reads the new server again; and a process that starts only now.
    tokio::time::sleep(PAST_A_CHECK).await;
    let newcomer = machine(&cluster, GRACE);
    no_second_holder(&held, &[&second, &newcomer], GRACE).await;
    assert!(restarted.elapsed() < GRACE);
}

/// `max_ttl` is a setting of the fleet, but machines are deployed one at a time: here the first
/// machine already has a longer one than the second. Each announces its own on the nodes and
/// waits as long as the longest announced, so the second still counts no vote from a restarted
/// node before the first machine's lock could have run out.
#[tokio::test]
async fn a_machine_with_a_shorter_max_ttl_waits_as_long_as_the_fleets_longest() {
    const LONG: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_secs(1);
    let mut cluster = Cluster::start(3).unwrap();
    let (long, short) = (machine(&cluster, LONG), machine(&cluster, SHORT));
    until_nodes_vote(&long, LONG).await;
    // The short machine has connected, and read the long one's announcement.
    let _ = short.lock("warm-up-short", SHORT).await;

    let held = long.lock(KEY, LONG).await.unwrap().expect("free");
    lose_copy_on_node_2(&cluster, &held).await;
    cluster.restart(0).unwrap();
    // Past the short machine's own grace (and Redis's rounding of uptimes).
    tokio::time::sleep(SHORT + UPTIME_RESOLUTION * 2).await;

    let intruder = short.lock(KEY, SHORT).await;
    assert!(
        held.validity() > Duration::ZERO,
        "the first lease is still valid"
    );
    assert!(
        !matches!(intruder, Ok(Some(_))),
        "a second holder: the short machine counted the restarted node after its own grace"
    );
}

/// An operator flushes a node (`FLUSHALL`): no restart, no new `run_id`, the same uptime, and
/// every lock on it forgotten. The node's epoch went with them, and the new one records when it
/// was written, so the node's votes stop counting from the first call after the flush, for a
/// grace, in every process: those that knew the old epoch, and those that start later.
#[tokio::test]
async fn a_flushed_node_is_young_again() {
    const GRACE: Duration = Duration::from_secs(5);
    let cluster = Cluster::start(3).unwrap();
    let fleet = || machine(&cluster, GRACE);
    let (first, second) = (fleet(), fleet());
    for runtime in [&first, &second] {
        until_nodes_vote(runtime, GRACE).await;
    }

    let held = first.lock(KEY, GRACE).await.unwrap().expect("free");
    lose_copy_on_node_2(&cluster, &held).await;
    let mut node_0 = cluster.connection(0).unwrap();
    let () = redis::cmd("FLUSHALL").query(&mut node_0).unwrap();
    let flushed = Instant::now();

    no_second_holder(&held, &[&second], GRACE).await;
    // Past the check, which reads the same server and its new epoch; and a process that starts
    // only now, which never saw the old epoch.
    tokio::time::sleep(PAST_A_CHECK).await;
    let newcomer = machine(&cluster, GRACE);
    no_second_holder(&held, &[&second, &newcomer], GRACE).await;
    assert!(flushed.elapsed() < GRACE);
}
