//! Redis expires keys by its wall clock. A node whose clock steps forward (an NTP step, an
//! operator setting the time, a VM resumed) lets a lock expire early there, and a second caller
//! could then win a majority with that node while the first still holds the lock: the best-known
//! critique of Redlock. The runtime reads every node's clock with its votes and its
//! once-a-second check, and treats a node whose clock moved further than the runtime's own
//! monotonic clock like a restarted node (`Config::detect_clock_jumps`).
//!
//! The nodes here run with libfaketime preloaded, so that a test can step one's clock while it
//! runs (`scripts/ensure-faketime` installs what that needs).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{lease, Error, Lease, LeaseInfo, LostReason, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, lose_copy_on_node_2, until_nodes_vote, NODE_TIMEOUT, PROMPTLY};

const KEY: &str = "clock-job";
/// The ttl of every lock here, and the longest ttl of the fleet, so the restart grace too.
const TTL: Duration = Duration::from_secs(4);
/// Past the ttl: every key on the stepped node expires at once.
const STEP_MS: i64 = 5_000;
/// How long after a fault the tests try again: past the runtime's once-a-second check.
const PAST_A_CHECK: Duration = Duration::from_millis(2_500);

fn steppable_cluster() -> Cluster {
    Cluster::builder()
        .nodes(3)
        .steppable_clocks(true)
        .start()
        .expect("start nodes with steppable clocks (see scripts/ensure-faketime)")
}

