//! Behaviour that does not depend on Redis faults, run against both backends: real Redis nodes,
//! and the in-process `memory://` store that users can unit-test their jobs with.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{lease, singleton, Error, Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use futures_util::FutureExt;

const TTL: Duration = Duration::from_millis(600);

/// Two "machines" (runtimes with connections of their own) on one backend; the cluster, if any,
/// lives as long as they are used.
struct Machines {
    _cluster: Option<Cluster>,
    one: Runtime,
    two: Runtime,
}

/// Waits until no node holds `key`.
async fn free_on_every_node(runtime: &Runtime, key: &str) {
    let deadline = std::time::Instant::now() + common::PROMPTLY;
    loop {
        let state = runtime.inspect(key).await.expect("inspect");
        if state.copies.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never freed: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every node holds `key`: a lock is taken once a quorum granted it, and the last
/// node's copy may still be on its way; a call that found that node free would have a split vote
/// to settle (and report), not a plain "busy".
async fn held_on_every_node(runtime: &Runtime, key: &str) {
    let deadline = std::time::Instant::now() + common::PROMPTLY;
    loop {
        let state = runtime.inspect(key).await.expect("inspect");
        if state
            .holder()
            .is_some_and(|holder| holder.nodes == state.nodes)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never held on every node: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn redis() -> Machines {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let (one, two) = (common::runtime_for(&cluster), common::runtime_for(&cluster));
    Machines {
        _cluster: Some(cluster),
        one,
        two,
    }
}

/// Each test gets a store of its own, named after it: stores are shared process-wide by URL.
fn memory(test: &str) -> Machines {
    let url = format!("memory://{test}");
    let build = || {
        Config::new([url.as_str()])
            .build()
            .expect("a memory:// runtime")
    };
    Machines {
        _cluster: None,
        one: build(),
        two: build(),
    }
}

/// Declares `scenario` as two tests, one per backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$scenario(super::redis()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$scenario(super::memory(stringify!($scenario))).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_free_key_runs_and_a_held_key_skips,
    fifty_concurrent_calls_run_once,
    a_panicking_body_frees_the_key,
    renewal_keeps_a_long_body_exclusive,
    min_hold_makes_a_late_caller_skip,
    a_slot_runs_once_per_period,
    fencing_tokens_increase,
    the_body_sees_its_lease,
);

#[singleton(key = "report", ttl = "10s")]
async fn report(runs: &AtomicUsize) -> usize {
    runs.fetch_add(1, Ordering::SeqCst) + 1
}

async fn a_free_key_runs_and_a_held_key_skips(machines: Machines) {
    let runs = AtomicUsize::new(0);
    assert_eq!(
        machines.one.scope(report(&runs)).await.unwrap(),
        Outcome::Ran(1)
    );
    // The release returns once a quorum deleted the key; until the last node has too, a lock
    // taken now is refused there and stands on the others only. Another caller would then win
    // that node and count a split vote (the busy nodes could be two rivals), not a plain busy.
    free_on_every_node(&machines.one, "report").await;
    // Held longer than the wait for its last copy below can take on a loaded machine.
    let held = machines
        .two
        .lock("report", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("free again");
    held_on_every_node(&machines.one, "report").await;
    assert_eq!(
        machines.one.scope(report(&runs)).await.unwrap(),
        Outcome::Skipped(Skip::Busy)
    );
    held.release().await.unwrap();
    assert_eq!(
        machines.one.scope(report(&runs)).await.unwrap(),
        Outcome::Ran(2)
    );
}

async fn fifty_concurrent_calls_run_once(machines: Machines) {
    let inside = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..50)
        .map(|call| {
            let machine = if call % 2 == 0 {
                machines.one.clone()
            } else {
                machines.two.clone()
            };
            let inside = inside.clone();
            tokio::spawn(async move {
                machine
                    .run("slow", Duration::from_secs(10), async move {
                        inside.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    })
                    .await
            })
        })
        .collect();
    let mut ran = 0;
    for call in calls {
        ran += usize::from(call.await.unwrap().unwrap().ran());
    }
    assert_eq!((ran, inside.load(Ordering::SeqCst)), (1, 1));
}

async fn a_panicking_body_frees_the_key(machines: Machines) {
    let panicked =
        std::panic::AssertUnwindSafe(machines.one.run("fragile", Duration::from_secs(60), async {
            panic!("the job failed")
        }))
        .catch_unwind()
        .await;
    assert!(panicked.is_err());
    let mut attempts = 0;
    while machines.two.lock("fragile", TTL).await.unwrap().is_none() {
        attempts += 1;
        assert!(attempts < 100, "still held long after the panic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn renewal_keeps_a_long_body_exclusive(machines: Machines) {
    let body = async {
        for _ in 0..6 {
            tokio::time::sleep(TTL / 2).await;
            assert!(
                machines.two.lock("long", TTL).await.unwrap().is_none(),
                "taken while held"
            );
        }
    };
    assert_eq!(
        machines.one.run("long", TTL, body).await.unwrap(),
        Outcome::Ran(())
    );
}

async fn min_hold_makes_a_late_caller_skip(machines: Machines) {
    let options = Options::new(Duration::from_secs(10)).min_hold(Duration::from_secs(5));
    let first = machines
        .one
        .run_with("minute", options, async {}, |_| true)
        .await
        .unwrap();
    let late = machines
        .two
        .run_with("minute", options, async {}, |_| true)
        .await
        .unwrap();
    assert_eq!(
        (first, late),
        (Outcome::Ran(()), Outcome::Skipped(Skip::Busy))
    );
}

async fn a_slot_runs_once_per_period(machines: Machines) {
    let options = Options::new(TTL).slot(Duration::from_secs(3600));
    let failed = machines
        .one
        .run_with(
            "hourly",
            options,
            async { Err::<(), _>("down") },
            Result::is_ok,
        )
        .await
        .unwrap();
    let first = machines
        .two
        .run_with(
            "hourly",
            options,
            async { Ok::<(), &str>(()) },
            Result::is_ok,
        )
        .await
        .unwrap();
    let second = machines
        .one
        .run_with(
            "hourly",
            options,
            async { Ok::<(), &str>(()) },
            Result::is_ok,
        )
        .await
        .unwrap();
    assert_eq!(failed, Outcome::Ran(Err("down")));
    assert_eq!(first, Outcome::Ran(Ok(())));
    assert!(
        matches!(second, Outcome::Skipped(Skip::AlreadyDone { .. })),
        "{second:?}"
    );
}

async fn fencing_tokens_increase(machines: Machines) {
    let options = Options::new(TTL).fencing(true);
    let mut last = 0;
    for round in 0..6 {
        let machine = if round % 2 == 0 {
            &machines.one
        } else {
            &machines.two
        };
        let lease = machine
            .lock_with("ledger", &options)
            .await
            .unwrap()
            .expect("free");
        let token = lease.fencing_token().expect("fencing is on");
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        lease.release().await.unwrap();
    }
}

async fn the_body_sees_its_lease(machines: Machines) {
    let seen = machines
        .one
        .run("visible", TTL, async {
            lease().map(|lease| (lease.key().to_owned(), lease.is_held()))
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        Outcome::Ran(Some(("singleton:lock:visible".to_owned(), true)))
    );
}

#[test]
fn memory_nodes_cannot_be_mixed_with_redis_nodes() {
    let err = Config::new(["memory://", "redis://127.0.0.1:6379"])
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("cannot be mixed"), "{err}");
}
