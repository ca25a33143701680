//! Many leases held at once by one process (issue 12): five thousand `run_with` calls, each a
//! task of its own whose body outlives its ttl, are all kept by renewal, all released, and losing
//! one of them touches none of the others.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Options, Runtime};
use cluster_singleton::{lease, Error, LostReason, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, Nodes};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Leases held at once.
const LEASES: usize = 5_000;

/// Acquisitions started together, each wave awaited before the next: this test is about holding
/// many leases, not about taking them all in one burst.
const WAVE: usize = 500;

/// Renewal runs every third of it, so a body that outlives it by a few renewal periods shows
/// that every lease was renewed, not merely taken.
const TTL: Duration = Duration::from_secs(2);

/// How long the release of every key may take once the bodies have returned.
const RELEASED_WITHIN: Duration = Duration::from_secs(10);

/// How long the call whose key was taken over may take to learn of it: the next renewal finds
/// the key gone, a third of a ttl later; a ttl is ample.
const LOSS_NOTICED_WITHIN: Duration = TTL;

/// Held by each test while it runs: one process holding 5,000 leases is what is tested, and two
/// tests holding 5,000 each at once on a 2-core machine are 10,000, whose renewals then miss
/// their node timeout (at the time of issue 12, about a fifth of them were lost so).
static ONE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a holder's body returns: the reason, if it saw its lease lost before it was told to end.
type BodyEnd = Option<LostReason>;

/// A holder's call, running in a task of its own.
type Call = JoinHandle<Result<Outcome<BodyEnd>, Error>>;

/// Calls holding their leases until told to end.
struct Holders {
    /// Each call's Redis key and token, in the order of `calls`.
    leases: Vec<(String, String)>,
    calls: Vec<Call>,
    /// Set to `true` to let every body return.
    end: watch::Sender<bool>,
    /// When the last lease was taken.
    last_taken: Instant,
}

impl Holders {
    /// Takes `count` leases on keys `many:{i}`, [`WAVE`] at a time; panics if a call returns
    /// before its body runs.
    async fn take(runtime: &Runtime, count: usize) -> Holders {
        let (end, end_rx) = watch::channel(false);
        let mut leases = Vec::with_capacity(count);
        let mut calls = Vec::with_capacity(count);
        for first in (0..count).step_by(WAVE) {
            let wave: Vec<_> = (first..count.min(first + WAVE))
                .map(|i| hold(runtime, format!("many:{i}"), end_rx.clone()))
                .collect();
            for (call, entered) in wave {
                match entered.await {
                    Ok(lease) => leases.push(lease),
                    Err(_) => panic!(
                        "a call returned without taking its lease: {:?}",
                        call.await.unwrap()
                    ),
                }
                calls.push(call);
            }
        }
        Holders {
            leases,
            calls,
            end,
            last_taken: Instant::now(),
        }
    }

    /// Lets every body return; every call's result, in order.
    async fn end(self) -> Vec<Result<Outcome<BodyEnd>, Error>> {
        self.end.send_replace(true);
        let mut results = Vec::with_capacity(self.calls.len());
        for call in self.calls {
            results.push(call.await.expect("a holder panicked"));
        }
        results
    }
}

/// Starts a call that holds `key` until `end` turns `true`, with renewal on (`Options::new`'s
/// default); the returned receiver gets the lease's Redis key and token once the body runs.
fn hold(
    runtime: &Runtime,
    key: String,
    mut end: watch::Receiver<bool>,
) -> (Call, oneshot::Receiver<(String, String)>) {
    let (entered, lease_rx) = oneshot::channel();
    let runtime = runtime.clone();
    let call = tokio::spawn(async move {
        runtime
            .run_with(
                &key,
                Options::new(TTL),
                async move {
                    let lease = lease().expect("run_with's body has a lease");
                    let _ = entered.send((lease.key().to_owned(), lease.token().to_owned()));
                    tokio::select! {
                        _ = end.wait_for(|end| *end) => None,
                        reason = lease.lost() => Some(reason),
                    }
                },
                |_| true,
            )
            .await
    });
    (call, lease_rx)
}

/// Three fresh nodes, and a runtime on them with the default node timeout, as a program has it.
fn start() -> Nodes {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let runtime = common::fresh_nodes(&cluster)
        .build()
        .expect("valid configuration");
    Nodes { cluster, runtime }
}

/// Each of `leases`' values on every node, in order: one `MGET` per node.
fn values_everywhere(nodes: &Nodes, leases: &[(String, String)]) -> Vec<Vec<Option<String>>> {
    let keys: Vec<&str> = leases.iter().map(|(key, _)| key.as_str()).collect();
    (0..nodes.cluster.len())
        .map(|i| {
            let mut connection = nodes.cluster.connection(i).expect("connect to node");
            redis::cmd("MGET")
                .arg(&keys)
                .query(&mut connection)
                .expect("MGET")
        })
        .collect()
}

