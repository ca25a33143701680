//! Fencing tokens increase: a checker replays every fenced acquisition made by several machines
//! while nodes are killed, restarted without persistence and frozen, and while holders pause past
//! the end of their lease, and fails on any acquisition whose token is not larger than that of
//! every acquisition that completed before it began.
//!
//! `CLUSTER_SINGLETON_FENCING_SEED` replays a run's fault schedule; the seed is printed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Options, Runtime};
use cluster_singleton_testkit::Cluster;
use common::NODE_TIMEOUT;

const NODES: usize = 5;
const MACHINES: usize = 3;
const TASKS_PER_MACHINE: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(6);
const TTL: Duration = Duration::from_millis(300);
const FAULT_EVERY: Duration = Duration::from_millis(700);
const SEED_VAR: &str = "CLUSTER_SINGLETON_FENCING_SEED";

/// One granted acquisition, on the test process's monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Acquisition {
    began: Instant,
    granted: Instant,
    token: u64,
}

/// A store that accepts a write only with a token at least as high as every one it has seen:
/// what fencing tokens are for.
#[derive(Default)]
struct FencedStore {
    highest: u64,
    accepted: usize,
    refused: usize,
}

impl FencedStore {
    fn write(&mut self, token: u64) {
        if token >= self.highest {
            self.highest = token;
            self.accepted += 1;
        } else {
            self.refused += 1;
        }
    }
}

