//! Durations given as the path of a `const Duration` reach the runtime: the ttl a const names is
//! the key's time to live on the nodes, and `min_hold` from a const keeps the key that long.

mod common;

use std::time::Duration;

use cluster_singleton::{lease, singleton, Outcome, Skip};
use common::{eventually, Nodes, PROMPTLY};

/// The fleet's lock time, in one place. Odd on purpose: no default or literal in this file has
/// it, so a PTTL near it can only come from here.
const LOCK_TTL: Duration = Duration::from_secs(37);

mod settings {
    use std::time::Duration;

    pub const MIN_HOLD: Duration = Duration::from_secs(23);
}

/// How far below its ttl a key's PTTL may be when the test reads it: the time the test takes,
/// on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);

/// The PTTL, in milliseconds, of `key` on every node.
fn pttls(nodes: &Nodes, key: &str) -> Vec<i64> {
    (0..nodes.cluster.len())
        .map(|i| {
            let mut connection = nodes.cluster.connection(i).expect("connect to node");
            redis::cmd("PTTL")
                .arg(key)
                .query(&mut connection)
                .expect("PTTL")
        })
        .collect()
}

/// On how many nodes the PTTL is within `SLACK` below `expected` (and not above it).
fn near(pttls: &[i64], expected: Duration) -> usize {
    let expected = i64::try_from(expected.as_millis()).expect("a short duration");
    let slack = i64::try_from(SLACK.as_millis()).expect("a short duration");
    pttls
        .iter()
        .filter(|&&pttl| pttl <= expected && pttl > expected - slack)
        .count()
}

/// The lease's key and the PTTLs of that key on the nodes, read while the body holds it.
/// `renew = false`, so nothing but the ttl sets the PTTL.
#[singleton(key = "const-ttl", ttl = LOCK_TTL, renew = false)]
async fn const_ttl(nodes: &Nodes) -> (String, Vec<i64>, Duration) {
    let lease = lease().expect("a lease in the body");
    let key = lease.key().to_owned();
    let pttls = pttls(nodes, &key);
    (key, pttls, lease.validity())
}

#[singleton(
    key = "const-min-hold",
    ttl = LOCK_TTL,
    min_hold = settings::MIN_HOLD
)]
async fn const_min_hold() -> Result<(), String> {
    Ok(())
}

struct Report;

impl Report {
    const TTL: Duration = Duration::from_secs(41);

    /// Through `Self`, which the expansion checks in an inline `const` block rather than a
    /// `const` item: the value must arrive all the same.
    #[singleton(key = "const-self-ttl", ttl = Self::TTL, renew = false)]
    async fn run(&self, nodes: &Nodes) -> Vec<i64> {
        pttls(nodes, lease().expect("a lease in the body").key())
    }
}

#[tokio::test]
async fn a_const_ttl_is_the_keys_time_to_live() {
    let nodes = Nodes::start(3);
    let Outcome::Ran((key, pttls, validity)) = nodes.scope(const_ttl(&nodes)).await.unwrap() else {
        panic!("the lock was free")
    };
    assert_eq!(key, "singleton:lock:const-ttl");
    // A quorum granted the lock; the last node's copy may still be on its way.
    assert!(
        near(&pttls, LOCK_TTL) >= 2,
        "PTTLs {pttls:?}, ttl {LOCK_TTL:?}"
    );
    assert!(
        validity <= LOCK_TTL && validity > LOCK_TTL - SLACK,
        "validity {validity:?}, ttl {LOCK_TTL:?}"
    );

    let Outcome::Ran(pttls) = nodes.scope(Report.run(&nodes)).await.unwrap() else {
        panic!("the lock was free")
    };
    assert!(
        near(&pttls, Report::TTL) >= 2,
        "PTTLs {pttls:?}, ttl {:?}",
        Report::TTL
    );
}

#[tokio::test]
async fn a_const_min_hold_keeps_the_key_that_long() {
    let nodes = Nodes::start(3);
    assert_eq!(
        nodes.scope(const_min_hold()).await.unwrap(),
        Outcome::Ran(Ok(()))
    );
    // Kept, not deleted, with the rest of `min_hold` to live (not the ttl's): on a quorum when
    // the call returns, on the slowest node a moment later.
    let key = "singleton:lock:const-min-hold";
    assert!(
        near(&pttls(&nodes, key), settings::MIN_HOLD) >= 2,
        "PTTLs {:?}, min_hold {:?}",
        pttls(&nodes, key),
        settings::MIN_HOLD
    );
    assert!(
        eventually(PROMPTLY, || near(&pttls(&nodes, key), settings::MIN_HOLD)
            == 3)
        .await,
        "PTTLs {:?}, min_hold {:?}",
        pttls(&nodes, key),
        settings::MIN_HOLD
    );
    assert_eq!(
        nodes.scope(const_min_hold()).await.unwrap(),
        Outcome::Skipped(Skip::Busy)
    );
}