/// A machine of the fleet, watching the nodes' clocks or not.
fn machine(cluster: &Cluster, detect_clock_jumps: bool) -> Runtime {
    Config::new(cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(TTL)
        .detect_clock_jumps(detect_clock_jumps)
        .build()
        .unwrap()
}

/// A lease of the first machine, and its validity as it was taken. Once the holder's own process
/// sees the step it may mark the lease lost (its own protection, see
/// `a_lease_without_renewal_is_lost_when_a_clock_steps`); what these tests assert is that no
/// other caller gets the key before that validity ends.
struct FirstLease {
    lease: Lease,
    valid_until: Instant,
}

impl FirstLease {
    fn taken(lease: Lease) -> FirstLease {
        let valid_until = Instant::now() + lease.validity();
        FirstLease { lease, valid_until }
    }

    /// What was left of the lease's validity as it was taken.
    fn validity(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }
}

/// The first machine holds the lock on nodes 0 and 1 only (its copy on node 2 is gone, as after a
/// `SET` that never arrived), then node 1's clock steps forward past the ttl: on node 1 the lock
/// is gone, and nodes 1 and 2 would make a majority for anyone.
async fn hold_on_a_bare_quorum_then_step_node_1(
    cluster: &mut Cluster,
    first: &Runtime,
    others: &[&Runtime],
) -> FirstLease {
    until_nodes_vote(first, TTL).await;
    for other in others {
        until_nodes_vote(other, TTL).await;
    }
    let held = FirstLease::taken(
        first
            .lock(KEY, TTL)
            .await
            .unwrap()
            .expect("the key is free"),
    );
    lose_copy_on_node_2(cluster, &held.lease).await;
    cluster.step_clock(1, STEP_MS).unwrap();
    // The node reads the new offset at its next clock read; on a loaded machine, that read may
    // come a moment later.
    assert!(
        eventually(PROMPTLY, || !lock_on_node_1(cluster)).await,
        "node 1's clock step expired the lock there"
    );
    held
}

/// Whether node 1 holds a lock on `KEY`.
fn lock_on_node_1(cluster: &Cluster) -> bool {
    let mut node_1 = cluster.connection(1).unwrap();
    redis::cmd("EXISTS")
        .arg(format!("singleton:lock:{KEY}"))
        .query(&mut node_1)
        .unwrap()
}

/// Waits until node 1's copy of `first` expired early (its clock stepped), then asserts that
/// `second` cannot take the key while `first` is valid.
async fn no_second_holder_once_node_1_forgot(
    cluster: &Cluster,
    first: &FirstLease,
    second: &Runtime,
    ttl: Duration,
) {
    while lock_on_node_1(cluster) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let intruder = second.lock(KEY, ttl).await;
    let left = first.validity();
    assert!(
        !(matches!(intruder, Ok(Some(_))) && left > Duration::ZERO),
        "two holders: the second took the key with {left:?} left of the first lease"
    );
}

#[tokio::test]
async fn without_detection_a_clock_step_lets_a_second_holder_in() {
    let mut cluster = steppable_cluster();
    let (first, second) = (machine(&cluster, false), machine(&cluster, false));
    let held = hold_on_a_bare_quorum_then_step_node_1(&mut cluster, &first, &[&second]).await;

    let intruder = second.lock(KEY, TTL).await.unwrap();
    let left = held.validity();
    println!("detection off: second caller got {intruder:?}, first lease has {left:?} left");
    assert!(left > Duration::ZERO, "the first lease is still valid");
    assert!(
        intruder.is_some(),
        "this is the double holding that detecting clock steps prevents"
    );
}

#[tokio::test]
async fn a_node_whose_clock_stepped_forward_gives_no_vote() {
    let mut cluster = steppable_cluster();
    let (first, second) = (machine(&cluster, true), machine(&cluster, true));
    let held = hold_on_a_bare_quorum_then_step_node_1(&mut cluster, &first, &[&second]).await;

    // At once: the vote itself reads the node's clock.
    let intruder = second.lock(KEY, TTL).await;
    println!(
        "detection on: second caller got {intruder:?}, first lease has {:?} left",
        held.validity()
    );
    assert!(
        held.validity() > Duration::ZERO,
        "the first lease is still valid"
    );
    match intruder {
        Ok(None) => {}
        Err(Error::NoQuorum(no_quorum)) => assert!(
            no_quorum.to_string().contains("clock stepped forward"),
            "{no_quorum}"
        ),
        other => panic!("a second holder, or an unexpected error: {other:?}"),
    }

    // And after the next check of every node, which must not make the node count again.
    tokio::time::sleep(PAST_A_CHECK).await;
    let intruder = second.lock(KEY, TTL).await;
    assert!(
        held.validity() > Duration::ZERO,
        "the first lease is still valid"
    );
    assert!(
        !matches!(intruder, Ok(Some(_))),
        "a second holder after the next check: {intruder:?}"
    );
}

/// A machine that only ran its once-a-second check on the node (no vote) sees the step too:
/// with node 0 gone, nodes 1 and 2 would make a majority, and the first lease stands on node 0
/// alone.
#[tokio::test]
async fn the_check_alone_sees_a_step() {
    let mut cluster = steppable_cluster();
    let (first, second) = (machine(&cluster, true), machine(&cluster, true));
    let held = hold_on_a_bare_quorum_then_step_node_1(&mut cluster, &first, &[&second]).await;

    tokio::time::sleep(PAST_A_CHECK).await;
    node_1_gives_no_vote(&mut cluster, &second, &held, "clock stepped forward").await;
}

/// With node 0 gone, only nodes 1 and 2 could make a majority for `caller`: asserts that node
/// 1's vote does not count, for a reason that `says`, while `held` is still valid.
async fn node_1_gives_no_vote(
    cluster: &mut Cluster,
    caller: &Runtime,
    held: &FirstLease,
    says: &str,
) {
    cluster.kill(0).unwrap();
    let intruder = caller.lock(KEY, TTL).await;
    assert!(
        held.validity() > Duration::ZERO,
        "the first lease is still valid"
    );
    let Err(Error::NoQuorum(no_quorum)) = &intruder else {
        panic!("expected a missing vote from node 1, got {intruder:?}");
    };
    assert!(no_quorum.to_string().contains(says), "{no_quorum}");
}

/// A process started after the step never saw the node's clock move, but it sees the node's
/// clock ahead of the other nodes' clocks, and does not count its vote either: from its first
/// call on, and after its first check.
#[tokio::test]
async fn a_process_started_after_a_step_sees_the_clock_ahead_of_the_others() {
    let mut cluster = steppable_cluster();
    let first = machine(&cluster, true);
    let held = hold_on_a_bare_quorum_then_step_node_1(&mut cluster, &first, &[]).await;

    let started_later = machine(&cluster, true);
    let mut refusals = Vec::new();
    for attempt in 0..2 {
        let intruder = started_later.lock(KEY, TTL).await;
        assert!(
            held.validity() > Duration::ZERO,
            "the first lease is still valid"
        );
        assert!(
            !matches!(intruder, Ok(Some(_))),
            "attempt {attempt}: a second holder from a process started after the step"
        );
        refusals.push(format!("{intruder:?}"));
        if attempt == 0 {
            tokio::time::sleep(PAST_A_CHECK).await;
        }
    }
    println!("process started after the step: {refusals:?}");
    node_1_gives_no_vote(
        &mut cluster,
        &started_later,
        &held,
        "ahead of the other nodes",
    )
    .await;
}

/// Several votes of one process in flight on the stepped node at once (jobs of one scheduler
/// firing together): the first answer handled sees the step, and none of the others may count
/// either, since they ran on the same stepped clock.
#[tokio::test]
async fn concurrent_votes_after_a_step_are_all_refused() {
    const KEYS: [&str; 4] = ["job-a", "job-b", "job-c", "job-d"];
    let mut cluster = steppable_cluster();
    let (first, second) = (machine(&cluster, true), machine(&cluster, true));
    until_nodes_vote(&first, TTL).await;
    until_nodes_vote(&second, TTL).await;
    let mut held = Vec::new();
    for key in KEYS {
        let lease = first.lock(key, TTL).await.unwrap().expect("free");
        lose_copy_on_node_2(&cluster, &lease).await;
        held.push(FirstLease::taken(lease));
    }
    cluster.step_clock(1, STEP_MS).unwrap();

    let results = join_all(KEYS.map(|key| second.lock(key, TTL))).await;
    for ((key, result), lease) in KEYS.iter().zip(&results).zip(&held) {
        assert!(
            lease.validity() > Duration::ZERO,
            "{key}: the first lease ran out"
        );
        assert!(
            !matches!(result, Ok(Some(_))),
            "{key}: a second holder while the first lease is valid"
        );
    }
}

/// The check's readings of node 1 are slow for a while (100 ms each way), and then its clock
/// steps 100 ms forward, over twice the 42 ms that a 4 s lock sets aside for clocks: a slow
/// reading must not become what later ones are compared with, or the step would pass unseen.
#[tokio::test]
async fn a_slow_reading_cannot_hide_a_step() {
    let mut cluster = Cluster::builder()
        .nodes(3)
        .proxied(true)
        .steppable_clocks(true)
        .start()
        .unwrap();
    let (first, second) = (machine(&cluster, true), machine(&cluster, true));
    until_nodes_vote(&first, TTL).await;
    until_nodes_vote(&second, TTL).await;
    let lease = FirstLease::taken(first.lock(KEY, TTL).await.unwrap().expect("free"));
    lose_copy_on_node_2(&cluster, &lease.lease).await;
    cluster.proxy(1).set_latency(Duration::from_millis(100));
    tokio::time::sleep(PAST_A_CHECK).await;
    cluster.step_clock(1, 100).unwrap();
    cluster.proxy(1).set_latency(Duration::ZERO);
    no_second_holder_once_node_1_forgot(&cluster, &lease, &second, TTL).await;
}

/// Node 1 answers slowly (30 ms each way) for a while, so that no check reading is as tight as
/// the last fast one; then it is fast again, and its clock steps 35 ms, three times what a 1 s
/// lock sets aside for clocks (12 ms). The reading compared with must not have aged so far that
/// the step fits in its tolerance for drift.
#[tokio::test]
async fn an_aged_reading_cannot_hide_a_step() {
    const SHORT_TTL: Duration = Duration::from_secs(1);
    let mut cluster = Cluster::builder()
        .nodes(3)
        .proxied(true)
        .steppable_clocks(true)
        .start()
        .unwrap();
    let machine = || {
        Config::new(cluster.urls())
            .node_timeout(NODE_TIMEOUT)
            .max_ttl(SHORT_TTL)
            .build()
            .unwrap()
    };
    let (first, second) = (machine(), machine());
    until_nodes_vote(&first, SHORT_TTL).await;
    until_nodes_vote(&second, SHORT_TTL).await;
    cluster.proxy(1).set_latency(Duration::from_millis(30));
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.proxy(1).set_latency(Duration::ZERO);
    let lease = FirstLease::taken(lock_despite_slow_answers(&first, SHORT_TTL).await);
    lose_copy_on_node_2(&cluster, &lease.lease).await;
    cluster.step_clock(1, 35).unwrap();
    no_second_holder_once_node_1_forgot(&cluster, &lease, &second, SHORT_TTL).await;
}

/// Takes `KEY` on a fresh cluster, trying again when too few votes could be verified: on a
/// loaded machine, a 1 s lock's 12 ms allowance for clocks can be less than two round trips. The
/// lock is this test's starting point, not what it tests; a failed attempt gives back every
/// copy it got an answer for, so the key is free for the next.
async fn lock_despite_slow_answers(runtime: &Runtime, ttl: Duration) -> Lease {
    let mut tries = 0;
    loop {
        tries += 1;
        match runtime.lock(KEY, ttl).await {
            Ok(Some(lease)) => return lease,
            Err(Error::NoQuorum(no_quorum)) if tries < 5 => {
                println!("try {tries}: {no_quorum}");
            }
            other => panic!("the key is free: {other:?}"),
        }
    }
}

/// A step back past the node's start makes Redis report a negative uptime: the node must keep
/// its connection and its vote.
#[tokio::test]
async fn a_step_back_past_the_uptime_keeps_the_node_voting() {
    let mut cluster = steppable_cluster();
    let runtime = a_machine_that_never_voted(&cluster).await;
    cluster.step_clock(1, -60_000).unwrap();
    let mut node_1 = cluster.connection(1).unwrap();
    let info: String = redis::cmd("INFO").arg("server").query(&mut node_1).unwrap();
    assert!(info.contains("uptime_in_seconds:-"), "{info}");
    tokio::time::sleep(PAST_A_CHECK).await;
    // The connection breaks: the runtime opens a new one and reads the server again.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut node_1)
        .unwrap();
    cluster.kill(0).unwrap();
    // Only nodes 1 and 2 are left: the lock needs node 1's vote.
    let mut result = runtime.lock(KEY, TTL).await;
    let deadline = Instant::now() + PAST_A_CHECK;
    while !matches!(result, Ok(Some(_))) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = runtime.lock(KEY, TTL).await;
    }
    assert!(
        matches!(result, Ok(Some(_))),
        "node 1 gives no vote: {result:?}"
    );
}

