//! `Ran` means the lease was valid when the body ended, and the lost signal fires at the end of
//! the validity at the latest: not later because a renewal round still waits for answers, and
//! also when nothing renews the lease at all.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{OnLost, Options};
use cluster_singleton::{lease, Error, LeaseInfo, LostReason, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{fresh_nodes, program_runtime, Nodes};

/// How late past the end of the validity the lost signal may fire: a timer's wake-up on a loaded
/// 2-core machine, far below the node timeouts the tests use.
const SIGNAL_SLACK: Duration = Duration::from_millis(100);

fn lease_lost<T: std::fmt::Debug>(result: Result<Outcome<T>, Error>) -> (LostReason, bool) {
    match result {
        Err(Error::LeaseLost {
            reason,
            body_finished,
            ..
        }) => (reason, body_finished),
        other => panic!("expected a lost lease, got {other:?}"),
    }
}

/// A body that blocks its thread (a synchronous call, a busy loop) cannot be cancelled, and
/// renewal off cannot keep its lease: it ends after the validity ran out, when another machine
/// may hold the key. That is a lost lease, never `Ran`.
#[tokio::test]
async fn a_body_that_blocks_past_its_validity_is_not_ran() {
    let nodes = Nodes::start(1);
    let ttl = Duration::from_millis(300);
    let result = nodes
        .runtime
        .run_with(
            "blocking-job",
            Options::new(ttl).renew(false),
            async move {
                std::thread::sleep(ttl * 2);
            },
            |_| true,
        )
        .await;
    let (reason, body_finished) = lease_lost(result);
    assert_eq!(reason, LostReason::Expired);
    assert!(body_finished);
}

/// A body that blocks the only thread of its runtime: a rival tries the key while it blocks. If
/// the rival got it, the call must not claim that its body ran under the lock.
#[test]
fn a_blocking_body_whose_key_was_taken_meanwhile_is_not_ran() {
    let nodes = program_runtime().block_on(async { Nodes::start(1) });
    let ttl = Duration::from_millis(300);
    let rival = nodes.runtime.clone();
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rival_took_it = false;
    let result = caller.block_on(nodes.runtime.run_with(
        "blocking-job",
        Options::new(ttl),
        async {
            std::thread::sleep(ttl * 2);
            let rival = rival.clone();
            let taken = std::thread::spawn(move || {
                program_runtime().block_on(rival.lock("blocking-job", ttl))
            })
            .join()
            .unwrap()
            .unwrap();
            rival_took_it = taken.is_some();
        },
        |_| true,
    ));
    if rival_took_it {
        let (reason, body_finished) = lease_lost(result);
        assert_eq!(reason, LostReason::Expired);
        assert!(body_finished);
    } else {
        assert_eq!(result.unwrap(), Outcome::Ran(()));
    }
}

/// When the deadlines were read and the loss heard in [`cut_off_after`].
struct CutOff {
    /// The lease's deadline when the body started.
    first_deadline: Instant,
    /// Its deadline when the nodes were cut off.
    valid_until: Instant,
    /// When the body heard the loss.
    lost_at: Instant,
}

/// Runs a body under a lease of `ttl` on three proxied nodes whose node timeout (800 ms) is
/// longer than what is left of the lease, so that a renewal round still waits when the deadline
/// comes. The body lets renewal keep the lease for `renewed_for`, then cuts nodes 1 and 2 off and
/// waits for the loss. Returns the instants it saw, and the call's result.
async fn cut_off_after(
    ttl: Duration,
    renewed_for: Duration,
) -> (CutOff, Result<Outcome<LostReason>, Error>) {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let seen: Arc<Mutex<Option<CutOff>>> = Arc::default();
    let seen_in_body = seen.clone();
    let proxies = [cluster.proxy(1), cluster.proxy(2)];
    let result = runtime
        .run_with(
            "partitioned-job",
            Options::new(ttl),
            async {
                let lease = lease().unwrap();
                let first_deadline = Instant::now() + lease.validity();
                tokio::time::sleep(renewed_for).await;
                assert!(lease.is_held(), "renewal kept the lease");
                let valid_until = Instant::now() + lease.validity();
                for proxy in proxies {
                    proxy.partition();
                }
                let lost = lease.lost().await;
                *seen_in_body.lock().unwrap() = Some(CutOff {
                    first_deadline,
                    valid_until,
                    lost_at: Instant::now(),
                });
                lost
            },
            |_| true,
        )
        .await;
    for proxy in proxies {
        proxy.heal();
    }
    let seen = seen.lock().unwrap().take().expect("the body saw the loss");
    (seen, result)
}

/// A majority of nodes is cut off while a renewal round waits for them for a whole node timeout
/// (longer than what is left of the lease): the body learns of the loss when the validity ends,
/// not when the round gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_fires_at_the_end_of_validity_while_a_renewal_waits() {
    let (seen, result) = cut_off_after(Duration::from_millis(900), Duration::ZERO).await;
    assert!(
        seen.lost_at <= seen.valid_until + SIGNAL_SLACK,
        "the lost signal came {:?} after the end of the validity",
        seen.lost_at - seen.valid_until
    );
    // With `on_lost = "continue"` off, the body itself was cancelled by the same signal.
    let (reason, _) = lease_lost(result);
    assert_eq!(reason, LostReason::NoQuorum);
}

