//! A renewal round settles each lease as soon as a node's answer decides it, so a lease can be
//! settled, queued again and taken by its next round while its first round still waits for a
//! slow node: what happens to it then (a release, its `max_hold`).
//!
//! The setting of every test here: three nodes, the default node timeout (250 ms), a ttl of
//! 600 ms (so a lease is due again a third of a ttl, 200 ms, after its round began, before the
//! node timeout ends a round that waits for a frozen node). Two calls take their locks together,
//! so that their first renewals fall in one round: `pinned`, whose key another client holds on
//! node 0, and `steady`. Node 2 is then frozen: `pinned` is left undecided in each of its rounds
//! (node 1 holds its token, node 0 another, node 2 gives no answer), so each of its rounds stays
//! out for the node timeout; `steady` is decided by nodes 0 and 1 at once, settled, queued again
//! and taken by its next round while the first round is still out.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{OnLost, Options, Runtime};
use cluster_singleton::{lease, Error, LostReason, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{calls_on, fresh_nodes, pttl};
use tokio::sync::{oneshot, watch};

fn ttl() -> Duration {
    Duration::from_millis(600)
}

/// What `steady`'s body saw: its deadline estimate's jumps (ms after the fault, and by how
/// much), the largest step back of the estimate, and a loss if it heard one.
#[derive(Debug, Default)]
struct Seen {
    jumps: Vec<(u128, i128)>,
    worst_step_back_ms: f64,
    lost: Option<(LostReason, u128)>,
}

struct Setup {
    cluster: Cluster,
    runtime: Runtime,
    taken: Instant,
    fault: watch::Sender<Option<Instant>>,
    steady_key: String,
}

async fn pinned_call(
    runtime: &Runtime,
    entered: oneshot::Sender<String>,
    mut fault: watch::Receiver<Option<Instant>>,
    pinned_for: Duration,
) -> tokio::task::JoinHandle<Result<Outcome<()>, Error>> {
    let runtime = runtime.clone();
    tokio::spawn(async move {
        runtime
            .run_with(
                "pinned",
                Options::new(ttl()).on_lost(OnLost::Continue),
                async move {
                    let lease = lease().unwrap();
                    let _ = entered.send(lease.key().to_owned());
                    let at = fault.wait_for(Option::is_some).await.unwrap().unwrap();
                    // Its rounds keep node 2's connection busy until just before the frozen
                    // node's connection would be replaced (about a second).
                    tokio::time::sleep_until((at + pinned_for).into()).await;
                },
                |_| true,
            )
            .await
    })
}

/// `steady`'s body: samples its lease's deadline (now + validity) every 2 ms from the fault on,
/// and ends `end_after` jumps of it (or at `until` after the fault).
fn steady_call(
    runtime: &Runtime,
    options: Options,
    entered: oneshot::Sender<(String, String)>,
    mut fault: watch::Receiver<Option<Instant>>,
    end_after_jumps: usize,
    until: Duration,
) -> tokio::task::JoinHandle<Result<Outcome<Seen>, Error>> {
    let runtime = runtime.clone();
    tokio::spawn(async move {
        runtime
            .run_with(
                "steady",
                options.on_lost(OnLost::Continue),
                async move {
                    let lease = lease().unwrap();
                    let _ = entered.send((lease.key().to_owned(), lease.token().to_owned()));
                    let at = fault.wait_for(Option::is_some).await.unwrap().unwrap();
                    let mut seen = Seen::default();
                    let mut last_estimate: Option<Instant> = None;
                    loop {
                        let before = Instant::now();
                        let validity = lease.validity();
                        if seen.lost.is_none() {
                            if let Some(reason) = lease.lost_reason() {
                                seen.lost = Some((reason, at.elapsed().as_millis()));
                                println!(
                                    "steady heard its loss ({reason:?}) {:?} after the fault; jumps so far {:?}",
                                    at.elapsed(),
                                    seen.jumps
                                );
                            }
                        }
                        if !validity.is_zero() {
                            let estimate = before + validity;
                            if let Some(last) = last_estimate {
                                if estimate > last + Duration::from_millis(20) {
                                    let by = (estimate - last).as_millis() as i128;
                                    seen.jumps.push((at.elapsed().as_millis(), by));
                                } else if estimate < last {
                                    let back = (last - estimate).as_secs_f64() * 1e3;
                                    if back > seen.worst_step_back_ms {
                                        seen.worst_step_back_ms = back;
                                    }
                                }
                            }
                            last_estimate = Some(estimate);
                        }
                        if seen.jumps.len() >= end_after_jumps || at.elapsed() >= until {
                            println!("steady's body ends: {seen:?}");
                            return seen;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                },
                |_| true,
            )
            .await
    })
}

/// Starts the cluster and both calls (`pinned` for 850 ms after the fault), puts the fault in
/// place; returns the setup, the calls, and `steady`'s token.
async fn start(
    steady_options: Options,
    end_after_jumps: usize,
    until: Duration,
) -> (
    Setup,
    tokio::task::JoinHandle<Result<Outcome<()>, Error>>,
    tokio::task::JoinHandle<Result<Outcome<Seen>, Error>>,
    String,
) {
    let mut cluster = Cluster::start(3).expect("start redis-server nodes");
    // Not about clocks: without the clock check, a loaded machine cannot refuse these votes for
    // answering too slowly for a 600 ms lock's allowance.
    let runtime = fresh_nodes(&cluster)
        .detect_clock_jumps(false)
        .build()
        .expect("valid configuration");
    let pinned_for = Duration::from_millis(850);
    let warm_up = runtime.lock("warm-up", ttl()).await.unwrap().unwrap();
    warm_up.release().await.unwrap();

    let (fault_tx, fault_rx) = watch::channel(None);
    let (p_tx, p_rx) = oneshot::channel();
    let (s_tx, s_rx) = oneshot::channel();
    let taken = Instant::now();
    let pinned = pinned_call(&runtime, p_tx, fault_rx.clone(), pinned_for).await;
    let steady = steady_call(
        &runtime,
        steady_options,
        s_tx,
        fault_rx.clone(),
        end_after_jumps,
        until,
    );
    let pinned_key = p_rx.await.expect("pinned's body runs");
    let (steady_key, steady_token) = s_rx.await.expect("steady's body runs");
    let mut node_0 = cluster.connection(0).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&pinned_key)
        .arg("another-client")
        .arg("PX")
        .arg(10_000)
        .query(&mut node_0)
        .unwrap();
    cluster.freeze(2).unwrap();
    let since = taken.elapsed();
    assert!(
        since < Duration::from_millis(140),
        "the fault came late ({since:?}), after or close to the first renewal round: rerun on an \
         idle machine"
    );
    fault_tx.send_replace(Some(Instant::now()));
    println!("fault in place {since:?} after the calls began");
    (
        Setup {
            cluster,
            runtime,
            taken,
            fault: fault_tx,
            steady_key,
        },
        pinned,
        steady,
        steady_token,
    )
}

/// Resumes node 2 and waits until the scripts buffered for it have run (its script count stops
/// moving), then returns `key`'s value and PTTL there.
async fn resume_and_drain(setup: &mut Setup, key: &str) -> (Option<String>, i64, u64, u64) {
    setup.cluster.resume(2).unwrap();
    // The first count is read on a fresh connection, after Redis read what was buffered on the
    // runtime's connections (all in before the resume).
    let first = calls_on(&setup.cluster, 2, "evalsha");
    let mut last = first;
    let mut stable_since = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(3);
    while stable_since.elapsed() < Duration::from_millis(100) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = calls_on(&setup.cluster, 2, "evalsha");
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let mut node_2 = setup.cluster.connection(2).unwrap();
    let value: Option<String> = redis::cmd("GET").arg(key).query(&mut node_2).unwrap();
    (value, pttl(&setup.cluster, 2, key), first, last)
}

/// `steady` is settled in the first round, taken by a second round while the first still waits
/// for the frozen node, and released right after that second round's answers: every extension
/// of it is queued on node 2's connection before its release, so once node 2 runs what was
/// buffered, the key is absent there (an extension run after the release would put it back for
/// a ttl). Its deadline never moves back, it is never lost, and the call ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_requeued_while_its_first_round_is_out_is_released_for_good() {
    let (mut setup, pinned, steady, steady_token) =
        start(Options::new(ttl()), 2, Duration::from_millis(800)).await;
    let steady_result = steady.await.unwrap();
    let released_at = setup.fault.borrow().unwrap().elapsed();
    println!("steady returned {released_at:?} after the fault: {steady_result:?}");
    let seen = match steady_result {
        Ok(Outcome::Ran(seen)) => seen,
        other => panic!("steady did not run to the end under its lease: {other:?}"),
    };
    assert!(seen.lost.is_none(), "steady heard a loss: {seen:?}");
    assert!(
        seen.jumps.len() >= 2,
        "steady was not extended twice within 800 ms: {seen:?}"
    );
    assert!(
        seen.worst_step_back_ms < 3.0,
        "steady's deadline moved back: {seen:?}"
    );
    for node in 0..2 {
        let mut connection = setup.cluster.connection(node).unwrap();
        let value: Option<String> = redis::cmd("GET")
            .arg(&setup.steady_key)
            .query(&mut connection)
            .unwrap();
        assert_eq!(value, None, "steady's key on node {node} after its release");
    }
    let pinned_result = pinned.await.unwrap();
    println!("pinned: {pinned_result:?}");
    assert!(
        matches!(
            pinned_result,
            Err(Error::LeaseLost {
                reason: LostReason::NoQuorum,
                ..
            })
        ),
        "pinned: {pinned_result:?}"
    );
    let key = setup.steady_key.clone();
    let (value, left, first, last) = resume_and_drain(&mut setup, &key).await;
    println!(
        "node 2 after the resume: scripts run {first} then {last}; steady's key {value:?} \
         (token {steady_token}), pttl {left}; taken {:?} ago",
        setup.taken.elapsed()
    );
    assert_eq!(
        value, None,
        "an extension of steady ran on node 2 after its release and put the key back"
    );
    drop(setup.runtime);
}

/// `steady` with `max_hold` 700 ms: its first round (at about 200 ms, with `pinned`, which waits
/// for the frozen node) is its last, cut to end at `max_hold`; decided by nodes 0 and 1 at once,
/// it leaves renewal's care while the round is still out. The lease is lost for `max_hold`, at
/// its deadline (no later than `max_hold` after it was taken, plus the deadline timer's
/// slack), and the call says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_extension_settled_in_a_partly_settled_round_ends_at_max_hold() {
    let max_hold = Duration::from_millis(700);
    let (setup, pinned, steady, _) = start(
        Options::new(ttl()).max_hold(max_hold),
        usize::MAX,
        Duration::from_millis(800),
    )
    .await;
    let steady_result = steady.await.unwrap();
    let fault_after_taken = setup.fault.borrow().unwrap() - setup.taken;
    println!("steady: {steady_result:?}; fault {fault_after_taken:?} after taking");
    match &steady_result {
        Err(Error::LeaseLost {
            reason: LostReason::MaxHold,
            body_finished: true,
            ..
        }) => {}
        other => panic!("steady: {other:?}"),
    }
    let _ = pinned.await.unwrap();
    let mut setup = setup;
    setup.cluster.resume(2).unwrap();
}
