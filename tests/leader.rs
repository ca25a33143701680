//! Leader election against real Redis nodes: `Revoked` by the end of validity, fencing tokens
//! that grow across hand-overs, stepping down on resign, drop and shutdown, `memory://`, and the
//! hand-over times (after `resign`, after the leader is SIGKILLed, after it is partitioned from
//! every node), printed with `--nocapture`.
//!
//! Two `Runtime`s in one test process are two candidates as two processes would be: each has
//! its own connections and holder id. The SIGKILL hand-over uses a real child process (this
//! test binary, started again to run the ignored `leader_child_process`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, LeaderEvent, Leadership, Runtime};
use cluster_singleton::LostReason;
use cluster_singleton_testkit::{Cluster, Proxy};
use common::{block_on, runtime_for, NODE_TIMEOUT, PROMPTLY};
use tokio::sync::broadcast;

const TTL: Duration = Duration::from_millis(1000);
const KEY: &str = "leader";
const CHILD_URLS_VAR: &str = "CLUSTER_SINGLETON_LEADER_CHILD_URLS";
const CHILD_KEY_VAR: &str = "CLUSTER_SINGLETON_LEADER_CHILD_KEY";

/// The next event, within `within`.
async fn next_event(
    events: &mut broadcast::Receiver<LeaderEvent>,
    within: Duration,
) -> LeaderEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("an event in time")
        .expect("the campaign is alive")
}

/// Waits until one of `candidates` leads; its index.
async fn a_leader(candidates: &[&Leadership], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = candidates.iter().position(|c| c.is_leader()) {
            return i;
        }
        assert!(Instant::now() < deadline, "nobody was elected");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A `Leadership` can be moved into a `'static` closure shared between threads, as
/// `move || leadership.is_leader()` is by cron's `leader_only`.
#[test]
fn a_leadership_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    let runtime = Config::new(["memory://shared"]).build().unwrap();
    let leadership = runtime.campaign(KEY, TTL).unwrap();
    let is_leader = move || leadership.is_leader();
    shareable(&is_leader);
    let lost = Config::new(["memory://shared"]).build().unwrap();
    let leadership = lost.campaign(KEY, TTL).unwrap();
    shareable(&leadership.lost());
}

#[tokio::test]
async fn memory_backend_elects_one_leader_and_hands_over_on_resign() {
    let first = Config::new(["memory://leaders"]).build().unwrap();
    let second = Config::new(["memory://leaders"]).build().unwrap();
    let a = first.campaign(KEY, TTL).unwrap();
    let a_token = tokio::time::timeout(PROMPTLY, a.elected())
        .await
        .unwrap()
        .unwrap();
    let b = second.campaign(KEY, TTL).unwrap();
    let mut b_events = b.events();
    tokio::time::sleep(TTL / 2).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader at a time");
    assert_eq!(a.fencing_token(), Some(a_token));
    assert_eq!(b.fencing_token(), None);

    a.resign().await;
    assert!(!a.is_leader());
    assert_eq!(
        a.elected().await,
        None,
        "a resigned campaign never leads again"
    );
    assert_eq!(a.lost().await, None);
    match next_event(&mut b_events, TTL).await {
        LeaderEvent::Elected { fencing_token } => assert!(fencing_token > a_token),
        other => panic!("expected Elected, got {other:?}"),
    }
    assert!(b.is_leader());
    let a_again = first.campaign(KEY, TTL).unwrap();
    let mut a_again_events = a_again.events();
    drop(b);
    // The dropped leader releases in the background: the next campaign takes over before the
    // key could expire (at least two thirds of the ttl after its last renewal).
    assert!(matches!(
        next_event(&mut a_again_events, Duration::from_millis(400)).await,
        LeaderEvent::Elected { .. }
    ));
}