/// The keys of `leases` whose token is on fewer than a majority of the nodes.
fn not_held(nodes: &Nodes, leases: &[(String, String)]) -> Vec<String> {
    let values = values_everywhere(nodes, leases);
    let majority = nodes.cluster.len() / 2 + 1;
    leases
        .iter()
        .enumerate()
        .filter(|(i, (_, token))| {
            values
                .iter()
                .filter(|node| node[*i].as_deref() == Some(token.as_str()))
                .count()
                < majority
        })
        .map(|(_, (key, _))| key.clone())
        .collect()
}

/// How many of this test's keys (`many:*`) node `i` still has.
fn keys_left(nodes: &Nodes, i: usize) -> usize {
    let mut connection = nodes.cluster.connection(i).expect("connect to node");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("singleton:lock:many:*")
        .query(&mut connection)
        .expect("KEYS");
    keys.len()
}

/// Waits until the last lease taken has outlived its ttl by a renewal period, so that every lease
/// has needed renewal to still be held.
async fn until_every_lease_needed_renewal(holders: &Holders) {
    let renewed_by = holders.last_taken + TTL + TTL / 3;
    tokio::time::sleep_until(renewed_by.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_leases_are_all_renewed_and_all_released() {
    let _alone = ONE_TEST_AT_A_TIME.lock().await;
    let nodes = start();
    let holders = Holders::take(&nodes.runtime, LEASES).await;
    until_every_lease_needed_renewal(&holders).await;

    let lapsed = not_held(&nodes, &holders.leases);
    assert!(
        lapsed.is_empty(),
        "{} of {LEASES} leases lapsed although their bodies still ran, {:?} among them",
        lapsed.len(),
        &lapsed[..lapsed.len().min(5)]
    );

    let results = holders.end().await;
    let not_ran: Vec<_> = results
        .iter()
        .filter(|result| !matches!(result, Ok(Outcome::Ran(None))))
        .collect();
    assert!(
        not_ran.is_empty(),
        "{} calls did not run to their end under the lock, for example {:?}",
        not_ran.len(),
        not_ran[0]
    );
    let released = eventually(RELEASED_WITHIN, || {
        (0..nodes.cluster.len()).all(|i| keys_left(&nodes, i) == 0)
    })
    .await;
    assert!(released, "keys left behind after every call returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_among_five_thousand_is_the_only_one_lost() {
    let _alone = ONE_TEST_AT_A_TIME.lock().await;
    let nodes = start();
    let holders = Holders::take(&nodes.runtime, LEASES).await;
    let victim = LEASES / 2;
    let (victim_key, _) = holders.leases[victim].clone();

    nodes.set_everywhere(&victim_key, "the-next-holder");
    // The victim's call ends on its own once renewal finds its key taken; the others' go on.
    let victim_ended =
        eventually(LOSS_NOTICED_WITHIN, || holders.calls[victim].is_finished()).await;
    assert!(victim_ended, "the call whose key was taken over went on");
    // Every other lease has been renewed since the loss, and needed renewal to be held.
    until_every_lease_needed_renewal(&holders).await;
    let leases = holders.leases.clone();

    let results = holders.end().await;
    match &results[victim] {
        Err(Error::LeaseLost {
            reason: LostReason::TakenOver,
            ..
        })
        | Ok(Outcome::Ran(Some(LostReason::TakenOver))) => {}
        other => panic!("the call whose key was taken over returned {other:?}"),
    }
    let others_not_ran: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(i, result)| *i != victim && !matches!(result, Ok(Outcome::Ran(None))))
        .collect();
    assert!(
        others_not_ran.is_empty(),
        "{} other calls did not run to their end under the lock, for example {:?}",
        others_not_ran.len(),
        others_not_ran[0]
    );
    assert_eq!(
        nodes.values(&victim_key, &[]),
        vec![Some("the-next-holder".to_owned()); 3],
        "the taken-over key is the next holder's: not renewed, not deleted"
    );
    let others: Vec<_> = leases
        .iter()
        .filter(|(key, _)| *key != victim_key)
        .map(|(key, _)| key.as_str())
        .collect();
    let released = eventually(RELEASED_WITHIN, || {
        (0..nodes.cluster.len()).all(|i| {
            let mut connection = nodes.cluster.connection(i).expect("connect to node");
            let exists: usize = redis::cmd("EXISTS")
                .arg(&others)
                .query(&mut connection)
                .expect("EXISTS");
            exists == 0
        })
    })
    .await;
    assert!(released, "keys left behind after every call returned");
}
