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
    let marker = format!("singleton:report:done:{index}");
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
        eventually(PROMPTLY, || nodes.absent("singleton:report", &[])).await,
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

    assert!(eventually(PROMPTLY, || nodes.absent("singleton:report", &[])).await);

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
    assert!(eventually(PROMPTLY, || nodes.absent("singleton:report", &[])).await);

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