/// A machine that has read every node's clock (by connecting) and would count their votes now,
/// but has sent no vote: none of its votes can be in flight across a step made next. A vote read
/// before a step back and handled after the check that saw it counts as a step forward (fail
/// closed: the order of the two readings cannot be told, README Safety 3), so a test of what a
/// step back leaves alone makes it with no vote in flight. Another machine waits for the nodes to
/// come of age.
async fn a_machine_that_never_voted(cluster: &Cluster) -> Runtime {
    until_nodes_vote(&machine(cluster, true), TTL).await;
    let runtime = machine(cluster, true);
    let deadline = Instant::now() + PAST_A_CHECK;
    while !runtime.health().await.iter().all(|node| node.votes) {
        assert!(Instant::now() < deadline, "the nodes' votes never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime
}

/// A step back makes keys live longer than asked: no danger to mutual exclusion, and votes still
/// count.
#[tokio::test]
async fn a_step_back_does_not_stop_votes() {
    let mut cluster = steppable_cluster();
    let runtime = a_machine_that_never_voted(&cluster).await;
    cluster.step_clock(1, -STEP_MS).unwrap();
    tokio::time::sleep(PAST_A_CHECK).await;
    let lease = runtime.lock(KEY, TTL).await.unwrap().expect("free");
    lose_copy_on_node_2(&cluster, &lease).await;
    lease.release().await.unwrap();
    cluster.kill(2).unwrap();
    // Only nodes 0 and 1 are left: the lock needs node 1's vote.
    let lease = runtime.lock(KEY, TTL).await.unwrap();
    assert!(lease.is_some(), "node 1's vote counts after a step back");
}

/// The holder's own process sees the step (here by its check, since it makes no vote) and
/// renews the lease at once on the other nodes; with node 2 down, they cannot confirm it, and
/// the lease is lost then, not when its validity would have run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_checked_at_once_when_a_clock_steps() {
    let cluster = steppable_cluster();
    let runtime = machine(&cluster, true);
    until_nodes_vote(&runtime, TTL).await;
    let stepped =
        step_under_a_held_lease(cluster, &runtime, KEY, Options::new(TTL), |_| async {}).await;
    stepped.assert_lost_for_the_step("");
}

/// What [`step_under_a_held_lease`] saw.
struct SteppedUnderALease<T> {
    result: Result<Outcome<T>, Error>,
    stepped_at: Instant,
    /// When the lease's validity would have ended, as it stood at the step.
    valid_until: Instant,
    lost_at: Instant,
}

impl<T: std::fmt::Debug> SteppedUnderALease<T> {
    /// The lease was lost for the step, well before its validity would have ended.
    fn assert_lost_for_the_step(&self, why: &str) {
        let Self {
            result,
            stepped_at,
            valid_until,
            lost_at,
        } = self;
        println!(
            "lost {:?} after the step, {:?} before the validity would have ended",
            *lost_at - *stepped_at,
            valid_until.saturating_duration_since(*lost_at)
        );
        let Err(Error::LeaseLost { reason, .. }) = result else {
            panic!("expected a lost lease, got {result:?}");
        };
        assert_eq!(*reason, LostReason::ClockJumped, "{why}");
        assert!(
            *lost_at + Duration::from_secs(1) < *valid_until,
            "the lease was lost only {:?} before its validity ended",
            valid_until.saturating_duration_since(*lost_at)
        );
    }
}

/// Runs a call on `key` whose body, once `ready` is done with the lease, takes node 2 down and
/// steps node 1's clock forward (so that the other nodes cannot confirm the lease), then waits
/// until the lease is lost.
async fn step_under_a_held_lease<F>(
    cluster: Cluster,
    runtime: &Runtime,
    key: &str,
    options: Options,
    ready: impl FnOnce(LeaseInfo) -> F,
) -> SteppedUnderALease<LostReason>
where
    F: std::future::Future<Output = ()>,
{
    let seen: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let seen_in_body = seen.clone();
    let cluster = Arc::new(Mutex::new(cluster));
    let in_body = cluster.clone();
    let result = runtime
        .run_with(
            key,
            options,
            async move {
                let lease = lease().unwrap();
                ready(lease.clone()).await;
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
    SteppedUnderALease {
        result,
        stepped_at,
        valid_until,
        lost_at,
    }
}

/// With renewal off, nothing asks the other nodes to confirm the lease after the step: the
/// process that saw the step marks the lease lost instead of letting its call say `Ran`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_without_renewal_is_lost_when_a_clock_steps() {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let in_body = cluster.clone();
    let result = runtime
        .run_with(
            KEY,
            Options::new(TTL).renew(false),
            async move {
                in_body.lock().unwrap().step_clock(1, STEP_MS).unwrap();
                lease().unwrap().lost().await
            },
            |_| true,
        )
        .await;
    let Err(Error::LeaseLost { reason, .. }) = result else {
        panic!("expected a lost lease, got {result:?}");
    };
    assert_eq!(reason, LostReason::ClockJumped);
}

/// After the step, the node counts again once the restart grace has passed since the process
/// saw the step, and not before.
#[tokio::test]
async fn a_stepped_node_votes_again_after_the_grace() {
    let mut cluster = steppable_cluster();
    let runtime = machine(&cluster, true);
    until_nodes_vote(&runtime, TTL).await;
    cluster.kill(2).unwrap();
    let stepped_at = Instant::now();
    cluster.step_clock(1, STEP_MS).unwrap();
    // Only nodes 0 and 1 are left, and node 1 is young again.
    let mut refused = 0;
    let counted_after = loop {
        match runtime.lock(KEY, TTL).await {
            Ok(Some(lease)) => {
                lease.release().await.unwrap();
                break stepped_at.elapsed();
            }
            _ => {
                refused += 1;
                assert!(stepped_at.elapsed() < TTL * 3, "node 1 never voted again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(refused > 0, "node 1's vote counted right after its step");
    assert!(
        counted_after >= TTL,
        "node 1's vote counted {counted_after:?} after its step, within the grace"
    );
}

/// PTTL of the lock on node `i`, in milliseconds (negative when the key is absent).
fn pttl_on(cluster: &Cluster, i: usize) -> i64 {
    let mut connection = cluster.connection(i).unwrap();
    redis::cmd("PTTL")
        .arg(format!("singleton:lock:{KEY}"))
        .query(&mut connection)
        .unwrap()
}

/// Review (renewal in flight): node 1's clock steps forward, and the process sees it (a vote reads
/// node 1's clock), while the lease's renewal round is on its way: node 1 answered "kept" before
/// its step, node 0 answers slowly, node 2 is down. The lease is out of the queue then, so
/// `all_due_after_a_clock_jump` never marks it; the round settles as extended, the lease is queued
/// again as confirmed, and from then on every round is merely "retrying" (node 1 is young, node 2
/// down): the lease runs to the end of its validity and is reported `NoQuorum`, instead of being
/// checked at once and lost for the clock step (`a_lease_is_checked_at_once_when_a_clock_steps`).
///
/// Node 2's clock was stepped by as much long before (and served its grace), so that node 1's
/// step leaves it ahead of one other clock only, not of a quorum: the first reading after the
/// step is then the only announcement of it, and it lands while the round is in flight (a later
/// "ahead" announcement from the once-a-second check could otherwise land between rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_seen_while_the_leases_round_is_in_flight_is_checked_too() {
    const LATENCY: Duration = Duration::from_millis(700);
    const SMALL_STEP_MS: i64 = 600;
    let mut cluster = Cluster::builder()
        .nodes(3)
        .steppable_clocks(true)
        .proxied(true)
        .start()
        .expect("start proxied nodes with steppable clocks");
    let runtime = Config::new(cluster.urls())
        .node_timeout(Duration::from_secs(3))
        .max_ttl(TTL)
        .detect_clock_jumps(true)
        .build()
        .unwrap();
    until_nodes_vote(&runtime, TTL).await;
    // Node 2 steps first; the runtime sees it within a check, and node 2 serves its grace.
    cluster.step_clock(2, SMALL_STEP_MS).unwrap();
    tokio::time::sleep(TTL + Duration::from_secs(3)).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let in_body = cluster.clone();
    let probe = runtime.clone();
    let seen: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let seen_in_body = seen.clone();
    let result = runtime
        .run_with(
            KEY,
            Options::new(TTL),
            async move {
                let lease = lease().unwrap();
                let start = Instant::now();
                {
                    let mut cluster = in_body.lock().unwrap();
                    cluster.kill(2).unwrap();
                    cluster.proxy(0).set_latency(LATENCY);
                }
                // The first renewal reaches node 1 (its key's expiry moves up), and waits for
                // node 0's answer.
                let mut last = pttl_on(&in_body.lock().unwrap(), 1);
                let renewed_on_1 = loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let now = pttl_on(&in_body.lock().unwrap(), 1);
                    if now > last + 300 {
                        break (Instant::now(), now);
                    }
                    last = now;
                    assert!(start.elapsed() < TTL, "no renewal reached node 1");
                };
                let before = Instant::now() + lease.validity();
                in_body
                    .lock()
                    .unwrap()
                    .step_clock(1, SMALL_STEP_MS)
                    .unwrap();
                // Node 1 applies the step at its next clock read.
                let expected = |at: Instant| {
                    renewed_on_1.1 - at.duration_since(renewed_on_1.0).as_millis() as i64
                };
                assert!(
                    eventually(PROMPTLY, || {
                        pttl_on(&in_body.lock().unwrap(), 1) < expected(Instant::now()) - 300
                    })
                    .await,
                    "node 1's clock stepped"
                );
                // A vote on node 1 reads its clock: the process sees the step now, while the
                // renewal still waits for node 0.
                tokio::spawn(async move {
                    let _ = probe.lock("probe", TTL).await;
                });
                let stepped_at = Instant::now();
                // The round settles (node 0's answer arrives): the validity moves on.
                let settled = eventually(LATENCY * 4, || {
                    Instant::now() + lease.validity() > before + Duration::from_millis(300)
                })
                .await;
                assert!(settled, "the round in flight settled (extended)");
                let valid_until = Instant::now() + lease.validity();
                *seen_in_body.lock().unwrap() = Some((stepped_at, valid_until));
                lease.lost().await
            },
            |_| true,
        )
        .await;
    let lost_at = Instant::now();
    cluster.lock().unwrap().proxy(0).set_latency(Duration::ZERO);
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
        "a step seen while the lease's round was in flight never had the lease checked"
    );
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
    let runtime = machine(&cluster, true);
    until_nodes_vote(&runtime, TTL).await;
    // The first renewal (at a third of the ttl) is already the last: it extends by what is left
    // of `max_hold` (about 3.7 s), less than a ttl.
    let options = Options::new(TTL).max_hold(TTL + Duration::from_secs(1));
    let last_extension_settled = |lease: LeaseInfo| async move {
        let first_until = Instant::now() + lease.validity();
        // The validity moved past the first one.
        assert!(
            eventually(TTL, || {
                Instant::now() + lease.validity() > first_until + Duration::from_millis(500)
            })
            .await,
            "the last extension was confirmed"
        );
    };
    let stepped = step_under_a_held_lease(
        cluster,
        &runtime,
        "max-hold-step",
        options,
        last_extension_settled,
    )
    .await;
    stepped.assert_lost_for_the_step(
        "a step after the lease's last (max_hold) extension was never checked for it",
    );
}

/// Runs a body that blocks its thread from its first poll (so the renewal future beside it is
/// never polled) while node 2 goes down and node 1's clock steps forward; a vote of a probe on
/// the same runtime reads node 1's clock, so the runtime has seen the step before the body ends.
async fn blocking_body_through_a_step(renew: bool) -> Result<(), Error> {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let in_body = cluster.clone();
    let probe = runtime.clone();
    let result = runtime
        .run_with(
            "blocking-step",
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
                    common::block_on(async move { probe.lock("probe", TTL).await })
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

/// Review (e6fca49, `Renewer::stop` racing the round that confirms a lease after a step): node 2
/// is frozen and node 1's clock steps forward while a renewed lease's body runs. The runtime sees
/// the step (a lease of `Runtime::lock` on the same runtime, which nothing renews, is lost for
/// it), and renewal sends the lease's confirming round, which waits for frozen node 2 (one node
/// timeout) and can only come back undecided (node 1 stepped): the lease is to be lost for
/// `ClockJumped`. The body ends as soon as the step was seen, while that round is out. The
/// call's last check (`lease.lost()` in run.rs) finds the lease neither lost nor confirmed, and
/// `stop` then takes it out of renewal's care: the step is never answered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ending_while_its_confirming_round_is_out_is_not_ran() {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let canary = canary(&runtime, "canary").await;
    let in_body = cluster.clone();
    let probe = runtime.clone();
    let seen: Arc<Mutex<Option<bool>>> = Arc::default();
    let seen_in_body = seen.clone();
    let result = runtime
        .run_with(
            "stop-vs-round",
            Options::new(TTL),
            async move {
                // Lets the renewal beside this body queue the lease.
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_body.lock().unwrap().freeze(2).unwrap();
                let step_seen = step_node_1_and_see_it(&in_body, &probe, &canary).await;
                *seen_in_body.lock().unwrap() = Some(step_seen);
                assert!(
                    lease().unwrap().validity() > TTL / 4,
                    "the body ends well within the validity"
                );
            },
            |_| true,
        )
        .await;
    cluster.lock().unwrap().resume(2).unwrap();
    let seen = *seen.lock().unwrap();
    println!("step seen: {seen:?}: {result:?}");
    assert_eq!(seen, Some(true), "the runtime saw the step");
    assert!(
        matches!(
            result,
            Err(Error::LeaseLost {
                reason: LostReason::ClockJumped,
                ..
            })
        ),
        "a step seen while the body ran, never confirmed by renewal, ended in {result:?}"
    );
}

/// Review (manual `Lease::extend` on a lease of `Runtime::lock`, which nothing renews): once the
/// runtime has seen a node's clock step, the lease is lost for it, and a manual extension, which
/// the two other nodes would confirm, does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_extension_after_a_step_does_not_bring_the_lease_back() {
    let mut cluster = steppable_cluster();
    let runtime = machine(&cluster, true);
    until_nodes_vote(&runtime, TTL).await;
    let mut held = runtime
        .lock("manual", TTL)
        .await
        .unwrap()
        .expect("the lock is free");
    cluster.step_clock(1, STEP_MS).unwrap();
    // A vote reads node 1's clock: the runtime sees the step.
    let probed = runtime.lock("manual-probe", TTL).await;
    println!("probe: {probed:?}");
    let started = Instant::now();
    while held.validity() > Duration::ZERO && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(held.validity(), Duration::ZERO, "the step lost the lease");
    let extended = held.extend().await;
    assert!(
        matches!(
            extended,
            Err(Error::LeaseLost {
                reason: LostReason::ClockJumped,
                ..
            })
        ),
        "a manual extension after the step: {extended:?}"
    );
}

/// Long enough for the runtime to see a step (a probe's vote, or its once-a-second check).
const TO_SEE_A_STEP: Duration = Duration::from_secs(3);

/// A lock of `Runtime::lock`, which nothing renews: the runtime loses it as soon as it sees a
/// step, which tells the test that the step was seen.
async fn canary(runtime: &Runtime, key: &str) -> Lease {
    runtime
        .lock(key, TTL)
        .await
        .unwrap()
        .expect("the canary lock is free")
}

/// Steps node 1's clock and waits until `runtime` has seen it (a probe's vote reads node 1's
/// clock; the canary is lost for it). Returns whether it was seen in time.
async fn step_node_1_and_see_it(
    cluster: &Mutex<Cluster>,
    runtime: &Runtime,
    canary: &Lease,
) -> bool {
    cluster.lock().unwrap().step_clock(1, STEP_MS).unwrap();
    let probe = runtime.clone();
    let probing = tokio::spawn(async move {
        let _ = probe.lock("probe", TTL).await;
    });
    let seen = eventually(TO_SEE_A_STEP, || canary.validity() == Duration::ZERO).await;
    probing.abort();
    seen
}

/// Liveness: a renewed lease, all three nodes up; node 1's clock steps while the body runs and
/// the runtime sees it. Renewal confirms the lease at once on nodes 0 and 2 (the validity moves
/// on); the body ends only after that, well within the validity. The call is `Ran`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_confirmed_by_renewal_leaves_the_call_ran() {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let canary = canary(&runtime, "canary").await;
    let in_body = cluster.clone();
    let in_body_runtime = runtime.clone();
    let confirmed: Arc<Mutex<Option<bool>>> = Arc::default();
    let confirmed_in_body = confirmed.clone();
    let result = runtime
        .run_with(
            "confirmed",
            Options::new(TTL),
            async move {
                let lease = lease().unwrap();
                // Before the first regular renewal (a third of the ttl), far enough from the
                // acquisition that a confirming extension visibly moves the validity.
                tokio::time::sleep(Duration::from_millis(600)).await;
                assert!(
                    step_node_1_and_see_it(&in_body, &in_body_runtime, &canary).await,
                    "the runtime saw node 1's step"
                );
                let before = Instant::now() + lease.validity();
                let moved = eventually(Duration::from_secs(2), || {
                    Instant::now() + lease.validity() > before + Duration::from_millis(300)
                })
                .await;
                // The extension that moved the validity confirmed the lease through the step in
                // the same change of its state: nothing is left to wait for.
                *confirmed_in_body.lock().unwrap() = Some(moved);
                assert!(lease.validity() > TTL / 2, "ends well within the validity");
            },
            |_| true,
        )
        .await;
    println!(
        "confirmed: {:?}, result: {result:?}",
        *confirmed.lock().unwrap()
    );
    assert_eq!(
        *confirmed.lock().unwrap(),
        Some(true),
        "renewal extended the lease after the step (nodes 0 and 2 answered)"
    );
    assert!(
        matches!(result, Ok(Outcome::Ran(()))),
        "a lease confirmed by renewal after the step was reported {result:?}"
    );
}

/// Liveness: a step seen (and handled) before a call begins is confirmed by the call's own
/// acquisition (its votes come from nodes 0 and 2; node 1 is young). With renewal off nothing
/// else would ever confirm it, so a wrong `steps_seen` shows as a spurious `ClockJumped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_taken_after_a_step_was_seen_runs_without_renewal() {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let canary = canary(&runtime, "canary").await;
    assert!(
        step_node_1_and_see_it(&cluster, &runtime, &canary).await,
        "the runtime saw node 1's step"
    );
    for renew in [false, true] {
        let key = format!("after-{renew}");
        let result = runtime
            .run_with(
                &key,
                Options::new(TTL).renew(renew),
                async { tokio::time::sleep(Duration::from_millis(200)).await },
                |_| true,
            )
            .await;
        println!("renew {renew}: {result:?}");
        assert!(
            matches!(result, Ok(Outcome::Ran(()))),
            "renew {renew}: a call taken after the step was seen ended in {result:?}"
        );
    }
}

/// One step is one step: the vote that sees node 1's clock jump makes it young and announces the
/// step, and the once-a-second check that then finds node 1 ahead of the other nodes does not
/// announce it again (each announcement makes every call that ends before renewal confirms it
/// fail, cautiously). A lease of `Runtime::lock` taken after the step was seen outlives two
/// checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_seen_by_a_vote_is_not_announced_again_by_the_check() {
    let cluster = Arc::new(Mutex::new(steppable_cluster()));
    let runtime = machine(&cluster.lock().unwrap(), true);
    until_nodes_vote(&runtime, TTL).await;
    let first = canary(&runtime, "canary").await;
    assert!(
        step_node_1_and_see_it(&cluster, &runtime, &first).await,
        "the runtime saw node 1's step"
    );
    let second = canary(&runtime, "second-canary").await;
    let announced_again = eventually(PAST_A_CHECK, || second.validity() == Duration::ZERO).await;
    assert!(
        !announced_again,
        "the check announced the step the vote had seen"
    );
}
