//! A release never deletes a key whose value is not ours.

mod common;

use std::time::Duration;

use cluster_singleton::{singleton, Outcome};
use common::{eventually, Nodes, PROMPTLY};

const KEY: &str = "singleton:lock:handover";

#[singleton(key = "handover", ttl = "10s")]
async fn job_whose_lock_is_taken_over(nodes: &Nodes) {
    // As if our ttl had run out and another holder had taken the key on every node.
    nodes.set_everywhere(KEY, "the-next-holder");
}

#[tokio::test]
async fn a_key_changed_during_the_body_is_not_deleted() {
    let nodes = Nodes::start(3);

    let outcome = nodes
        .scope(job_whose_lock_is_taken_over(&nodes))
        .await
        .unwrap();

    assert_eq!(outcome, Outcome::Ran(()));
    // The call returns once a quorum answered the release; look once every node has run it.
    assert!(eventually(PROMPTLY, || (0..3).all(|i| nodes.scripts_run(i) >= 1)).await);
    assert_eq!(
        nodes.values(KEY, &[]),
        vec![Some("the-next-holder".to_owned()); 3]
    );
}

#[tokio::test]
async fn a_lease_released_after_a_takeover_leaves_the_new_holder() {
    let nodes = Nodes::start(1);
    let lease = nodes
        .runtime
        .lock("handover", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    nodes.set_everywhere(KEY, "the-next-holder");

    lease.release().await.expect("the node answered");

    assert_eq!(nodes.get(0, KEY).as_deref(), Some("the-next-holder"));
}
