//! Review of dea10e3, 81f3932, 0df6809, b3500b2, 96cd88a and 4ef3730: interleavings of renewal,
//! `max_hold`, clock steps, deadlines and releases, against real redis-server nodes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{lease, Error, LostReason};
use cluster_singleton_testkit::Cluster;
use common::{eventually, until_nodes_vote, NODE_TIMEOUT};

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