/// Nothing renews the lease (renewal off) and the body blocks the thread that polls the call:
/// a task waiting on `lease().lost()` elsewhere still hears of the loss when the validity ends.
#[test]
fn the_lost_signal_fires_when_nothing_renews() {
    let program = program_runtime();
    let nodes = program.block_on(async { Nodes::start(1) });
    let ttl = Duration::from_millis(300);
    let heard: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let heard_by_waiter = heard.clone();
    let handle = program.handle().clone();
    let result = program.block_on(nodes.runtime.run_with(
        "unrenewed-job",
        Options::new(ttl).renew(false),
        async move {
            let lease = lease().unwrap();
            let valid_until = Instant::now() + lease.validity();
            handle.spawn(async move {
                lease.lost().await;
                *heard_by_waiter.lock().unwrap() = Some((valid_until, Instant::now()));
            });
            std::thread::sleep(ttl * 3);
        },
        |_| true,
    ));
    let (valid_until, heard_at) = heard.lock().unwrap().expect("the loss was heard");
    assert!(
        heard_at <= valid_until + SIGNAL_SLACK,
        "heard {:?} after the end of the validity",
        heard_at - valid_until
    );
    lease_lost(result);
}

/// `Ran` still means what it says for a body that ends in time.
#[tokio::test]
async fn a_body_that_ends_in_time_ran() {
    let nodes = Nodes::start(1);
    let outcome = nodes
        .runtime
        .run_with(
            "quick-job",
            Options::new(Duration::from_millis(300)).renew(false),
            async { 7 },
            |_| true,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(7));
}

/// One timer serves the deadlines of every lease being waited on: a lease whose deadline comes
/// first, though it was taken after a lease with a far later one, is still lost at its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_deadline_waited_on_first_does_not_delay_an_earlier_one() {
    let nodes = Nodes::start(1);
    let (release_long, long_may_end) = tokio::sync::oneshot::channel::<()>();
    let (long_waiting, long_is_waiting) = tokio::sync::oneshot::channel();
    let runtime = nodes.runtime.clone();
    let long = tokio::spawn(async move {
        runtime
            .run_with(
                "long-deadline",
                Options::new(Duration::from_secs(30)).renew(false),
                async move {
                    // The call's cancellation waits on this lease's deadline, 30 s away.
                    let _ = long_waiting.send(());
                    let _ = long_may_end.await;
                },
                |_| true,
            )
            .await
    });
    long_is_waiting.await.unwrap();

    let ttl = Duration::from_millis(300);
    let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen_in_body = seen.clone();
    let result = nodes
        .runtime
        .run_with(
            "short-deadline",
            Options::new(ttl).renew(false),
            async move {
                *seen_in_body.lock().unwrap() = Some(Instant::now() + lease().unwrap().validity());
                tokio::time::sleep(Duration::from_secs(10)).await;
            },
            |_| true,
        )
        .await;
    let cancelled_at = Instant::now();
    let valid_until = seen.lock().unwrap().expect("the body ran");
    assert_eq!(lease_lost(result), (LostReason::Expired, false));
    assert!(
        cancelled_at <= valid_until + SIGNAL_SLACK,
        "cancelled {:?} after the end of the validity",
        cancelled_at - valid_until
    );

    release_long.send(()).unwrap();
    assert_eq!(long.await.unwrap().unwrap(), Outcome::Ran(()));
}

