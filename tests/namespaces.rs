//! The keys the crate keeps beside a lock (done markers, fencing counters) live where no lock key
//! can reach them: a user's key, however it is spelled, never collides with them.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_singleton::runtime::Options;
use cluster_singleton::Outcome;
use common::Nodes;

const TTL: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

/// Every Redis key on node 0, by name.
fn keys(nodes: &Nodes) -> Vec<String> {
    let mut connection = nodes.cluster.connection(0).unwrap();
    redis::cmd("KEYS").arg("*").query(&mut connection).unwrap()
}

/// A lock whose key spells another job's done marker does not make that job skip its period.
#[tokio::test]
async fn a_lock_named_like_a_done_marker_does_not_mark_a_period_done() {
    let nodes = Nodes::start(1);
    let hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let _squatter = nodes
        .runtime
        .lock(&format!("report:done:{hour}"), TTL)
        .await
        .unwrap()
        .expect("free");
    let outcome = nodes
        .runtime
        .run_with("report", Options::new(TTL).slot(HOUR), async { 1 }, |_| {
            true
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(1));
}

/// A lock whose key spells another job's fencing counter neither breaks that job's fencing nor
/// is overwritten by it (which would leave it without expiry, locked for good).
#[tokio::test]
async fn a_lock_named_like_a_fencing_counter_is_left_alone() {
    let nodes = Nodes::start(1);
    let squatter = nodes
        .runtime
        .lock("ledger:fence", TTL)
        .await
        .unwrap()
        .expect("free");
    let fenced = nodes
        .runtime
        .lock_with("ledger", &Options::new(TTL).fencing(true))
        .await
        .unwrap()
        .expect("free");
    assert!(fenced.fencing_token().is_some());
    assert_eq!(
        nodes.get(0, squatter.key()).as_deref(),
        Some(squatter.token()),
        "the other lock is untouched"
    );
    fenced.release().await.unwrap();
    squatter.release().await.unwrap();
}

/// After a job ran with a slot and fencing, none of the keys it left can be a lock key: locking
/// each name that a key stands for (the key without the prefix) takes a key of its own.
#[tokio::test]
async fn no_key_the_crate_writes_is_a_lock_key() {
    let nodes = Nodes::start(1);
    let options = Options::new(TTL).slot(HOUR).fencing(true);
    let outcome = nodes
        .runtime
        .run_with("nightly", options, async {}, |_| true)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(()));
    let written = keys(&nodes);
    assert_eq!(
        written.len(),
        2,
        "a done marker and a fencing counter: {written:?}"
    );
    for key in written {
        let name = key.strip_prefix(nodes.runtime.key_prefix()).unwrap();
        let lease = nodes
            .runtime
            .lock(name, TTL)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a lock on {name:?} is busy: it is {key:?}"));
        assert_ne!(lease.key(), key);
        lease.release().await.unwrap();
    }
}