async fn contend(
    runtime: Runtime,
    seed: u64,
    until: Instant,
    log: Arc<Mutex<Vec<Acquisition>>>,
    store: Arc<Mutex<FencedStore>>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let options = Options::new(TTL).fencing(true);
    while Instant::now() < until {
        let began = Instant::now();
        if let Ok(Some(lease)) = runtime.lock_with("ledger", &options).await {
            let token = lease.fencing_token().expect("fencing is on");
            log.lock().unwrap().push(Acquisition {
                began,
                granted: Instant::now(),
                token,
            });
            // One holder in four pauses past the end of its lease (a GC pause, a frozen VM)
            // before it writes; the store must refuse it if someone newer wrote meanwhile.
            let hold = if rng.u8(..4) == 0 { TTL * 2 } else { TTL / 10 };
            tokio::time::sleep(hold).await;
            store.lock().unwrap().write(token);
            let _ = lease.release().await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(1..20))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_through_faults_and_pauses() {
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("fencing checker seed: {seed} (replay with {SEED_VAR}={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cluster = Cluster::start(NODES).unwrap();
    // Fresh nodes count at once: the restarts below are the point, and the tokens must
    // increase even though restarted nodes forget their counters.
    let machines: Vec<Runtime> = (0..MACHINES)
        .map(|_| {
            common::fresh_nodes(&cluster)
                .node_timeout(NODE_TIMEOUT)
                .build()
                .unwrap()
        })
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(Mutex::new(FencedStore::default()));
    let until = Instant::now() + RUN_FOR;

    let mut tasks = Vec::new();
    for machine in &machines {
        for _ in 0..TASKS_PER_MACHINE {
            tasks.push(tokio::spawn(contend(
                machine.clone(),
                rng.u64(..),
                until,
                log.clone(),
                store.clone(),
            )));
        }
    }
    let mut faults = Vec::new();
    while Instant::now() + FAULT_EVERY < until {
        tokio::time::sleep(FAULT_EVERY).await;
        let node = rng.usize(..NODES);
        let fault = match rng.u8(..3) {
            0 => {
                cluster.restart(node).unwrap();
                "restart without persistence"
            }
            1 => {
                cluster.kill(node).unwrap();
                tokio::time::sleep(FAULT_EVERY / 2).await;
                cluster.start_node(node).unwrap();
                "kill, then start empty"
            }
            _ => {
                cluster.freeze(node).unwrap();
                tokio::time::sleep(FAULT_EVERY / 2).await;
                cluster.resume(node).unwrap();
                "freeze, then resume"
            }
        };
        faults.push(format!("{fault} on node {node}"));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let acquisitions = log.lock().unwrap().clone();
    let store = store.lock().unwrap();
    println!(
        "{} fenced acquisitions, {} faults ({}), store: {} writes accepted, {} refused",
        acquisitions.len(),
        faults.len(),
        faults.join(", "),
        store.accepted,
        store.refused
    );
    assert!(
        acquisitions.len() >= 20,
        "too few acquisitions to judge: {}",
        acquisitions.len()
    );
    for later in &acquisitions {
        for earlier in acquisitions
            .iter()
            .filter(|earlier| earlier.granted < later.began)
        {
            assert!(
                later.token > earlier.token,
                "seed {seed}: token {} granted {:?} after an acquisition with token {} completed",
                later.token,
                later.began - earlier.granted,
                earlier.token
            );
        }
    }
    let mut tokens: Vec<u64> = acquisitions.iter().map(|a| a.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        acquisitions.len(),
        "seed {seed}: a token was handed out twice"
    );
}

#[tokio::test]
async fn without_fencing_there_is_no_token() {
    let cluster = Cluster::start(1).unwrap();
    let runtime = common::fresh_nodes(&cluster).build().unwrap();
    let lease = runtime.lock("ledger", TTL).await.unwrap().unwrap();
    assert_eq!(lease.fencing_token(), None);
}

#[tokio::test]
async fn a_restarted_node_does_not_turn_tokens_back() {
    let mut cluster = Cluster::start(1).unwrap();
    let runtime = common::fresh_nodes(&cluster).build().unwrap();
    let options = Options::new(TTL).fencing(true);
    let first = runtime
        .lock_with("ledger", &options)
        .await
        .unwrap()
        .unwrap();
    let first_token = first.fencing_token().unwrap();
    first.release().await.unwrap();

    cluster.restart(0).unwrap(); // the counter is gone

    // The first call after the restart finds the old connection broken; the next reconnects.
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        if let Ok(Some(lease)) = runtime.lock_with("ledger", &options).await {
            break lease;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        second.fencing_token().unwrap() > first_token,
        "the clock floor keeps it increasing"
    );
}

/// Sets the fencing counter of `key` on node 0 of `cluster` to `value`.
fn set_counter(cluster: &Cluster, key: &str, value: &str) {
    let mut connection = cluster.connection(0).unwrap();
    let () = redis::cmd("SET")
        .arg(format!("singleton:fence:{key}"))
        .arg(value)
        .query(&mut connection)
        .unwrap();
}

/// Lua numbers are doubles, exact only up to 2^53: counters are compared and returned as
/// decimal strings, so that tokens stay exact over the whole of `u64`.
#[tokio::test]
async fn tokens_stay_exact_past_two_to_the_53() {
    let cluster = Cluster::start(1).unwrap();
    let runtime = common::fresh_nodes(&cluster).build().unwrap();
    let options = Options::new(TTL).fencing(true);
    // 2^53 + 1: a double rounds it to 2^53.
    set_counter(&cluster, "exact", "9007199254740993");
    let lease = runtime.lock_with("exact", &options).await.unwrap().unwrap();
    assert_eq!(lease.fencing_token(), Some(9_007_199_254_740_994));
    lease.release().await.unwrap();

    set_counter(&cluster, "exact", &(u64::MAX - 1).to_string());
    let lease = runtime.lock_with("exact", &options).await.unwrap().unwrap();
    assert_eq!(lease.fencing_token(), Some(u64::MAX));
    lease.release().await.unwrap();

    // No token is larger than the largest: a clear error, and no lock left behind.
    let err = runtime.lock_with("exact", &options).await.unwrap_err();
    assert!(err.to_string().contains("largest 64-bit number"), "{err}");
    let mut connection = cluster.connection(0).unwrap();
    let left: Option<String> = redis::cmd("GET")
        .arg("singleton:lock:exact")
        .query(&mut connection)
        .unwrap();
    assert_eq!(left, None);
}

/// Review of b3500b2 (commands sized up front, the epoch check last among keys and arguments):
/// with the restart grace on, a fenced `SET` (its epoch key third, its epoch third among the
/// arguments) grants, and renewal (the epoch key after the lease keys, the epoch after the
/// tokens and expiries) extends on every node; a node that loses its scripts (`SCRIPT FLUSH`)
/// is extended again from the next round; a node whose epoch is gone is not extended (the
/// script touches nothing), and is repaired once its grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_renewal_with_the_epoch_check_survives_a_script_flush_and_a_lost_epoch() {
    const GRACE: Duration = Duration::from_secs(1);
    // As long as the grace allows: a lock of 1 s sets aside 12 ms for clocks, more than a
    // vote's round trips on a loaded machine (see `Config::detect_clock_jumps`). The second
    // call counts on nodes 1 and 2 alone, since node 0 lost its acquisition script too and
    // refuses that call (`NOSCRIPT`) before loading it again.
    let ttl = GRACE;
    let key = "singleton:lock:fenced-epoch";
    let cluster = Cluster::start(3).unwrap();
    let runtime = cluster_singleton::runtime::Config::new(cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(GRACE)
        .build()
        .unwrap();
    common::until_nodes_vote(&runtime, GRACE).await;
    let value = |i: usize| -> Option<String> {
        let mut connection = cluster.connection(i).unwrap();
        redis::cmd("GET").arg(key).query(&mut connection).unwrap()
    };
    let pttl = |i: usize| -> i64 {
        let mut connection = cluster.connection(i).unwrap();
        redis::cmd("PTTL").arg(key).query(&mut connection).unwrap()
    };
    let options = Options::new(ttl).fencing(true);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let outcome = runtime
            .run_with(
                "fenced-epoch",
                options,
                async {
                    let lease = cluster_singleton::lease().unwrap();
                    let token = lease.token().to_owned();
                    assert!(
                        common::eventually(common::PROMPTLY, || (0..3)
                            .all(|i| value(i).as_deref() == Some(token.as_str())))
                        .await,
                        "the fenced SET landed on every node"
                    );
                    // Node 0 forgets its scripts: a round fails there, the next extends it.
                    let mut node_0 = cluster.connection(0).unwrap();
                    let () = redis::cmd("SCRIPT")
                        .arg("FLUSH")
                        .query(&mut node_0)
                        .unwrap();
                    tokio::time::sleep(ttl * 2).await;
                    assert!(
                        pttl(0) > (ttl / 3).as_millis() as i64,
                        "node 0 extended again"
                    );
                    assert!(pttl(1) > (ttl / 3).as_millis() as i64, "node 1 extended");
                    // Node 2 loses its epoch (as a flush would): not extended, its copy runs out.
                    let mut node_2 = cluster.connection(2).unwrap();
                    let () = redis::cmd("DEL")
                        .arg("singleton:epoch")
                        .query(&mut node_2)
                        .unwrap();
                    assert!(
                        common::eventually(ttl * 2, || value(2).is_none()).await,
                        "node 2 without its epoch was not extended"
                    );
                    assert_eq!(value(0).as_deref(), Some(token.as_str()));
                    // Once its grace has passed, renewal puts the token back on node 2.
                    assert!(
                        common::eventually(GRACE * 4, || value(2).as_deref()
                            == Some(token.as_str()))
                        .await,
                        "node 2 repaired after its grace"
                    );
                    lease.fencing_token().expect("fencing is on")
                },
                |_| true,
            )
            .await;
        match outcome {
            Ok(cluster_singleton::Outcome::Ran(token)) => tokens.push(token),
            other => panic!("the fenced call ran under renewal: {other:?}"),
        }
        assert!(common::eventually(common::PROMPTLY, || (0..3).all(|i| value(i).is_none())).await);
    }
    assert!(tokens[1] > tokens[0], "fencing tokens increase: {tokens:?}");
}