/// Renewal moves the deadline that the loss waits for: a lease renewed a few times is not lost
/// at its first deadline, and once a majority is cut off, it is lost at the last deadline that
/// a quorum confirmed, not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_follows_the_deadline_that_renewal_moved() {
    let ttl = Duration::from_millis(600);
    // Past the first deadline, renewed all along.
    let (seen, result) = cut_off_after(ttl, ttl * 2).await;
    assert!(
        seen.valid_until > seen.first_deadline + ttl,
        "renewal moved the deadline"
    );
    assert!(
        seen.lost_at <= seen.valid_until + SIGNAL_SLACK,
        "the lost signal came {:?} after the last deadline",
        seen.lost_at - seen.valid_until
    );
    assert_eq!(lease_lost(result).0, LostReason::NoQuorum);
}

/// A task waits on `lease().lost()` on a runtime that is busy (its one thread blocked) when the
/// lease runs out. Meanwhile the call hears the loss itself, cancels the body and gives the lease
/// up, which ends it. The waiter, polled after that, must still hear the loss: the lease was lost,
/// not kept to the end of the call.
///
/// The order: the waiter polls `lost()` (the lease enters the deadlines' queue), then its thread
/// blocks; at the deadline the lease is marked lost, which wakes the call and the waiter; the
/// call gives the lease up, which ends it; only then is the waiter polled again.
#[test]
fn a_waiter_on_a_busy_runtime_hears_the_loss_after_the_call_gave_up() {
    use std::future::Future as _;
    let program = program_runtime();
    let nodes = program.block_on(async { Nodes::start(1) });
    let ttl = Duration::from_millis(300);
    let (info_sent, info_received) = std::sync::mpsc::channel::<LeaseInfo>();
    let (waiting, is_waiting) = tokio::sync::oneshot::channel::<()>();
    let waiter = std::thread::spawn(move || {
        let busy = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        busy.block_on(async move {
            let info = info_received.recv().unwrap();
            let lost = info.lost();
            tokio::pin!(lost);
            let pending = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(lost.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(pending, "still valid when first polled");
            waiting.send(()).unwrap();
            // Busy with something else until well after the deadline and the call's end.
            std::thread::sleep(ttl * 4);
            tokio::time::timeout(Duration::from_secs(2), lost)
                .await
                .ok()
        })
    });
    let result = program.block_on(nodes.runtime.run_with(
        "busy-waiter",
        Options::new(ttl).renew(false),
        async move {
            info_sent.send(lease().unwrap()).unwrap();
            is_waiting.await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        },
        |_| true,
    ));
    assert_eq!(lease_lost(result), (LostReason::Expired, false));
    assert_eq!(
        waiter.join().unwrap(),
        Some(LostReason::Expired),
        "the waiter never heard of the loss"
    );
}

/// The reason of a loss stays readable after the call gave the lease up: `lost_reason()` says
/// "why the lease was lost, if it was", and it was.
#[tokio::test]
async fn the_reason_of_a_loss_outlives_the_call() {
    let nodes = Nodes::start(1);
    let kept: Arc<Mutex<Option<LeaseInfo>>> = Arc::default();
    let kept_in_body = kept.clone();
    let result = nodes
        .runtime
        .run_with(
            "reason-kept",
            Options::new(Duration::from_millis(300)).renew(false),
            async move {
                *kept_in_body.lock().unwrap() = lease();
                tokio::time::sleep(Duration::from_secs(10)).await;
            },
            |_| true,
        )
        .await;
    assert_eq!(lease_lost(result), (LostReason::Expired, false));
    let info = kept.lock().unwrap().take().unwrap();
    assert_eq!(info.lost_reason(), Some(LostReason::Expired));
}

/// Leases entered in the deadlines' queue latest deadline first: each new entry comes before
/// the one the keeper sleeps for. Every body is still cancelled at its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waited_deadlines_entered_latest_first_each_fire_on_time() {
    let nodes = Nodes::start(1);
    let count = 10u32;
    let mut calls = Vec::new();
    for i in 0..count {
        let ttl = Duration::from_millis(400 + 80 * u64::from(count - i));
        let runtime = nodes.runtime.clone();
        let (started, has_started) = tokio::sync::oneshot::channel();
        calls.push(tokio::spawn(async move {
            let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
            let seen_in_body = seen.clone();
            let result = runtime
                .run_with(
                    &format!("latest-first-{i}"),
                    Options::new(ttl).renew(false),
                    async move {
                        *seen_in_body.lock().unwrap() =
                            Some(Instant::now() + lease().unwrap().validity());
                        // Yielded once: the call's cancellation is polled, so queued, first.
                        tokio::task::yield_now().await;
                        let _ = started.send(());
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    },
                    |_| true,
                )
                .await;
            let cancelled_at = Instant::now();
            let valid_until = seen.lock().unwrap().expect("the body ran");
            (lease_lost(result), cancelled_at, valid_until)
        }));
        has_started.await.unwrap();
    }
    for call in calls {
        let ((reason, _), cancelled_at, valid_until) = call.await.unwrap();
        assert_eq!(reason, LostReason::Expired);
        assert!(
            cancelled_at <= valid_until + SIGNAL_SLACK,
            "cancelled {:?} after the end of the validity",
            cancelled_at - valid_until
        );
    }
}

