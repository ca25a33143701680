//! Review of e6fca49 (`renews` set in `Renewer::add`, cleared in `settle`) and a061bab (`Claim`):
//! interleavings of clock steps, renewal rounds and the end of a call, against real redis-server
//! nodes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{lease, Error, LostReason};
use cluster_singleton_testkit::Cluster;
use common::{until_nodes_vote, NODE_TIMEOUT};

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
    let runtime = machine(&cluster.lock().unwrap());
    until_nodes_vote(&runtime, TTL).await;
    // Not renewed: the runtime's own check of steps loses it as soon as it sees one.
    let canary = runtime
        .lock("review4-canary", TTL)
        .await
        .unwrap()
        .expect("the canary lock is free");
    let in_body = cluster.clone();
    let probe = runtime.clone();
    let seen: Arc<Mutex<Option<Duration>>> = Arc::default();
    let seen_in_body = seen.clone();
    let result = runtime
        .run_with(
            "review4-stop-vs-round",
            Options::new(TTL),
            async move {
                // Lets the renewal beside this body queue the lease.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let started = Instant::now();
                {
                    let mut cluster = in_body.lock().unwrap();
                    cluster.freeze(2).unwrap();
                    cluster.step_clock(1, STEP_MS).unwrap();
                }
                // A vote reads node 1's clock (the runtime's once-a-second check would too).
                let probing =
                    tokio::spawn(async move { probe.lock("review4-probe", TTL).await.is_ok() });
                while canary.validity() > Duration::ZERO
                    && started.elapsed() < Duration::from_secs(3)
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                *seen_in_body.lock().unwrap() =
                    (canary.validity() == Duration::ZERO).then(|| started.elapsed());
                probing.abort();
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
    println!("step seen after {seen:?}: {result:?}");
    assert!(seen.is_some(), "the runtime saw the step");
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
    let runtime = machine(&cluster);
    until_nodes_vote(&runtime, TTL).await;
    let mut held = runtime
        .lock("review4-manual", TTL)
        .await
        .unwrap()
        .expect("the lock is free");
    cluster.step_clock(1, STEP_MS).unwrap();
    // A vote reads node 1's clock: the runtime sees the step.
    let probed = runtime.lock("review4-manual-probe", TTL).await;
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
