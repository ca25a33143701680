//! A renewal round extends many leases at once, and each is settled as soon as the nodes'
//! answers decide it: a lease of the batch left undecided (another client's token on one live
//! node, no answer from a frozen one) waits for the node timeout, and must not make the others,
//! each confirmed by a quorum of live nodes, wait with it past their deadlines.
//!
//! With a ttl of two node timeouts (500 ms), a neighbour that waited for the frozen node in every
//! round would be lost with a majority of nodes up and holding its token: its deadline comes
//! before two node timeouts have passed, and the undecided lease, tried again a tenth of a ttl
//! later, falls in the same batch as the neighbour's next round every time.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{OnLost, Options, Runtime};
use cluster_singleton::{lease, Error, LostReason, Outcome};
use cluster_singleton_testkit::Cluster;
use common::fresh_nodes;
use tokio::sync::oneshot;

/// Two default node timeouts (250 ms each).
fn ttl() -> Duration {
    Duration::from_millis(500)
}

/// How long each body runs once the fault is in place: several renewal periods, and less than
/// the second after which the frozen node's connection would be replaced (kept out of this).
const BODY_AFTER_FAULT: Duration = Duration::from_millis(1_100);

/// For the control through the frozen node's reconnections: several of its once-a-second checks.
const LONG_BODY_AFTER_FAULT: Duration = Duration::from_millis(4_000);

/// What a body returns: when (after the fault) it heard its lease lost, and why.
type Heard = Option<(LostReason, Duration)>;

/// A call on `name` whose body tells `entered` its key, then runs until `end`, noting a loss.
fn hold(
    runtime: &Runtime,
    name: &'static str,
    entered: oneshot::Sender<String>,
    fault_at: tokio::sync::watch::Receiver<Option<Instant>>,
    body_after_fault: Duration,
) -> tokio::task::JoinHandle<Result<Outcome<Heard>, Error>> {
    let runtime = runtime.clone();
    tokio::spawn(async move {
        runtime
            .run_with(
                name,
                Options::new(ttl()).on_lost(OnLost::Continue),
                async move {
                    let lease = lease().expect("a body has a lease");
                    let _ = entered.send(lease.key().to_owned());
                    let mut fault_at = fault_at;
                    let at = *fault_at
                        .wait_for(Option::is_some)
                        .await
                        .expect("the test lives")
                        .as_ref()
                        .unwrap();
                    let lost = lease.lost();
                    tokio::select! {
                        reason = lost => {
                            let heard = at.elapsed();
                            println!("{name}: lost ({reason:?}) {heard:?} after the fault");
                            tokio::time::sleep_until((at + body_after_fault).into()).await;
                            Some((reason, heard))
                        }
                        () = tokio::time::sleep_until((at + body_after_fault).into()) => None,
                    }
                },
                |_| true,
            )
            .await
    })
}

/// What a call returned.
type Called = Result<Outcome<Heard>, Error>;

/// Takes `neighbour` (and, with `overwritten`, a second lease in the same batch whose key is
/// then overwritten on node 0), freezes node 2, and returns the neighbour's outcome (and the
/// other's).
async fn neighbour_with_node_2_frozen(
    overwritten: bool,
    body_after_fault: Duration,
) -> (Called, Option<Called>) {
    let mut cluster = Cluster::start(3).expect("start redis-server nodes");
    // The default node timeout (250 ms), as a program has it. Not about clocks: without the
    // clock check, a loaded machine cannot refuse these votes for answering too slowly for a
    // 500 ms lock's allowance.
    let runtime = fresh_nodes(&cluster)
        .detect_clock_jumps(false)
        .build()
        .expect("valid configuration");
    let warm_up = runtime.lock("warm-up", ttl()).await.unwrap().unwrap();
    warm_up.release().await.unwrap();

    let (fault_tx, fault_rx) = tokio::sync::watch::channel(None);
    let (n_tx, n_rx) = oneshot::channel();
    let neighbour = hold(
        &runtime,
        "neighbour",
        n_tx,
        fault_rx.clone(),
        body_after_fault,
    );
    let other = overwritten.then(|| {
        let (o_tx, o_rx) = oneshot::channel();
        let call = hold(
            &runtime,
            "overwritten",
            o_tx,
            fault_rx.clone(),
            body_after_fault,
        );
        (call, o_rx)
    });
    let taken = Instant::now();
    n_rx.await.expect("the neighbour's body runs");
    let mut other_call = None;
    if let Some((call, o_rx)) = other {
        let key = o_rx.await.expect("the other body runs");
        // Another client's token on node 0 only: nodes 1 and 2 still hold ours.
        let mut node_0 = cluster.connection(0).unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("another-client")
            .arg("PX")
            .arg(10_000)
            .query(&mut node_0)
            .unwrap();
        other_call = Some(call);
    }
    cluster.freeze(2).unwrap();
    let since_taken = taken.elapsed();
    assert!(
        since_taken < ttl() / 3 - Duration::from_millis(60),
        "the fault came after the first renewal round ({since_taken:?}): rerun on an idle machine"
    );
    fault_tx.send_replace(Some(Instant::now()));

    let result = neighbour.await.unwrap();
    let other = match other_call {
        Some(call) => Some(call.await.unwrap()),
        None => None,
    };
    cluster.resume(2).unwrap();
    println!("neighbour (nodes 0 and 1 up and holding its token): {result:?}");
    println!("overwritten: {other:?}");
    (result, other)
}

/// Control: the neighbour alone, node 2 frozen: its rounds are decided by nodes 0 and 1 at once,
/// and it keeps its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_alone_keeps_its_lock_with_one_node_of_three_frozen() {
    let (result, _) = neighbour_with_node_2_frozen(false, BODY_AFTER_FAULT).await;
    assert!(
        matches!(result, Ok(Outcome::Ran(None))),
        "the lease alone was lost: {result:?}"
    );
}

/// The same lease, batched with one whose key another client overwrote on node 0, keeps its
/// lock: nodes 0 and 1 confirm it within a millisecond in every round, and it is settled then,
/// not when the frozen node's timeout ends the round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_lock_when_a_batch_neighbour_is_undecided() {
    let (result, other) = neighbour_with_node_2_frozen(true, BODY_AFTER_FAULT).await;
    assert!(
        matches!(result, Ok(Outcome::Ran(None))),
        "a majority of nodes was up and held its token, yet the lease was lost: {result:?}"
    );
    // The lease whose key another client holds on node 0 cannot be confirmed by a quorum (node
    // 1 holds its token, node 2 is frozen): it runs out, and its call says so.
    assert!(
        matches!(
            other,
            Some(Err(Error::LeaseLost {
                reason: LostReason::NoQuorum,
                ..
            }))
        ),
        "the overwritten lease: {other:?}"
    );
}

/// Control, longer: the lease alone through the frozen node's connection being replaced and
/// reopened (each renewal round may first wait up to a node timeout for a fresh connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_alone_keeps_its_lock_through_the_frozen_nodes_reconnections() {
    let (result, _) = neighbour_with_node_2_frozen(false, LONG_BODY_AFTER_FAULT).await;
    assert!(
        matches!(result, Ok(Outcome::Ran(None))),
        "the lease alone was lost: {result:?}"
    );
}
