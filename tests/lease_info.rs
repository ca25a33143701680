//! The lease, seen from inside the body.

mod common;

use std::time::Duration;

use cluster_singleton::{lease, singleton, Outcome};
use common::Nodes;

#[singleton(key = "inspect", ttl = "10s")]
async fn inspect(nodes: &Nodes) -> (String, String, Duration, bool) {
    let lease = lease().expect("inside a #[singleton] body");
    assert!(
        nodes.holding(lease.key(), lease.token()) >= nodes.runtime.quorum(),
        "the token is the key's value on a quorum"
    );
    (
        lease.key().to_owned(),
        lease.token().to_owned(),
        lease.validity(),
        lease.is_held(),
    )
}

#[tokio::test]
async fn the_body_sees_its_lease() {
    let nodes = Nodes::start(3);
    let Outcome::Ran((key, token, validity, held)) = nodes.scope(inspect(&nodes)).await.unwrap()
    else {
        panic!("the key was free")
    };
    assert_eq!(key, "singleton:lock:inspect");
    let (random, holder) = token
        .split_once(' ')
        .expect("random part, then the holder id");
    assert_eq!(random.len(), 32);
    assert_eq!(holder, nodes.runtime.holder_id());
    assert!(
        validity > Duration::from_secs(9) && validity <= Duration::from_secs(10),
        "{validity:?}"
    );
    assert!(held);
}

#[tokio::test]
async fn each_run_has_a_token_of_its_own() {
    let nodes = Nodes::start(1);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let Outcome::Ran((_, token, _, _)) = nodes.scope(inspect(&nodes)).await.unwrap() else {
            panic!("the key was free")
        };
        tokens.push(token);
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3);
}

#[tokio::test]
async fn outside_a_body_there_is_no_lease() {
    assert!(lease().is_none());
    let nodes = Nodes::start(1);
    let held = nodes
        .runtime
        .lock("inspect", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        lease().is_none(),
        "a lease from `lock` is not a body's lease"
    );
    held.release().await.unwrap();
}