/// The leader's nodes all become unreachable, so renewal cannot succeed: `Revoked` must come by
/// the end of the validity, not at the next renewal, and `is_leader` be false from then on.
#[tokio::test]
async fn revoked_arrives_by_the_end_of_validity_when_renewal_cannot_succeed() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = runtime_for(&cluster);
    let leadership = runtime.campaign(KEY, TTL).unwrap();
    let mut events = leadership.events();
    assert!(matches!(
        next_event(&mut events, Duration::from_secs(5)).await,
        LeaderEvent::Elected { .. }
    ));
    // Cut off just after a renewal is due: the deadline then is as far as it gets.
    tokio::time::sleep(TTL / 3 + Duration::from_millis(50)).await;
    let lost = tokio::spawn({
        let lost = leadership.lost();
        async move { (lost.await, Instant::now()) }
    });
    for i in 0..cluster.len() {
        cluster.proxy(i).partition();
    }
    let revoked = tokio::spawn(async move {
        let event = next_event(&mut events, TTL * 2).await;
        (event, Instant::now())
    });
    // The latest deadline the leader could know of; an extension answered before the partition
    // may still move it, so it is read for as long as the process leads.
    let mut deadline = Instant::now();
    let mut first_false = None;
    let mut last_true = None;
    while Instant::now() < deadline + TTL {
        let now = Instant::now();
        let leading = leadership.is_leader();
        if leading {
            last_true = Some(now);
            assert!(
                first_false.is_none(),
                "is_leader came back after turning false"
            );
            deadline = deadline.max(now + leadership.validity());
        } else if first_false.is_none() {
            first_false = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (event, revoked_at) = revoked.await.unwrap();
    assert_eq!(
        event,
        LeaderEvent::Revoked {
            reason: LostReason::NoQuorum
        }
    );
    let late = |at: Instant| at.saturating_duration_since(deadline);
    let (lost_reason, lost_at) = lost.await.unwrap();
    assert_eq!(lost_reason, Some(LostReason::NoQuorum));
    assert!(
        late(lost_at) < Duration::from_millis(15),
        "lost() resolved late"
    );
    let first_false = first_false.expect("leadership ended");
    assert!(
        last_true.is_some_and(|at| at < deadline),
        "is_leader said true at or after the deadline"
    );
    println!(
        "Revoked {:?} after the deadline, is_leader false {:?} after it",
        late(revoked_at),
        late(first_false)
    );
    assert!(
        late(revoked_at) < Duration::from_millis(15),
        "Revoked came late"
    );
    assert!(
        late(first_false) < Duration::from_millis(15),
        "is_leader stayed true"
    );
    assert!(!leadership.is_leader());
}

/// Leaders hand over by resigning, by being dropped, and by losing their lease to a partition;
/// every `Elected`, in whichever candidate, carries a larger fencing token than every earlier one.
#[tokio::test]
async fn every_elected_carries_a_larger_fencing_token_across_hand_overs() {
    let cluster = Cluster::start(3).unwrap();
    let runtimes: Vec<Runtime> = (0..2).map(|_| runtime_for(&cluster)).collect();
    let mut candidates: Vec<Leadership> = runtimes
        .iter()
        .map(|runtime| runtime.campaign(KEY, TTL).unwrap())
        .collect();
    let mut tokens = Vec::new();
    for round in 0..6 {
        let refs: Vec<&Leadership> = candidates.iter().collect();
        let leader = a_leader(&refs, Duration::from_secs(5)).await;
        let token = candidates[leader].fencing_token().unwrap();
        tokens.push(token);
        if round % 2 == 0 {
            candidates[leader].resign().await;
        }
        // Dropped (or resigned) and replaced by a fresh campaign of the same runtime.
        candidates[leader] = runtimes[leader].campaign(KEY, TTL).unwrap();
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "fencing tokens did not grow: {tokens:?}"
    );
}

#[tokio::test]
async fn shutdown_steps_down_and_ends_the_campaign() {
    let cluster = Cluster::start(3).unwrap();
    let runtime = runtime_for(&cluster);
    let other = runtime_for(&cluster);
    let leadership = runtime.campaign(KEY, TTL).unwrap();
    let mut events = leadership.events();
    leadership.elected().await.unwrap();
    let waiting = other.campaign(KEY, TTL).unwrap();
    assert!(matches!(
        next_event(&mut events, PROMPTLY).await,
        LeaderEvent::Elected { .. }
    ));
    runtime.shutdown(PROMPTLY).await.unwrap();
    assert_eq!(
        next_event(&mut events, PROMPTLY).await,
        LeaderEvent::Revoked {
            reason: LostReason::Shutdown
        }
    );
    assert_eq!(leadership.elected().await, None, "the campaign ended");
    // Released by the shutdown: the other candidate takes over well before the ttl.
    tokio::time::timeout(TTL / 2, waiting.elected())
        .await
        .expect("elected without waiting for the ttl");
    assert!(matches!(
        runtime.campaign(KEY, TTL),
        Err(cluster_singleton::Error::ShutDown)
    ));
}

/// Hand-overs measured per way, on fresh keys.
const HAND_OVERS: usize = 3;

/// The time from the old leader's end to the new leader's `Elected`, measured three ways, each
/// a few times; printed as min / median / max.
#[test]
fn hand_over_times() {
    let cluster = Cluster::start(3).unwrap();
    // The old leader reaches the nodes through proxies of its own, so that it alone can be cut off.
    let proxies: Vec<Proxy> = (0..cluster.len())
        .map(|i| Proxy::start(format!("127.0.0.1:{}", cluster.port(i)).parse().unwrap()).unwrap())
        .collect();
    let proxied = Config::new(proxies.iter().map(|p| format!("redis://{}", p.addr())))
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let successor = runtime_for(&cluster);
    let (mut after_resign, mut after_partition, mut after_kill) = (vec![], vec![], vec![]);
    block_on(async {
        for round in 0..HAND_OVERS {
            let key = format!("resign-{round}");
            let old = successor.campaign(&key, TTL).unwrap();
            old.elected().await.unwrap();
            let new = proxied.campaign(&key, TTL).unwrap();
            let mut events = new.events();
            // The new candidate is between attempts, as a waiting candidate usually is.
            tokio::time::sleep(TTL / 2).await;
            assert!(!new.is_leader());
            let started = Instant::now();
            old.resign().await;
            next_event(&mut events, TTL * 2).await;
            after_resign.push(started.elapsed());
        }
        for round in 0..HAND_OVERS {
            let key = format!("partition-{round}");
            let old = proxied.campaign(&key, TTL).unwrap();
            old.elected().await.unwrap();
            let new = successor.campaign(&key, TTL).unwrap();
            let mut events = new.events();
            // Some time into the term, as a real failure would come.
            tokio::time::sleep(TTL / 2).await;
            let started = Instant::now();
            proxies.iter().for_each(Proxy::partition);
            next_event(&mut events, TTL * 3).await;
            after_partition.push(started.elapsed());
            assert!(!old.is_leader());
            drop(old);
            proxies.iter().for_each(Proxy::heal);
        }
        for round in 0..HAND_OVERS {
            let key = format!("kill-{round}");
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "leader_child_process",
                    "--nocapture",
                ])
                .env(CHILD_URLS_VAR, cluster.urls().join(","))
                .env(CHILD_KEY_VAR, &key)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            assert!(lines.any(|line| line.unwrap().starts_with("ELECTED")));
            let new = successor.campaign(&key, TTL).unwrap();
            let mut events = new.events();
            tokio::time::sleep(TTL / 2).await;
            assert!(!new.is_leader());
            let started = Instant::now();
            child.kill().unwrap();
            child.wait().unwrap();
            next_event(&mut events, TTL * 3).await;
            after_kill.push(started.elapsed());
        }
    });
    let summary = |times: &mut Vec<Duration>| {
        times.sort();
        format!(
            "{:?} / {:?} / {:?}",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        )
    };
    println!(
        "hand-over (min / median / max of {HAND_OVERS}) with ttl {TTL:?}: after resign {}; after \
         SIGKILL {}; after a partition of the leader from every node {}",
        summary(&mut after_resign),
        summary(&mut after_kill),
        summary(&mut after_partition)
    );
    assert!(
        after_resign.iter().all(|t| *t < TTL / 2),
        "resign hands over without waiting for the ttl"
    );
    assert!(after_kill
        .iter()
        .chain(&after_partition)
        .all(|t| *t < TTL * 2));
}

#[test]
#[ignore = "the leader process of `hand_over_times`, started by it"]
fn leader_child_process() {
    let Ok(urls) = std::env::var(CHILD_URLS_VAR) else {
        return;
    };
    block_on(async {
        let runtime = Config::new(urls.split(','))
            .restart_grace(Duration::ZERO)
            .node_timeout(NODE_TIMEOUT)
            .build()
            .unwrap();
        let key = std::env::var(CHILD_KEY_VAR).unwrap();
        let leadership = runtime.campaign(&key, TTL).unwrap();
        let token = leadership.elected().await.unwrap();
        println!("ELECTED {token}");
        std::future::pending::<()>().await;
    });
}
