//! Review of dea10e3, 81f3932, 0df6809, b3500b2, 96cd88a and 4ef3730: interleavings of renewal,
//! `max_hold`, clock steps, deadlines and releases, against real redis-server nodes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use cluster_singleton::runtime::{Config, OnLost, Options, Runtime};
use cluster_singleton::{lease, Error, LostReason};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, until_nodes_vote, NODE_TIMEOUT};

/// The ttl of every lock here, and the longest ttl of the fleet (the restart grace).
const TTL: Duration = Duration::from_secs(4);
/// Past the ttl: every key on the stepped node expires at once.
const STEP_MS: i64 = 5_000;

fn steppable_cluster() -> Cluster {
    Cluster::builder()
        .nodes(3)
        .steppable_clocks(true)
        .start()
        .expect("start nodes with steppable clocks (see scripts/ensure-faketime)")
}

fn machine(cluster: &Cluster) -> Runtime {
    Config::new(cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(TTL)
        .detect_clock_jumps(true)
        .build()
        .unwrap()
}

/// Review (0df6809, `last`): a lease with `max_hold` whose last, shortened extension has been
/// confirmed is no longer in the renewal queue, yet `renews()` is still true. A node's clock then
/// steps forward (node 2 down, so the other nodes cannot confirm the lease): renewal does not
/// check it (it is not queued, so `all_due_after_a_clock_jump` never sees it), and
/// `lose_unrenewed_leases_on_clock_jumps` skips it (it "renews"). README Safety 3 promises the
/// holder's lease is lost right after the step, "renewed or not", as
/// `a_lease_is_checked_at_once_when_a_clock_steps` shows for a lease without `max_hold`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_past_its_last_max_hold_extension_is_lost_when_a_clock_steps() {
    let cluster = steppable_cluster();
    let runtime = machine(&cluster);
    until_nodes_vote(&runtime, TTL).await;
    let seen: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let seen_in_body = seen.clone();
    let cluster = Arc::new(Mutex::new(cluster));
    let in_body = cluster.clone();
    // The first renewal (at a third of the ttl) is already the last: it extends by what is left
    // of `max_hold` (about 3.7 s), less than a ttl.
    let options = Options::new(TTL).max_hold(TTL + Duration::from_secs(1));
    let result = runtime
        .run_with(
            "review3-max-hold-step",
            options,
            async move {
                let lease = lease().unwrap();
                let first_until = Instant::now() + lease.validity();
                // The last extension settled: the validity moved past the first one.
                assert!(
                    eventually(TTL, || {
                        Instant::now() + lease.validity() > first_until + Duration::from_millis(500)
                    })
                    .await,
                    "the last extension was confirmed"
                );
                let valid_until = Instant::now() + lease.validity();
                {
                    let mut cluster = in_body.lock().unwrap();
                    cluster.kill(2).unwrap();
                    cluster.step_clock(1, STEP_MS).unwrap();
                }
                *seen_in_body.lock().unwrap() = Some((Instant::now(), valid_until));
                lease.lost().await
            },
            |_| true,
        )
        .await;
    let lost_at = Instant::now();
    let (stepped_at, valid_until) = seen.lock().unwrap().expect("the body ran");
    println!(
        "lost {:?} after the step, {:?} before the validity would have ended: {result:?}",
        lost_at - stepped_at,
        valid_until.saturating_duration_since(lost_at)
    );
    let Err(Error::LeaseLost { reason, .. }) = result else {
        panic!("expected a lost lease, got {result:?}");
    };
    assert_eq!(
        reason,
        LostReason::ClockJumped,
        "a step after the lease's last (max_hold) extension was never checked for it"
    );
    assert!(
        lost_at + Duration::from_secs(1) < valid_until,
        "the lease was lost only {:?} before its validity ended",
        valid_until.saturating_duration_since(lost_at)
    );
}

