//! The process-wide runtime set by `runtime::init`, shared by tests that each run on their own
//! tokio runtime (redis-rs/redis-rs#1678: connections made on one runtime die with it).

use std::sync::OnceLock;
use std::time::Duration;

use cluster_singleton::{runtime, singleton, Error, Outcome};
use cluster_singleton_testkit::Cluster;

/// One cluster for the whole binary; the test kit stops its processes when the binary exits.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static INITIALISED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn initialised() -> &'static Cluster {
    let cluster = CLUSTER.get_or_init(|| Cluster::start(3).expect("start redis-server nodes"));
    INITIALISED
        .get_or_init(|| async {
            // Fresh nodes: their votes count at once (see `Config::restart_grace`).
            runtime::Config::new(cluster.urls())
                .restart_grace(Duration::ZERO)
                .init()
                .await
                .expect("first init")
        })
        .await;
    cluster
}

#[singleton(key = "global-a", ttl = "10s")]
async fn job_a() -> u8 {
    1
}

#[singleton(key = "global-b", ttl = "10s")]
async fn job_b() -> u8 {
    2
}

// Each test has a key of its own, so that tests running in parallel on the global runtime never
// contend.

#[singleton(key = "global-c", ttl = "10s")]
async fn job_c() -> u8 {
    3
}

#[singleton(key = "global-d", ttl = "10s")]
async fn job_d() -> u8 {
    4
}

#[singleton(key = "global-scoped", ttl = "10s")]
async fn job_scoped() -> u8 {
    5
}

#[tokio::test]
async fn one_test_runtime_uses_the_global_runtime() {
    initialised().await;
    for _ in 0..3 {
        assert_eq!(job_a().await.unwrap(), Outcome::Ran(1));
    }
}

#[tokio::test]
async fn another_test_runtime_uses_the_same_global_runtime() {
    initialised().await;
    for _ in 0..3 {
        assert_eq!(job_b().await.unwrap(), Outcome::Ran(2));
    }
}

#[test]
fn calls_from_runtimes_that_come_and_go_keep_working() {
    for round in 0..3 {
        let tokio_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = tokio_runtime.block_on(async {
            initialised().await;
            job_c().await
        });
        assert_eq!(outcome.unwrap(), Outcome::Ran(3), "round {round}");
        drop(tokio_runtime); // the next round's calls must not depend on this one
    }
}

#[tokio::test]
async fn a_second_init_is_an_error() {
    let cluster = initialised().await;
    let err = runtime::init(cluster.urls()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyInitialised), "{err:?}");
    assert!(err.to_string().contains("already initialised"), "{err}");
    // The first runtime is untouched.
    assert_eq!(job_d().await.unwrap(), Outcome::Ran(4));
}

#[tokio::test]
async fn a_scoped_runtime_takes_precedence_over_the_global_one() {
    initialised().await;
    let other = Cluster::start(1).unwrap();
    let scoped = runtime::Config::new(other.urls())
        .restart_grace(Duration::ZERO)
        .key_prefix("scoped:")
        .build()
        .unwrap();
    let held = scoped
        .lock("global-scoped", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();

    // Inside the scope the key is held; outside, on the global nodes, it is free.
    assert_eq!(
        scoped.scope(job_scoped()).await.unwrap(),
        Outcome::Skipped(cluster_singleton::Skip::Busy)
    );
    assert_eq!(held.key(), "scoped:lock:global-scoped");
    assert_eq!(job_scoped().await.unwrap(), Outcome::Ran(5));
    held.release().await.unwrap();
}