/// A waiter polled for the first time after the deadline (the body blocked its thread past it,
/// nothing had queued the lease) resolves at once.
#[tokio::test]
async fn a_waiter_first_polled_after_the_deadline_resolves_at_once() {
    let nodes = Nodes::start(1);
    let ttl = Duration::from_millis(300);
    let result = nodes
        .runtime
        .run_with(
            "first-polled-late",
            Options::new(ttl).renew(false).on_lost(OnLost::Continue),
            async move {
                std::thread::sleep(ttl + Duration::from_millis(100));
                tokio::time::timeout(Duration::from_millis(50), lease().unwrap().lost())
                    .await
                    .ok()
            },
            |_| true,
        )
        .await;
    match result {
        Err(Error::LeaseLost { reason, .. }) => assert_eq!(reason, LostReason::Expired),
        other => panic!("expected a lost lease, got {other:?}"),
    }
}

/// Renewals whose answers land about when the lease's deadline passes: the keeper may pop the
/// lease's entry while an extension moves it. Either the extension came in time (and the lease
/// goes on), or the lease is lost at the last deadline it had: never later, and never before a
/// deadline that an extension had already moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_is_exact_when_renewals_answer_at_the_deadline() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let ttl = Duration::from_millis(600);
    let runtime = fresh_nodes(&cluster)
        .node_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let proxies = [cluster.proxy(0), cluster.proxy(1), cluster.proxy(2)];
    for (round, latency_ms) in (188..=198u64).enumerate() {
        let seen: Arc<Mutex<(Instant, Option<Instant>)>> =
            Arc::new(Mutex::new((Instant::now(), None)));
        let seen_in_body = seen.clone();
        let result = runtime
            .run_with(
                &format!("answers-at-the-deadline-{round}"),
                Options::new(ttl).on_lost(OnLost::Continue),
                async {
                    for proxy in proxies {
                        proxy.set_latency(Duration::from_millis(latency_ms));
                    }
                    common::watch_the_deadline(&seen_in_body, Duration::from_millis(2), ttl * 4)
                        .await;
                },
                |_| true,
            )
            .await;
        for proxy in proxies {
            proxy.set_latency(Duration::ZERO);
        }
        let (valid_until, lost_at) = *seen.lock().unwrap();
        match lost_at {
            Some(lost_at) => {
                assert!(
                    lost_at <= valid_until + SIGNAL_SLACK,
                    "latency {latency_ms} ms: lost {:?} after the last deadline seen",
                    lost_at - valid_until
                );
                assert!(
                    lost_at + Duration::from_millis(20) >= valid_until,
                    "latency {latency_ms} ms: lost {:?} before a deadline an extension had set",
                    valid_until - lost_at
                );
                let reason = lease_lost(result).0;
                assert!(
                    matches!(reason, LostReason::NoQuorum | LostReason::Expired),
                    "{reason:?}"
                );
            }
            None => assert!(matches!(result, Ok(Outcome::Ran(()))), "{result:?}"),
        }
    }
}

