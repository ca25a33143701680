//! `min_hold`: after a successful body the key stays until `min_hold` after it was taken, so a
//! machine whose cron fires a little late skips; after a failed body it goes at once.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::Options;
use cluster_singleton::{Outcome, Skip};
use common::{eventually, Nodes, PROMPTLY};

const TTL: Duration = Duration::from_secs(10);
const MIN_HOLD: Duration = Duration::from_millis(800);
const KEY: &str = "singleton:lock:nightly";

fn options() -> Options {
    Options::new(TTL).min_hold(MIN_HOLD)
}

#[tokio::test]
async fn a_late_caller_skips_until_min_hold_has_passed() {
    let nodes = Nodes::start(3);
    let started = Instant::now();

    let first = nodes
        .runtime
        .run_with(
            "nightly",
            options(),
            async { Ok::<_, ()>(1) },
            Result::is_ok,
        )
        .await
        .unwrap();
    assert_eq!(first, Outcome::Ran(Ok(1)));

    // The key is still there, set to expire by `started + MIN_HOLD`, not after a whole ttl: on a
    // quorum when the call returns, on the slowest node a moment later.
    let pttl = |node: usize| -> i64 {
        let mut connection = nodes.cluster.connection(node).unwrap();
        redis::cmd("PTTL").arg(KEY).query(&mut connection).unwrap()
    };
    let kept_for_min_hold = |pttl: i64| pttl > 0 && pttl <= MIN_HOLD.as_millis() as i64;
    assert!(
        eventually(PROMPTLY, || (0..3)
            .all(|node| kept_for_min_hold(pttl(node))))
        .await,
        "pttl {:?}",
        (0..3).map(pttl).collect::<Vec<_>>()
    );

    let late = nodes
        .runtime
        .run_with(
            "nightly",
            options(),
            async { Ok::<_, ()>(2) },
            Result::is_ok,
        )
        .await
        .unwrap();
    assert_eq!(late, Outcome::Skipped(Skip::Busy));
    assert!(
        started.elapsed() < MIN_HOLD,
        "the late call came in time to be tested"
    );

    assert!(eventually(MIN_HOLD + PROMPTLY, || nodes.absent(KEY, &[])).await);
    assert!(
        started.elapsed() >= MIN_HOLD - Duration::from_millis(50),
        "gone early: {:?}",
        started.elapsed()
    );
    let later = nodes
        .runtime
        .run_with(
            "nightly",
            options(),
            async { Ok::<_, ()>(3) },
            Result::is_ok,
        )
        .await
        .unwrap();
    assert_eq!(later, Outcome::Ran(Ok(3)));
}

#[tokio::test]
async fn a_failed_body_frees_the_key_at_once() {
    let nodes = Nodes::start(3);

    let failed = nodes
        .runtime
        .run_with(
            "nightly",
            options(),
            async { Err::<u8, _>("smtp down") },
            Result::is_ok,
        )
        .await
        .unwrap();

    assert_eq!(failed, Outcome::Ran(Err("smtp down")));
    assert!(
        eventually(PROMPTLY, || nodes.absent(KEY, &[])).await,
        "{:?}",
        nodes.values(KEY, &[])
    );
    let retry = nodes
        .runtime
        .run_with(
            "nightly",
            options(),
            async { Ok::<u8, &str>(1) },
            Result::is_ok,
        )
        .await
        .unwrap();
    assert_eq!(
        retry,
        Outcome::Ran(Ok(1)),
        "another machine may retry at once"
    );
}

#[tokio::test]
async fn a_body_longer_than_min_hold_frees_the_key_when_done() {
    let nodes = Nodes::start(1);

    let outcome = nodes
        .runtime
        // The sleep starts with the body, after the lock was taken: a sleep future made before
        // the call would end less than `min_hold` after the acquisition.
        .run_with(
            "nightly",
            options(),
            async { tokio::time::sleep(MIN_HOLD).await },
            |_| true,
        )
        .await
        .unwrap();

    assert_eq!(outcome, Outcome::Ran(()));
    assert!(
        nodes.absent(KEY, &[]),
        "min_hold already passed: deleted, not kept"
    );
}

#[tokio::test]
async fn min_hold_longer_than_the_ttl_is_refused() {
    let nodes = Nodes::start(1);
    let err = nodes
        .runtime
        .run_with(
            "nightly",
            Options::new(MIN_HOLD).min_hold(TTL),
            async {},
            |_| true,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`min_hold` (10s) must not exceed the ttl (800ms)"),
        "{err}"
    );
}

#[tokio::test]
async fn min_hold_holds_with_a_minority_down() {
    let mut nodes = Nodes::start(3);
    nodes.cluster.kill(2).unwrap();
    let started = Instant::now();

    let first = nodes
        .runtime
        .run_with("nightly", options(), async {}, |_| true)
        .await
        .unwrap();
    let late = nodes
        .runtime
        .run_with("nightly", options(), async {}, |_| true)
        .await
        .unwrap();

    assert_eq!(
        (first, late),
        (Outcome::Ran(()), Outcome::Skipped(Skip::Busy))
    );
    assert!(
        started.elapsed() < MIN_HOLD,
        "the late call came in time to be tested"
    );
    assert!(eventually(MIN_HOLD + PROMPTLY, || nodes.absent(KEY, &[2])).await);
}
