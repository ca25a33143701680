//! Renewal rounds at their edges: leases of one batch with different `max_hold`s, each waited
//! on from the start, and a call that ends while its lease's round comes back undecided.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use cluster_singleton::runtime::{OnLost, Options};
use cluster_singleton::{Error, LostReason};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, watch_the_deadline, NODE_TIMEOUT};

/// How late past the end of the validity the lost signal may fire: a timer's wake-up on a loaded
/// 2-core machine.
const SIGNAL_SLACK: Duration = Duration::from_millis(100);

/// Review (96cd88a lazy deadline entries, 0df6809/81f3932 `last` and keeps per batch): leases of
/// one batch with `max_hold`s from one ttl to 2.5 ttls, each waited on from its first poll (so
/// its deadline entry is the first deadline, left behind by every extension, and re-entered by
/// the deadlines' task). Each is lost for `max_hold`, never later than the last deadline its body
/// saw, never past `acquired_at + max_hold`, and no deadline it saw lies past that either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hold_leases_waited_on_from_the_start_are_lost_by_their_last_deadline() {
    let cluster = Cluster::builder().nodes(3).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let ttl = Duration::from_millis(600);
    let calls = (0..16u32).map(|i| {
        let runtime = runtime.clone();
        let max_hold = ttl + Duration::from_millis(100) * i;
        async move {
            let seen = Mutex::new((Instant::now(), None::<Instant>));
            let body_started = Mutex::new(None::<Instant>);
            let result = runtime
                .run_with(
                    &format!("max-hold-{i}"),
                    Options::new(ttl)
                        .max_hold(max_hold)
                        .on_lost(OnLost::Continue),
                    async {
                        *body_started.lock().unwrap() = Some(Instant::now());
                        let for_at_most = max_hold + ttl * 2;
                        watch_the_deadline(&seen, Duration::from_millis(2), for_at_most).await;
                    },
                    |_| true,
                )
                .await;
            let body_started = body_started.lock().unwrap().expect("the body ran");
            let (valid_until, lost_at) = *seen.lock().unwrap();
            let lost_at = lost_at.unwrap_or_else(|| panic!("lease {i} was never lost"));
            let Err(Error::LeaseLost { reason, after, .. }) = result else {
                panic!("lease {i}: expected a lost lease, got {result:?}");
            };
            assert_eq!(reason, LostReason::MaxHold, "lease {i}");
            assert!(
                lost_at <= valid_until + SIGNAL_SLACK,
                "lease {i}: lost {:?} after the last deadline it saw",
                lost_at - valid_until
            );
            // Taken before the body started: `acquired_at + max_hold` is no later than this.
            assert!(
                valid_until <= body_started + max_hold,
                "lease {i}: a deadline {:?} past max_hold",
                valid_until - (body_started + max_hold)
            );
            assert!(
                after <= max_hold + SIGNAL_SLACK * 2,
                "lease {i}: lost {after:?} after it was taken, max_hold {max_hold:?}"
            );
            (max_hold, lost_at - body_started)
        }
    });
    for (max_hold, lost_after) in join_all(calls).await {
        println!("max_hold {max_hold:?}: lost {lost_after:?} into the body");
    }
}

/// Review (b3500b2 stale places, settle's retry): the call ends while its lease's renewal round
/// is in flight and about to come back undecided (node 1 answered, nodes 0 and 2 answer only
/// after the node timeout). Stopping finds no place in the queue; the round then settles as
/// "undecided", whose retry would queue the lease again a tenth of a ttl later: it must not, or
/// an extension (which puts an absent key back) would follow the release. The key stays gone
/// from every node, and no script runs for it any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ending_while_its_round_comes_back_undecided_is_never_retried() {
    const LATE: Duration = Duration::from_millis(400);
    let ttl = Duration::from_millis(1_500);
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = common::runtime_for(&cluster);
    // The release's script is loaded on every node first: a node that lacks it answers the
    // release "NOSCRIPT", and a release past the node timeout is not sent again (its copy then
    // expires with the ttl, as `Lease::release` says), which is not what this test is about.
    let warm_up = runtime.lock("warm-up", ttl).await.unwrap().unwrap();
    warm_up.release().await.unwrap();
    let key = "singleton:lock:undecided";
    let pttl = |i: usize| common::pttl(&cluster, i, key);
    let scripts = |i: usize| common::calls_on(&cluster, i, "evalsha");
    for round in 0..3 {
        let outcome = runtime
            .run("undecided", ttl, async {
                for i in [0, 2] {
                    cluster.proxy(i).set_latency(LATE);
                }
                // Until a renewal reaches node 1; the other nodes' answers come after the node
                // timeout, so the round will settle as undecided after the call ended.
                let start = Instant::now();
                let mut last = pttl(1);
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let now = pttl(1);
                    if now > last + 200 {
                        break;
                    }
                    last = now;
                    assert!(start.elapsed() < ttl, "no renewal reached node 1");
                }
            })
            .await;
        // The release reached node 1 only in time: the call ran (the release's failure to reach
        // a quorum is a warning).
        assert!(
            matches!(outcome, Ok(cluster_singleton::Outcome::Ran(()))),
            "round {round}: {outcome:?}"
        );
        // Everything sent so far (the round, the release) lands on nodes 0 and 2 after `LATE`.
        for i in [0, 2] {
            cluster.proxy(i).set_latency(Duration::ZERO);
        }
        // Released, or, on a node whose release came back "NOSCRIPT" after the node timeout
        // (a release is not sent again, as `Lease::release` says), expired with the ttl.
        assert!(
            eventually(ttl + LATE * 3, || (0..3).all(|i| pttl(i) == -2)).await,
            "round {round}: the key is gone from every node: {:?}",
            (0..3).map(pttl).collect::<Vec<_>>()
        );
        let before: Vec<u64> = (0..3).map(scripts).collect();
        // Past a retry (a tenth of the ttl after the round settled) and a renewal period.
        tokio::time::sleep(ttl).await;
        for i in 0..3 {
            assert_eq!(pttl(i), -2, "round {round}: the key came back on node {i}");
        }
        let after: Vec<u64> = (0..3).map(scripts).collect();
        assert_eq!(before, after, "round {round}: scripts ran after the call");
    }
}
