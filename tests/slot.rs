//! `slot`: at most one successful run per period, on any machine; a failed run marks nothing.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_singleton::runtime::Options;
use cluster_singleton::{Outcome, Skip};
use common::{eventually, runtime_for, Nodes, PROMPTLY};
use futures_util::FutureExt;

const TTL: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

fn hourly() -> Options {
    Options::new(TTL).slot(HOUR)
}

fn this_hour() -> (SystemTime, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let index = now / HOUR.as_secs();
    (UNIX_EPOCH + HOUR * index as u32, index)
}

#[tokio::test]
async fn a_second_run_in_the_period_is_already_done_on_any_machine() {
    let nodes = Nodes::start(3);
    let other_machine = runtime_for(&nodes.cluster);

    let first = nodes
        .runtime
        .run_with("report", hourly(), async { Ok::<_, ()>(1) }, Result::is_ok)
        .await
        .unwrap();
    let second = other_machine
        .run_with("report", hourly(), async { Ok::<_, ()>(2) }, Result::is_ok)
        .await
        .unwrap();

    assert_eq!(first, Outcome::Ran(Ok(1)));
    let (period_start, index) = this_hour();
    assert_eq!(second, Outcome::Skipped(Skip::AlreadyDone { period_start }));
    let marker = format!("singleton:done:report:{index}");
    for i in 0..3 {
        let mut connection = nodes.cluster.connection(i).unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&marker)
            .query(&mut connection)
            .unwrap();
        assert!(
            pttl > HOUR.as_millis() as i64 && pttl <= 2 * HOUR.as_millis() as i64,
            "node {i}: {pttl}"
        );
    }
    // The release returns once a quorum answered; the last node's answer may still be on its way.
    assert!(
        eventually(PROMPTLY, || nodes.absent("singleton:lock:report", &[])).await,
        "the lock itself is released"
    );
}

#[tokio::test]
async fn a_failed_run_marks_nothing() {
    let nodes = Nodes::start(3);

    let failed = nodes
        .runtime
        .run_with(
            "report",
            hourly(),
            async { Err::<u8, _>("db down") },
            Result::is_ok,
        )
        .await
        .unwrap();
    let retried = nodes
        .runtime
        .run_with(
            "report",
            hourly(),
            async { Ok::<u8, &str>(1) },
            Result::is_ok,
        )
        .await
        .unwrap();

    assert_eq!(failed, Outcome::Ran(Err("db down")));
    assert_eq!(
        retried,
        Outcome::Ran(Ok(1)),
        "another call may retry the period"
    );
}

#[tokio::test]
async fn a_panicking_or_cancelled_run_marks_nothing() {
    let nodes = Nodes::start(3);

    let panicked = std::panic::AssertUnwindSafe(nodes.runtime.run_with(
        "report",
        hourly(),
        async { panic!("the job failed") },
        |_: &()| true,
    ))
    .catch_unwind()
    .await;
    assert!(panicked.is_err());

    assert!(eventually(PROMPTLY, || nodes.absent("singleton:lock:report", &[])).await);

    let (entered, body_started) = tokio::sync::oneshot::channel();
    let runtime = nodes.runtime.clone();
    let cancelled = tokio::spawn(async move {
        let body = async {
            let _ = entered.send(());
            std::future::pending::<()>().await
        };
        runtime.run_with("report", hourly(), body, |_| true).await
    });
    body_started.await.expect("the body started under the lock");
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert!(eventually(PROMPTLY, || nodes.absent("singleton:lock:report", &[])).await);

    let outcome = nodes
        .runtime
        .run_with("report", hourly(), async { 3 }, |_| true)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(3));
}