/// Thirty leases, each waited on from a different moment (some only after a few renewals, so
/// that their entries in the deadlines' queue are older than their deadlines), are renewed for a
/// while, then a majority of nodes is cut off: each body hears its loss at the last deadline it
/// saw, not later and not before, whatever entry the deadlines' task was sleeping until.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_entered_at_different_times_each_hear_their_own_deadline() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let ttl = Duration::from_millis(450);
    let cut_at = Instant::now() + Duration::from_millis(1700);
    let mut calls = Vec::new();
    for i in 0..30u64 {
        let runtime = runtime.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 17)).await;
            let seen: Arc<Mutex<(Instant, Option<Instant>)>> =
                Arc::new(Mutex::new((Instant::now(), None)));
            let seen_in_body = seen.clone();
            let result = runtime
                .run_with(
                    &format!("many-waiters-{i}"),
                    Options::new(ttl).on_lost(OnLost::Continue),
                    async move {
                        tokio::time::sleep(Duration::from_millis(i * 29)).await;
                        let every = Duration::from_millis(3);
                        common::watch_the_deadline(&seen_in_body, every, Duration::from_secs(4))
                            .await;
                    },
                    |_| true,
                )
                .await;
            let seen = *seen.lock().unwrap();
            (i, seen, result)
        }));
    }
    tokio::time::sleep_until(cut_at.into()).await;
    for i in [1, 2] {
        cluster.proxy(i).partition();
    }
    let mut wrong = Vec::new();
    for call in calls {
        let (i, (valid_until, lost_at), result) = call.await.unwrap();
        match lost_at {
            Some(lost_at) if lost_at > valid_until + SIGNAL_SLACK => {
                wrong.push(format!("{i}: lost {:?} late", lost_at - valid_until));
            }
            Some(lost_at) if lost_at + Duration::from_millis(20) < valid_until => {
                wrong.push(format!("{i}: lost {:?} early", valid_until - lost_at));
            }
            Some(_) => {
                lease_lost(result);
            }
            None => wrong.push(format!("{i}: never lost: {result:?}")),
        }
    }
    for i in [1, 2] {
        cluster.proxy(i).heal();
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Two hundred leases on a `memory://` store, renewed every 30 ms, each body waiting on its
/// lease's loss from a different moment: a store that never fails loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_healthy_renewed_memory_leases_hear_no_loss() {
    let runtime = cluster_singleton::runtime::Config::new(["memory://waiters-hear-no-loss"])
        .build()
        .unwrap();
    let ttl = Duration::from_millis(90);
    let mut calls = Vec::new();
    for i in 0..200u64 {
        let runtime = runtime.clone();
        calls.push(tokio::spawn(async move {
            runtime
                .run_with(
                    &format!("memory-waiter-{i}"),
                    Options::new(ttl).on_lost(OnLost::Continue),
                    async move {
                        let lease = lease().unwrap();
                        tokio::time::sleep(Duration::from_millis((i % 7) * 37)).await;
                        tokio::select! {
                            reason = lease.lost() => Some(reason),
                            () = tokio::time::sleep(Duration::from_millis(1500)) => None,
                        }
                    },
                    |_| true,
                )
                .await
        }));
    }
    let mut wrong = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(Outcome::Ran(None)) => {}
            other => wrong.push(format!("{other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} lost: {wrong:?}", wrong.len());
}