/// Runs a body that blocks its thread from its first poll (so the renewal future beside it is
/// never polled) while node 2 goes down and node 1's clock steps forward; a vote of a probe on
/// the same runtime reads node 1's clock, so the runtime has seen the step before the body ends.
async fn blocking_body_through_a_step(renew: bool) -> Result<(), Error> {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap());
    until_nodes_vote(&runtime, TTL).await;
    let in_body = cluster.clone();
    let probe = runtime.clone();
    let result = runtime
        .run_with(
            "review3-blocking-step",
            Options::new(TTL).renew(renew),
            async move {
                let key = lease().unwrap().key().to_owned();
                let started = Instant::now();
                {
                    let mut cluster = in_body.lock().unwrap();
                    cluster.kill(2).unwrap();
                    cluster.step_clock(1, STEP_MS).unwrap();
                }
                // Node 1 applies the step at its next clock read: its copy expires.
                loop {
                    let mut node_1 = in_body.lock().unwrap().connection(1).unwrap();
                    let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut node_1).unwrap();
                    if !exists {
                        break;
                    }
                    assert!(started.elapsed() < Duration::from_secs(1), "node 1 stepped");
                    std::thread::sleep(Duration::from_millis(5));
                }
                // A vote reads node 1's clock: the runtime sees the step now.
                let probed = std::thread::spawn(move || {
                    common::block_on(async move { probe.lock("review3-probe", TTL).await })
                })
                .join()
                .unwrap();
                assert!(
                    !matches!(probed, Ok(Some(_))),
                    "node 1's vote was refused after its step, node 2 is down: {probed:?}"
                );
                // The runtime checks its leases on a step in a task of its own: given time to,
                // still without an await (which would poll the renewal beside this body).
                let lease = lease().unwrap();
                let seen = Instant::now();
                while lease.lost_reason().is_none() && seen.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(
                    started.elapsed() < TTL / 2,
                    "the body ended well within the validity"
                );
            },
            |_| true,
        )
        .await;
    println!("renew {renew}: {result:?}");
    result.map(|_| ())
}

/// Control: with renewal off, the step seen while the body blocked makes the call fail for it
/// (`lose_unrenewed_leases_on_clock_jumps`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_body_without_renewal_through_a_step_is_lost() {
    let result = blocking_body_through_a_step(false).await;
    assert!(
        matches!(
            result,
            Err(Error::LeaseLost {
                reason: LostReason::ClockJumped,
                ..
            })
        ),
        "expected ClockJumped, got {result:?}"
    );
}

/// Review (renews set before the lease is queued): `Lease::renewal` sets `renews` when the call
/// builds the renewal future, but the lease enters the renewal queue only when that future is
/// first polled. A body that blocks from its first poll keeps it out of the queue; a step seen
/// meanwhile is checked by neither renewal (not queued) nor
/// `lose_unrenewed_leases_on_clock_jumps` (it "renews"), and the call says `Ran` where the same
/// body with renewal off is lost for the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_body_with_renewal_through_a_step_is_lost() {
    let result = blocking_body_through_a_step(true).await;
    assert!(
        matches!(
            result,
            Err(Error::LeaseLost {
                reason: LostReason::ClockJumped,
                ..
            })
        ),
        "a step seen before renewal queued the lease was never checked: {result:?}"
    );
}

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
                    &format!("review3-max-hold-{i}"),
                    Options::new(ttl)
                        .max_hold(max_hold)
                        .on_lost(OnLost::Continue),
                    async {
                        *body_started.lock().unwrap() = Some(Instant::now());
                        let lease = lease().unwrap();
                        let lost = lease.lost();
                        tokio::pin!(lost);
                        let end = Instant::now() + max_hold + ttl * 2;
                        loop {
                            let until = Instant::now() + lease.validity();
                            {
                                let mut seen = seen.lock().unwrap();
                                seen.0 = seen.0.max(until);
                            }
                            tokio::select! {
                                _ = &mut lost => {
                                    seen.lock().unwrap().1 = Some(Instant::now());
                                    return;
                                }
                                () = tokio::time::sleep(Duration::from_millis(2)) => {}
                            }
                            assert!(Instant::now() < end, "lease {i} was never lost");
                        }
                    },
                    |_| true,
                )
                .await;
            let body_started = body_started.lock().unwrap().expect("the body ran");
            let (valid_until, lost_at) = *seen.lock().unwrap();
            let lost_at = lost_at.expect("the loss was heard");
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
    let warm_up = runtime.lock("review3-warm-up", ttl).await.unwrap().unwrap();
    warm_up.release().await.unwrap();
    let key = "singleton:lock:review3-undecided";
    let pttl = |i: usize| -> i64 {
        let mut connection = cluster.connection(i).unwrap();
        redis::cmd("PTTL").arg(key).query(&mut connection).unwrap()
    };
    let scripts = |i: usize| -> u64 {
        let mut connection = cluster.connection(i).unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut connection)
            .unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    };
    for round in 0..3 {
        let outcome = runtime
            .run("review3-undecided", ttl, async {
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
