//! A body that panics and a call that is dropped release the lock at once, not after the ttl,
//! on a current-thread runtime (whose connections the crate's own thread drives) and on a
//! multi-threaded one (which drives them itself), and when that runtime shuts down.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::singleton;
use common::{block_on, eventually, program_runtime, Nodes, PROMPTLY};
use futures_util::FutureExt;

const KEY: &str = "singleton:lock:fragile";

#[singleton(key = "fragile", ttl = "60s")]
async fn panics_midway(nodes: &Nodes) {
    let holding = nodes
        .values(KEY, &[])
        .iter()
        .filter(|value| value.is_some())
        .count();
    assert!(holding >= 2, "the body runs under the lock");
    panic!("the job failed");
}

#[singleton(key = "fragile", ttl = "60s")]
async fn never_finishes(entered: tokio::sync::oneshot::Sender<()>) {
    let _ = entered.send(());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn a_panicking_body_releases_the_lock() {
    let nodes = Nodes::start(3);

    let result = nodes
        .scope(std::panic::AssertUnwindSafe(panics_midway(&nodes)).catch_unwind())
        .await;

    assert!(result.is_err(), "the panic reaches the caller");
    assert!(
        eventually(PROMPTLY, || nodes.absent(KEY, &[])).await,
        "the key must be gone within a second, not after its 60 s ttl: {:?}",
        nodes.values(KEY, &[])
    );
}

#[tokio::test]
async fn a_panic_inside_a_spawned_task_releases_the_lock() {
    let nodes = Nodes::start(3);

    let task = tokio::spawn(nodes.runtime.scope(panics_after_lock()));

    assert!(task.await.unwrap_err().is_panic());
    assert!(eventually(PROMPTLY, || nodes.absent(KEY, &[])).await);
}

#[singleton(key = "fragile", ttl = "60s")]
async fn panics_after_lock() {
    panic!("the job failed");
}

#[tokio::test]
async fn a_dropped_call_releases_the_lock() {
    a_dropped_call_releases_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_releases_the_lock_on_a_multi_threaded_runtime() {
    a_dropped_call_releases_it().await;
}

async fn a_dropped_call_releases_it() {
    let nodes = Nodes::start(3);
    let (entered, body_started) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(nodes.runtime.scope(never_finishes(entered)));
    body_started.await.expect("the body started under the lock");
    assert!(!nodes.absent(KEY, &[]), "held while the body runs");

    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    assert!(
        eventually(PROMPTLY, || nodes.absent(KEY, &[])).await,
        "the key must be gone within a second, not after its 60 s ttl: {:?}",
        nodes.values(KEY, &[])
    );
    let next = nodes
        .runtime
        .lock("fragile", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(next.is_some(), "the next caller gets the lock");
}

#[tokio::test]
async fn a_call_dropped_while_acquiring_leaves_no_key() {
    dropped_while_acquiring().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_acquiring_leaves_no_key_on_a_multi_threaded_runtime() {
    dropped_while_acquiring().await;
}

async fn dropped_while_acquiring() {
    let nodes = Nodes::start(3);
    for _ in 0..20 {
        let (entered, _started) = tokio::sync::oneshot::channel();
        // Polled once, which starts taking the lock, then dropped before any node can answer.
        let call = nodes.runtime.scope(never_finishes(entered));
        assert!(call.now_or_never().is_none());
    }
    // The dropped attempts finish on the crate's own thread, some after this point; whatever
    // they took must be released within a second, not held for the 60 s ttl.
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let attempt = nodes
            .runtime
            .lock("fragile", Duration::from_secs(1))
            .await
            .unwrap();
        if let Some(lease) = attempt {
            lease.release().await.unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still held: {:?}",
            nodes.values(KEY, &[])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(eventually(PROMPTLY, || nodes.absent(KEY, &[])).await);
}

#[test]
fn a_runtime_shutting_down_with_a_body_running_releases_the_lock() {
    let nodes = Nodes::start(3);
    let program = program_runtime();
    program.block_on(async {
        let (entered, body_started) = tokio::sync::oneshot::channel();
        tokio::spawn(nodes.runtime.scope(never_finishes(entered)));
        body_started.await.expect("the body started under the lock");
    });
    assert!(!nodes.absent(KEY, &[]), "held while the body runs");

    // The shutdown drops the task that holds the lease, and the connection tasks it drove.
    drop(program);

    assert!(
        block_on(eventually(PROMPTLY, || nodes.absent(KEY, &[]))),
        "the key must be gone within a second, not after its 60 s ttl: {:?}",
        nodes.values(KEY, &[])
    );
}
