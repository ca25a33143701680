//! Nothing the crate owes the nodes is lost when a program ends: a failed attempt gives back what
//! it may hold before it returns, and `runtime::shutdown` releases what is held and waits for the
//! releases still on their way. Each program here is this test binary, started again as a child
//! process that runs one of the ignored `program_*` tests and returns from it at once, as `main`
//! returns.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_singleton::{runtime, singleton, Error};
use common::Nodes;

const URLS_VAR: &str = "CLUSTER_SINGLETON_TEST_SHUTDOWN_URLS";
const RUNS: usize = 20;
const KEY: &str = "singleton:lock:nightly-export";
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);

#[singleton(key = "nightly-export", ttl = "30s")]
async fn nightly_export(entered: Option<tokio::sync::oneshot::Sender<()>>) {
    if let Some(entered) = entered {
        let _ = entered.send(());
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Starts the global runtime on the nodes the parent named; `None` when run by hand.
async fn init_from_parent() -> Option<()> {
    let urls = std::env::var(URLS_VAR).ok()?;
    runtime::Config::new(urls.split(','))
        .node_timeout(common::NODE_TIMEOUT)
        .restart_grace(Duration::ZERO)
        .init()
        .await
        .unwrap();
    Some(())
}

#[tokio::test]
#[ignore = "a program of a_failed_attempt_gives_back_before_it_returns, run in a child process"]
async fn program_that_fails_to_lock() {
    if init_from_parent().await.is_none() {
        return;
    }
    let result = nightly_export(None).await;
    assert!(matches!(result, Err(Error::NoQuorum(_))), "{result:?}");
    // ...and `main` returns.
}

#[tokio::test]
#[ignore = "a program of a_dropped_call_and_a_shutdown_leave_no_key, run in a child process"]
async fn program_that_drops_a_call_and_shuts_down() {
    if init_from_parent().await.is_none() {
        return;
    }
    let (entered, body_runs) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(nightly_export(Some(entered)));
    body_runs.await.unwrap();
    call.abort();
    runtime::shutdown(SHUTDOWN_WITHIN).await.unwrap();
}

/// Runs the program `test` `RUNS` times against `nodes`, and counts the runs after which a node
/// still held the key.
fn runs_that_leave_the_key(nodes: &Nodes, test: &str, down: &[usize]) -> usize {
    (0..RUNS)
        .filter(|_| {
            let status = Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--ignored", "--test-threads=1"])
                .env(URLS_VAR, nodes.cluster.urls().join(","))
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "the program {test} failed");
            let left = !nodes.absent(KEY, down);
            if left {
                for i in (0..nodes.cluster.len()).filter(|i| !down.contains(i)) {
                    let mut connection = nodes.cluster.connection(i).unwrap();
                    let _: () = redis::cmd("DEL").arg(KEY).query(&mut connection).unwrap();
                }
            }
            left
        })
        .count()
}

/// Two of three nodes are down: the attempt wins node 2 alone, which is an outage, and gives
/// node 2 back before it returns; otherwise, once the others are back, node 2's copy would make
/// every caller skip ("busy") for a ttl while nobody holds the lock.
#[tokio::test]
async fn a_failed_attempt_gives_back_before_it_returns() {
    let mut nodes = Nodes::start(3);
    nodes.cluster.kill(0).unwrap();
    nodes.cluster.kill(1).unwrap();
    let left = runs_that_leave_the_key(&nodes, "program_that_fails_to_lock", &[0, 1]);
    assert_eq!(
        left, 0,
        "{left} of {RUNS} programs left their SET on node 2"
    );
}

#[tokio::test]
async fn a_dropped_call_and_a_shutdown_leave_no_key() {
    let nodes = Nodes::start(3);
    let left = runs_that_leave_the_key(&nodes, "program_that_drops_a_call_and_shuts_down", &[]);
    assert_eq!(left, 0, "{left} of {RUNS} programs left the key behind");
}

/// A shutdown while a body runs ends its lease: the body is cancelled, the call says the lease
/// was lost, the key is free at once, and later calls fail with an error that says why.
#[tokio::test]
async fn a_shutdown_ends_the_leases_of_running_bodies() {
    let nodes = Nodes::start(3);
    let runtime = nodes.runtime.clone();
    let (entered, body_runs) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(nodes.runtime.scope(nightly_export(Some(entered))));
    body_runs.await.unwrap();

    runtime.shutdown(SHUTDOWN_WITHIN).await.unwrap();

    assert!(nodes.absent(KEY, &[]), "{:?}", nodes.values(KEY, &[]));
    let result = call.await.unwrap();
    assert!(
        matches!(
            result,
            Err(Error::LeaseLost {
                body_finished: false,
                ..
            })
        ),
        "{result:?}"
    );
    let after = runtime.run("later", Duration::from_secs(1), async {}).await;
    let err = after.unwrap_err();
    assert!(matches!(err, Error::ShutDown), "{err}");
    assert!(err.to_string().contains("shut down"), "{err}");
}

/// Calls keep taking locks on many keys while `shutdown` runs: whatever an attempt in flight wins
/// after the shutdown began is given back, so that once every call has returned, no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_in_flight_during_a_shutdown_leave_nothing() {
    let nodes = Nodes::start(3);
    let runtime = nodes.runtime.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|task| {
            let (runtime, stop) = (runtime.clone(), stop.clone());
            tokio::spawn(async move {
                let key = format!("racing-{task}");
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match runtime.lock(&key, Duration::from_secs(30)).await {
                        Ok(Some(lease)) => drop(lease.release().await),
                        Ok(None) => {}
                        Err(Error::ShutDown) => return,
                        Err(other) => panic!("{other}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    runtime.shutdown(SHUTDOWN_WITHIN).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    for i in 0..3 {
        let mut connection = nodes.cluster.connection(i).unwrap();
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("singleton:lock:*")
            .query(&mut connection)
            .unwrap();
        assert!(left.is_empty(), "node {i} still holds {left:?}");
    }
}

/// Review of b3500b2 (`Lease::extend` builds its script call under the renewal queue's lock, and
/// on memory:// runs it there): leases extended in a loop while `shutdown` releases them. Once
/// `shutdown` has returned (and stragglers had time to land), no key is back, on Redis nodes or
/// in a memory:// store.
async fn manual_extensions_racing_a_shutdown(urls: Vec<String>, absent: impl Fn(&str) -> bool) {
    let config = || {
        cluster_singleton::runtime::Config::new(urls.clone())
            .node_timeout(common::NODE_TIMEOUT)
            .restart_grace(Duration::ZERO)
    };
    for round in 0..5 {
        let runtime = config().build().unwrap();
        let mut keys = Vec::new();
        let mut extending = Vec::new();
        for i in 0..40 {
            let name = format!("extend-vs-shutdown-{round}-{i}");
            let mut lease = runtime
                .lock(&name, Duration::from_secs(2))
                .await
                .unwrap()
                .expect("free");
            keys.push(format!("singleton:lock:{name}"));
            extending.push(tokio::spawn(async move {
                loop {
                    if let Err(err) = lease.extend().await {
                        return err;
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(30 + round * 7)).await;
        runtime.shutdown(SHUTDOWN_WITHIN).await.unwrap();
        for task in extending {
            let err = task.await.unwrap();
            assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let back: Vec<&String> = keys.iter().filter(|key| !absent(key)).collect();
        assert!(
            back.is_empty(),
            "round {round}: keys back after shutdown: {back:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_extensions_racing_a_shutdown_leave_no_key_on_redis() {
    let nodes = Nodes::start(3);
    manual_extensions_racing_a_shutdown(nodes.cluster.urls(), |key| nodes.absent(key, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_extensions_racing_a_shutdown_leave_no_key_in_memory() {
    let url = "memory://review-extend-vs-shutdown".to_owned();
    let observer = cluster_singleton::runtime::Config::new([url.clone()])
        .build()
        .unwrap();
    let free = |key: &str| {
        let name = key.strip_prefix("singleton:lock:").unwrap().to_owned();
        let observer = observer.clone();
        std::thread::spawn(move || {
            common::block_on(async move {
                match observer
                    .lock(&name, Duration::from_millis(50))
                    .await
                    .unwrap()
                {
                    Some(lease) => {
                        lease.release().await.unwrap();
                        true
                    }
                    None => false,
                }
            })
        })
        .join()
        .unwrap()
    };
    manual_extensions_racing_a_shutdown(vec![url.clone()], free).await;
}
