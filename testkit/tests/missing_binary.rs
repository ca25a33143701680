//! A missing `redis-server` must give a clear error at once, not a hang.
//!
//! In its own test binary because it changes a process-wide environment
//! variable.

use std::time::{Duration, Instant};

use cluster_singleton_testkit::{Cluster, Error, REDIS_SERVER_ENV};

/// "At once": far less than the readiness deadline.
const FAIL_FAST_LIMIT: Duration = Duration::from_secs(1);

#[test]
fn missing_binary_is_a_clear_error() {
    let path = "/nonexistent/cluster-singleton/redis-server";
    // This is the only test in this binary, so no other thread reads the
    // environment meanwhile.
    std::env::set_var(REDIS_SERVER_ENV, path);

    let started = Instant::now();
    let err = Cluster::start(3).unwrap_err();
    assert!(started.elapsed() < FAIL_FAST_LIMIT);
    assert!(matches!(err, Error::RedisServerNotFound(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(REDIS_SERVER_ENV), "{message}");
    assert!(message.contains(path), "{message}");

    // Same with an empty PATH and the variable unset.
    std::env::remove_var(REDIS_SERVER_ENV);
    std::env::set_var("PATH", "");
    let message = Cluster::builder().start().unwrap_err().to_string();
    assert!(
        message.contains("`redis-server` was not found on PATH"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
    assert!(message.contains(REDIS_SERVER_ENV), "{message}");
}
