//! A free key runs the body and leaves nothing behind; a held key skips; keys are independent.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use cluster_singleton::{singleton, Outcome, Skip};
use common::{eventually, Nodes, PROMPTLY};

#[singleton(key = "report", ttl = "10s")]
async fn report(runs: &AtomicUsize) -> usize {
    runs.fetch_add(1, Ordering::SeqCst) + 1
}

#[singleton(key = "other-report", ttl = "10s")]
async fn other_report() -> &'static str {
    "other"
}

async fn free_key_runs_the_body_and_leaves_no_key(nodes: usize) {
    let nodes = Nodes::start(nodes);
    let runs = AtomicUsize::new(0);

    let outcome = nodes.scope(report(&runs)).await.expect("quorum is up");

    assert_eq!(outcome, Outcome::Ran(1));
    assert!(
        eventually(PROMPTLY, || nodes.absent("singleton:lock:report", &[])).await,
        "the release must delete the key on every node: {:?}",
        nodes.values("singleton:lock:report", &[])
    );
    // And the key is free again for the next call.
    assert_eq!(nodes.scope(report(&runs)).await.unwrap(), Outcome::Ran(2));
}

#[tokio::test]
async fn free_key_runs_on_one_node() {
    free_key_runs_the_body_and_leaves_no_key(1).await;
}

#[tokio::test]
async fn free_key_runs_on_three_nodes() {
    free_key_runs_the_body_and_leaves_no_key(3).await;
}

#[tokio::test]
async fn free_key_runs_on_five_nodes() {
    free_key_runs_the_body_and_leaves_no_key(5).await;
}

#[tokio::test]
async fn held_key_skips_without_running_the_body() {
    let nodes = Nodes::start(3);
    nodes.set_everywhere("singleton:lock:report", "someone-else");
    let runs = AtomicUsize::new(0);

    let outcome = nodes.scope(report(&runs)).await.expect("quorum is up");

    assert_eq!(outcome, Outcome::Skipped(Skip::Busy));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a skipped call must not run its body"
    );
    assert_eq!(
        nodes.values("singleton:lock:report", &[]),
        vec![Some("someone-else".to_owned()); 3],
        "skipping must not touch the holder's key"
    );
}

#[tokio::test]
async fn key_held_on_a_minority_still_runs() {
    let nodes = Nodes::start(3);
    let mut node0 = nodes.cluster.connection(0).unwrap();
    let _: () = redis::cmd("SET")
        .arg("singleton:lock:report")
        .arg("stale")
        .query(&mut node0)
        .unwrap();
    let runs = AtomicUsize::new(0);

    let outcome = nodes.scope(report(&runs)).await.expect("quorum is up");

    assert_eq!(outcome, Outcome::Ran(1));
    assert_eq!(
        nodes.get(0, "singleton:lock:report").as_deref(),
        Some("stale"),
        "not ours, not deleted"
    );
}

#[tokio::test]
async fn the_redis_key_is_the_prefix_then_lock_then_the_key() {
    let nodes = Nodes::start(1);
    let runtime = common::fresh_nodes(&nodes.cluster)
        .key_prefix("app1:")
        .build()
        .unwrap();

    let lease = runtime
        .lock("report", std::time::Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the key is free");

    assert_eq!(lease.key(), "app1:lock:report");
    assert_eq!(
        nodes.get(0, "app1:lock:report").as_deref(),
        Some(lease.token())
    );
    let (random, holder) = lease
        .token()
        .split_once(' ')
        .expect("random part, then holder");
    assert_eq!(random.len(), 32, "128 bits in hex");
    assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{random}");
    assert_eq!(
        holder,
        runtime.holder_id(),
        "the default: host and process id"
    );
    assert!(
        holder.ends_with(&format!(":{}", std::process::id())),
        "{holder}"
    );
    lease.release().await.unwrap();
    assert_eq!(nodes.get(0, "app1:lock:report"), None);
}

#[tokio::test]
async fn the_default_prefix_is_singleton() {
    let nodes = Nodes::start(1);
    let lease = nodes
        .runtime
        .lock("report", std::time::Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.key(), "singleton:lock:report");
    assert_eq!(
        nodes.get(0, "singleton:lock:report").as_deref(),
        Some(lease.token())
    );
}

#[tokio::test]
async fn different_keys_do_not_block_each_other() {
    let nodes = Nodes::start(3);
    let runs = AtomicUsize::new(0);
    nodes
        .scope(async {
            let held = cluster_singleton::runtime::Runtime::current()
                .unwrap()
                .lock("report", std::time::Duration::from_secs(10))
                .await
                .unwrap()
                .expect("free");
            assert_eq!(report(&runs).await.unwrap(), Outcome::Skipped(Skip::Busy));
            assert_eq!(other_report().await.unwrap(), Outcome::Ran("other"));
            held.release().await.unwrap();
        })
        .await;
}