#[tokio::test]
async fn the_marker_is_found_with_a_minority_down() {
    let mut nodes = Nodes::start(3);
    assert_eq!(
        nodes
            .runtime
            .run_with("report", hourly(), async {}, |_| true)
            .await
            .unwrap(),
        Outcome::Ran(())
    );

    nodes.cluster.kill(0).unwrap();

    let again = nodes
        .runtime
        .run_with("report", hourly(), async {}, |_| true)
        .await
        .unwrap();
    assert!(
        matches!(again, Outcome::Skipped(Skip::AlreadyDone { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_next_period_runs_again() {
    let nodes = Nodes::start(1);
    let second = Duration::from_secs(1);
    let per_second = Options::new(TTL).slot(second);
    // Start just after a period begins, so that both calls fall in it.
    let into_period = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_period) + 20)).await;

    let first = nodes
        .runtime
        .run_with("tick", per_second, async {}, |_| true)
        .await
        .unwrap();
    let same_period = nodes
        .runtime
        .run_with("tick", per_second, async {}, |_| true)
        .await
        .unwrap();
    tokio::time::sleep(second).await;
    let next_period = nodes
        .runtime
        .run_with("tick", per_second, async {}, |_| true)
        .await
        .unwrap();

    assert_eq!(first, Outcome::Ran(()));
    assert!(
        matches!(same_period, Outcome::Skipped(Skip::AlreadyDone { .. })),
        "{same_period:?}"
    );
    assert_eq!(next_period, Outcome::Ran(()));
}

/// The done marker reached nodes 0 and 1 only (node 2 was down); then node 0 restarts without
/// persistence, node 2 comes back empty and node 1 goes down. Nodes 0 and 2 answer "no marker",
/// a majority; but both started after the period began, so either may have forgotten a marker of
/// it, and their "no" does not count: the period must not run a second time.
#[tokio::test]
async fn nodes_started_during_the_period_cannot_say_it_is_not_done() {
    const PERIOD: Duration = Duration::from_secs(10);
    // A node's start is known to within a second, and a marker's writer may be a second ahead.
    const NODE_AGE_NEEDED: Duration = Duration::from_secs(3);
    let mut cluster = cluster_singleton_testkit::Cluster::start(3).unwrap();
    let started = SystemTime::now();
    // Short, for a short restart grace; long enough that a lock of it allows 12 ms for clocks,
    // more than a vote's round trips on a loaded machine (see `Config::detect_clock_jumps`).
    let max_ttl = Duration::from_secs(1);
    let machine = || {
        cluster_singleton::runtime::Config::new(cluster.urls())
            .node_timeout(common::NODE_TIMEOUT)
            .max_ttl(max_ttl)
            .build()
            .unwrap()
    };
    let (first, second) = (machine(), machine());
    let options = Options::new(max_ttl).slot(PERIOD);
    // The first period that began after the nodes had been up for a while: they have seen all
    // of it, and may say whether it is done.
    let period_start = |at: SystemTime| {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        since_epoch - since_epoch % PERIOD.as_secs()
    };
    let period = period_start(started + NODE_AGE_NEEDED) + PERIOD.as_secs();
    let begins = UNIX_EPOCH + Duration::from_secs(period);
    tokio::time::sleep(begins.duration_since(SystemTime::now()).unwrap()).await;

    cluster.kill(2).unwrap();
    let ran = first
        .run_with("periodic-report", options, async {}, |_| true)
        .await
        .unwrap();
    assert_eq!(ran, Outcome::Ran(()));
    cluster.restart(0).unwrap();
    cluster.start_node(2).unwrap();
    cluster.kill(1).unwrap();
    // Past the grace (and the second by which Redis rounds uptimes), so that nodes 0 and 2 grant
    // the lock itself.
    tokio::time::sleep(max_ttl + Duration::from_millis(2100)).await;

    let again = second
        .run_with("periodic-report", options, async {}, |_| true)
        .await;
    assert_eq!(
        period_start(SystemTime::now()),
        period,
        "the scenario fits in one period"
    );
    assert!(
        !matches!(again, Ok(Outcome::Ran(()))),
        "the period ran twice"
    );
    let err = again.unwrap_err().to_string();
    assert!(err.contains("started after the period began"), "{err}");
}

/// The done marker is written only where the lock is still ours, in one step with that check: a
/// holder whose lock was taken over between its body's end and the marker cannot mark a period
/// it no longer owns, and its call says that the lease was lost rather than `Ran`.
#[tokio::test]
async fn a_lock_taken_over_before_the_marker_marks_nothing() {
    let nodes = Nodes::start(3);
    let outcome = nodes
        .runtime
        .run_with(
            "taken-report",
            hourly(),
            async {
                let key = cluster_singleton::lease().unwrap().key().to_owned();
                nodes.set_everywhere(&key, "another-holder");
            },
            |_| true,
        )
        .await;
    assert!(
        matches!(
            outcome,
            Err(cluster_singleton::Error::LeaseLost {
                reason: cluster_singleton::LostReason::TakenOver,
                body_finished: true,
                ..
            })
        ),
        "{outcome:?}"
    );
    let (_, index) = this_hour();
    let marker = format!("singleton:done:taken-report:{index}");
    assert!(
        nodes.absent(&marker, &[]),
        "{:?}",
        nodes.values(&marker, &[])
    );
}

#[tokio::test]
async fn a_lease_that_ran_out_while_looking_for_the_marker_never_starts_the_body() {
    let mut nodes = Nodes::start(3);
    // Looking for the marker waits for every node that may answer, each up to the node timeout;
    // here that is longer than the ttl, so a frozen node outlasts the lease.
    let runtime = common::fresh_nodes(&nodes.cluster)
        .node_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    // Its connections open first (a lock opens them): a node without an open connection gives
    // no vote at once, and is not waited for.
    let opening = runtime
        .lock("slot-outlived-opening", Duration::from_secs(5))
        .await;
    opening.unwrap().expect("free").release().await.unwrap();
    nodes.cluster.freeze(2).unwrap();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started_in_body = started.clone();
    let options = Options::new(Duration::from_millis(500)).slot(HOUR);

    let outcome = runtime
        .run_with(
            "slot-outlived",
            options,
            async move { started_in_body.store(true, std::sync::atomic::Ordering::SeqCst) },
            |_| true,
        )
        .await;

    assert!(
        matches!(
            outcome,
            Err(cluster_singleton::Error::LeaseLost {
                body_finished: false,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert!(
        !started.load(std::sync::atomic::Ordering::SeqCst),
        "the body started on a lease that had run out"
    );
    nodes.cluster.resume(2).unwrap();
}

#[tokio::test]
async fn a_short_periods_marker_outlives_a_minute_of_clock_skew() {
    let nodes = Nodes::start(3);
    let ran = nodes
        .runtime
        .run_with(
            "slot-one-second",
            Options::new(TTL).slot(Duration::from_secs(1)),
            async {},
            |_| true,
        )
        .await;
    assert_eq!(ran.unwrap(), Outcome::Ran(()));

    let mut node = nodes.cluster.connection(0).unwrap();
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg("singleton:done:slot-one-second:*")
        .query(&mut node)
        .unwrap();
    assert_eq!(markers.len(), 1, "{markers:?}");
    let left: i64 = redis::cmd("PTTL")
        .arg(&markers[0])
        .query(&mut node)
        .unwrap();
    // A machine whose clock is up to a minute behind (or whose call for the period comes that
    // late) still finds it; to the end of the next period alone would be two seconds at most.
    assert!(left > 60_000 && left <= 61_000, "{left} ms left");
}

/// Starts `call` while another caller holds node 1 of its vote, and node 2 is frozen: the call's
/// first attempt wins node 0, loses node 1, and waits node 2's whole timeout, a split vote that
/// takes longer than the quick retries allow. Returns once that attempt has won node 0, with the
/// running call and a connection to node 1.
async fn start_a_split<T>(
    nodes: &mut Nodes,
    key: &str,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> (tokio::task::JoinHandle<T>, redis::Connection)
where
    T: Send + 'static,
{
    // Connections open before node 2 freezes: its timeout is then waited for.
    let warm_up = nodes.runtime.run("warm-up", TTL, async {}).await.unwrap();
    assert_eq!(warm_up, Outcome::Ran(()));
    nodes.cluster.freeze(2).unwrap();
    let lock_key = format!("singleton:lock:{key}");
    let mut node_1 = nodes.cluster.connection(1).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("another-caller")
        .query(&mut node_1)
        .unwrap();
    let call = tokio::spawn(call);
    assert!(
        eventually(PROMPTLY, || nodes.get(0, &lock_key).is_some()).await,
        "the first attempt won node 0"
    );
    (call, node_1)
}

/// Runs `call` into the split of [`start_a_split`]; once its first attempt has won node 0, node 1
/// is freed (as if the other caller gave back its own split), so that a retry can win.
async fn split_by_a_frozen_node<T>(
    nodes: &mut Nodes,
    key: &str,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T
where
    T: Send + 'static,
{
    let (call, mut node_1) = start_a_split(nodes, key, call).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("singleton:lock:{key}"))
        .query(&mut node_1)
        .unwrap();
    let outcome = call.await.unwrap();
    nodes.cluster.resume(2).unwrap();
    outcome
}

/// A call for a period (a `slot`, a cron tick) caught in a split vote that a frozen node made
/// slow tries again for as long as its period lasts: the period's done marker keeps a late
/// retry from running twice. Two such callers on a cluster with a frozen node would otherwise
/// both skip the period.
#[tokio::test]
async fn a_call_for_a_period_retries_a_split_vote_that_waited_for_a_frozen_node() {
    let mut nodes = Nodes::start(3);
    let runtime = nodes.runtime.clone();
    let call = async move {
        runtime
            .run_with(
                "split-report",
                hourly(),
                async { Ok::<_, ()>(1) },
                Result::is_ok,
            )
            .await
    };
    let outcome = split_by_a_frozen_node(&mut nodes, "split-report", call).await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(Ok(1)));
}

/// The control: without a period, the same split skips after the first attempt, since a retry
/// that late could run a job another caller already finished.
#[tokio::test]
async fn a_call_without_a_period_skips_a_split_vote_that_waited_for_a_frozen_node() {
    let mut nodes = Nodes::start(3);
    let runtime = nodes.runtime.clone();
    let call = async move { runtime.run("split-job", TTL, async { 1 }).await };
    let outcome = split_by_a_frozen_node(&mut nodes, "split-job", call).await;
    assert_eq!(
        outcome.unwrap(),
        Outcome::Skipped(Skip::SplitVote { attempts: 1 })
    );
}

/// Five nodes, node 4 frozen, node 3 kept out of `first`'s lock by a foreign key: `first` takes
/// the lock on nodes 0 to 2 and its body waits; once it runs, node 3 is freed, so that `second`
/// wins node 3 only, loses 0 to 2 to `first`, and waits for node 4: a split vote, retried (a
/// call for a period) while `first` is still running. (`second` reaches nodes 0 to 2 through
/// 20 ms of latency, so that node 3's grant is counted before the refusals decide the vote: a
/// vote decided by three refusals first is `Busy`, and skips at once.) Then `first`'s body ends
/// with `output`, marks the period if that is a success and releases; a later retry of `second`
/// takes the lock. Returns both calls' outcomes.
async fn a_retry_outlasts_another_callers_run(
    output: Result<u8, &'static str>,
) -> (
    Result<Outcome<Result<u8, &'static str>>, cluster_singleton::Error>,
    Result<Outcome<Result<u8, &'static str>>, cluster_singleton::Error>,
) {
    let mut nodes = Nodes::start(5);
    let first_machine = nodes.runtime.clone();
    let slow_paths: Vec<cluster_singleton_testkit::Proxy> = (0..3)
        .map(|i| {
            let target = format!("127.0.0.1:{}", nodes.cluster.port(i))
                .parse()
                .unwrap();
            let proxy = cluster_singleton_testkit::Proxy::start(target).unwrap();
            proxy.set_latency(Duration::from_millis(20));
            proxy
        })
        .collect();
    let mut second_urls: Vec<String> = slow_paths
        .iter()
        .map(|proxy| format!("redis://127.0.0.1:{}", proxy.port()))
        .collect();
    second_urls.extend([nodes.cluster.direct_url(3), nodes.cluster.direct_url(4)]);
    let second_machine = cluster_singleton::runtime::Config::new(second_urls)
        .restart_grace(Duration::ZERO)
        .node_timeout(common::NODE_TIMEOUT)
        .build()
        .unwrap();
    for machine in [&first_machine, &second_machine] {
        // Connections open before node 4 freezes: its timeout is then waited for.
        let warm_up = machine.run("warm-up", TTL, async {}).await.unwrap();
        assert_eq!(warm_up, Outcome::Ran(()));
    }
    nodes.cluster.freeze(4).unwrap();
    let key = "late-retry-report";
    let lock_key = format!("singleton:lock:{key}");
    let mut node_3 = nodes.cluster.connection(3).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("another-caller")
        .query(&mut node_3)
        .unwrap();

    let (entered, body_started) = tokio::sync::oneshot::channel::<()>();
    let (finish, body_may_end) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(async move {
        let body = async move {
            let _ = entered.send(());
            let _ = body_may_end.await;
            output
        };
        first_machine
            .run_with(key, hourly(), body, Result::is_ok)
            .await
    });
    body_started
        .await
        .expect("the first caller runs the period");
    let _: () = redis::cmd("DEL").arg(&lock_key).query(&mut node_3).unwrap();

    let sets_before: Vec<u64> = (0..3).map(|i| nodes.calls(i, "set")).collect();
    let second = tokio::spawn(async move {
        second_machine
            .run_with(key, hourly(), async { Ok::<u8, &str>(2) }, Result::is_ok)
            .await
    });
    assert!(
        eventually(PROMPTLY, || nodes
            .get(3, &lock_key)
            .is_some_and(|held| held != "another-caller"))
        .await,
        "the second caller's first attempt won node 3"
    );
    // Its `SET`s reached nodes 0 to 2 while `first` held them: its first attempt is a split.
    assert!(
        eventually(PROMPTLY, || (0..3)
            .all(|i| nodes.calls(i, "set") > sets_before[i]))
        .await,
        "the second caller's first attempt reached nodes 0 to 2"
    );
    let _ = finish.send(());
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    nodes.cluster.resume(4).unwrap();
    drop(slow_paths);
    (first, second)
}

/// What the change under review rests on: a split vote retried for a period's whole length
/// (well past 100 ms) that takes the lock after another caller's successful run of the period
/// finds the period's done marker, and skips.
#[tokio::test]
async fn a_retry_that_outlasts_another_callers_successful_run_finds_the_period_done() {
    let (first, second) = a_retry_outlasts_another_callers_run(Ok(1)).await;
    assert_eq!(first.unwrap(), Outcome::Ran(Ok(1)));
    let (period_start, _) = this_hour();
    assert_eq!(
        second.unwrap(),
        Outcome::Skipped(Skip::AlreadyDone { period_start }),
        "a retry that outlasted a successful run of the period"
    );
}

/// The other half: a retry that outlasts another caller's failed run of the period runs it,
/// since a failed run marks nothing.
#[tokio::test]
async fn a_retry_that_outlasts_another_callers_failed_run_runs_the_period() {
    let (first, second) = a_retry_outlasts_another_callers_run(Err("db down")).await;
    assert_eq!(first.unwrap(), Outcome::Ran(Err("db down")));
    assert_eq!(second.unwrap(), Outcome::Ran(Ok(2)));
}

/// Two machines, each close to a different node: machine A reaches node 0 at once and node 1
/// through 30 ms of latency each way, machine B the other way round; node 2 is frozen. Both call
/// for the period at the same instant: each wins its near node, loses its far one, and waits
/// node 2's timeout, a split. Pauses shorter than the 30 ms by which each machine's far `SET`
/// trails the other's near one would split every retry the same way, and nobody would run the
/// period: a call for a period draws its pauses from windows as long as its attempts take.
#[tokio::test]
async fn machines_close_to_different_nodes_still_split_every_retry_of_a_period() {
    const FAR: Duration = Duration::from_millis(30);
    let mut cluster = cluster_singleton_testkit::Cluster::start(3).unwrap();
    let through_proxy = |node: usize| {
        let target = format!("127.0.0.1:{}", cluster.port(node)).parse().unwrap();
        let proxy = cluster_singleton_testkit::Proxy::start(target).unwrap();
        proxy.set_latency(FAR);
        proxy
    };
    let (a_to_1, b_to_0) = (through_proxy(1), through_proxy(0));
    let proxied =
        |proxy: &cluster_singleton_testkit::Proxy| format!("redis://127.0.0.1:{}", proxy.port());
    let machine = |urls: [String; 3]| {
        cluster_singleton::runtime::Config::new(urls)
            .restart_grace(Duration::ZERO)
            .node_timeout(common::NODE_TIMEOUT)
            .build()
            .unwrap()
    };
    let a = machine([
        cluster.direct_url(0),
        proxied(&a_to_1),
        cluster.direct_url(2),
    ]);
    let b = machine([
        proxied(&b_to_0),
        cluster.direct_url(1),
        cluster.direct_url(2),
    ]);
    for machine in [&a, &b] {
        let warm_up = machine.run("warm-up", TTL, async {}).await.unwrap();
        assert_eq!(warm_up, Outcome::Ran(()));
    }
    cluster.freeze(2).unwrap();

    let key = "far-apart-report";
    let (on_a, on_b) = tokio::join!(
        a.run_with(key, hourly(), async { Ok::<_, ()>('a') }, Result::is_ok),
        b.run_with(key, hourly(), async { Ok::<_, ()>('b') }, Result::is_ok),
    );
    cluster.resume(2).unwrap();
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    let ran = [&on_a, &on_b]
        .iter()
        .filter(|outcome| matches!(outcome, Outcome::Ran(_)))
        .count();
    assert_eq!(ran, 1, "machine A: {on_a:?}, machine B: {on_b:?}");
}

/// A call for a period caught in a split that lasts (node 1 held by another caller, node 2
/// frozen: every attempt waits node 2's timeout) when `shutdown` begins: the runtime takes no
/// more locks, so the call makes no further attempt (each would be a `SET` on every node, and a
/// node timeout more for `shutdown` to wait).
#[tokio::test]
async fn a_split_vote_is_not_retried_once_shutdown_begins() {
    let mut nodes = Nodes::start(3);
    let key = "split-at-shutdown";
    let runtime = nodes.runtime.clone();
    let call = async move { runtime.run_with(key, hourly(), async { 1 }, |_| true).await };
    let (call, _node_1) = start_a_split(&mut nodes, key, call).await;
    let shutdown = nodes.runtime.shutdown(Duration::from_secs(5)).await;
    let outcome = call.await.unwrap();
    nodes.cluster.resume(2).unwrap();
    shutdown.unwrap();
    assert!(
        matches!(
            outcome,
            Ok(Outcome::Skipped(Skip::SplitVote { attempts: 1 }))
                | Err(cluster_singleton::Error::ShutDown)
        ),
        "{outcome:?}"
    );
}
