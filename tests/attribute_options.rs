//! The attribute's options, end to end: what `#[singleton(...)]` writes reaches the runtime.

mod common;

use std::time::Duration;

use cluster_singleton::{lease, singleton, Outcome, Skip};
use common::{eventually, Nodes, PROMPTLY};

#[singleton(key = "invoice:{customer_id}", ttl = "10s")]
async fn invoice(customer_id: u64, nodes: &Nodes) -> String {
    let key = lease().unwrap().key().to_owned();
    let token = lease().unwrap().token().to_owned();
    assert!(
        nodes.holding(&key, &token) >= 2,
        "held on a quorum while the body runs"
    );
    key
}

#[singleton(key = "minute-sync", ttl = "10s", min_hold = "1s")]
async fn minute_sync() -> Result<(), String> {
    Ok(())
}

#[singleton(key = "daily-report", ttl = "10s", slot = "1d")]
async fn daily_report() {}

#[singleton(key = "ledger", ttl = "10s", fencing = true)]
async fn ledger() -> Option<u64> {
    lease().and_then(|lease| lease.fencing_token())
}

#[singleton(
    key = "short-lived",
    ttl = "300ms",
    renew = false,
    on_lost = "continue"
)]
async fn outlives_its_ttl() -> &'static str {
    tokio::time::sleep(Duration::from_millis(600)).await;
    "finished"
}

#[tokio::test]
async fn placeholders_make_one_lock_per_parameter_value() {
    let nodes = Nodes::start(3);
    let first = nodes.scope(invoice(42, &nodes)).await.unwrap();
    let second = nodes.scope(invoice(7, &nodes)).await.unwrap();
    assert_eq!(first, Outcome::Ran("singleton:lock:invoice:42".to_owned()));
    assert_eq!(second, Outcome::Ran("singleton:lock:invoice:7".to_owned()));

    let held = nodes
        .runtime
        .lock("invoice:42", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        nodes.scope(invoice(42, &nodes)).await.unwrap(),
        Outcome::Skipped(Skip::Busy)
    );
    assert!(
        nodes.scope(invoice(43, &nodes)).await.unwrap().ran(),
        "another customer runs"
    );
    held.release().await.unwrap();
}

#[tokio::test]
async fn min_hold_slot_and_fencing_reach_the_runtime() {
    let nodes = Nodes::start(3);

    assert_eq!(
        nodes.scope(minute_sync()).await.unwrap(),
        Outcome::Ran(Ok(()))
    );
    assert_eq!(
        nodes.scope(minute_sync()).await.unwrap(),
        Outcome::Skipped(Skip::Busy),
        "min_hold"
    );
    assert!(
        eventually(PROMPTLY * 2, || nodes
            .absent("singleton:lock:minute-sync", &[]))
        .await
    );

    assert_eq!(nodes.scope(daily_report()).await.unwrap(), Outcome::Ran(()));
    let again = nodes.scope(daily_report()).await.unwrap();
    assert!(
        matches!(again, Outcome::Skipped(Skip::AlreadyDone { .. })),
        "slot: {again:?}"
    );

    let Outcome::Ran(Some(first)) = nodes.scope(ledger()).await.unwrap() else {
        panic!("no token")
    };
    let Outcome::Ran(Some(second)) = nodes.scope(ledger()).await.unwrap() else {
        panic!("no token")
    };
    assert!(second > first, "fencing: {second} after {first}");
}

#[tokio::test]
async fn renew_false_and_on_lost_continue_reach_the_runtime() {
    let nodes = Nodes::start(1);
    let err = nodes.scope(outlives_its_ttl()).await.unwrap_err();
    assert!(
        matches!(
            err,
            cluster_singleton::Error::LeaseLost {
                body_finished: true,
                ..
            }
        ),
        "{err}"
    );
}
