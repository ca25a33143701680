//! A holder killed with SIGKILL (no release, no goodbye) blocks its key for its ttl and no longer.
//!
//! The holder is this same test binary, started again as a child process that runs only the
//! ignored `holder_process` test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_singleton::singleton;
use common::Nodes;

const TTL: Duration = Duration::from_secs(2);
const URLS_VAR: &str = "CLUSTER_SINGLETON_TEST_HOLDER_URLS";
const HOLDING: &str = "HOLDING";
/// Room for a loaded CI machine between the key expiring and a poll noticing.
const NOTICE_MARGIN: Duration = Duration::from_secs(1);
/// How often the test looks again while it waits for the key to expire.
const POLL_EVERY: Duration = Duration::from_millis(50);

#[singleton(key = "crash-job", ttl = "2s")]
async fn hold_until_killed() {
    println!("{HOLDING}");
    std::future::pending::<()>().await;
}

#[tokio::test]
#[ignore = "the holder half of a_killed_holder_blocks_its_key_for_its_ttl_and_no_longer, run in a child process"]
async fn holder_process() {
    let Ok(urls) = std::env::var(URLS_VAR) else {
        return; // run by hand with --ignored: nothing to hold
    };
    // Fresh nodes: see `common::fresh_nodes`.
    cluster_singleton::runtime::Config::new(urls.split(','))
        .restart_grace(Duration::ZERO)
        .init()
        .await
        .unwrap();
    let _ = hold_until_killed().await;
}

#[tokio::test]
async fn a_killed_holder_blocks_its_key_for_its_ttl_and_no_longer() {
    let nodes = Nodes::start(3);
    let spawned = Instant::now();
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "holder_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URLS_VAR, nodes.cluster.urls().join(","))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let (said, hear) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(HOLDING) {
                let _ = said.send(Instant::now());
            }
        }
    });
    let holding_seen = hear
        .recv_timeout(Duration::from_secs(30))
        .expect("the holder process takes the lock");

    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();

    // The key was set after `spawned` and before `holding_seen`, so it expires in between
    // `spawned + TTL` and `holding_seen + TTL`.
    for i in 0..3 {
        let mut connection = nodes.cluster.connection(i).unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg("singleton:lock:crash-job")
            .query(&mut connection)
            .unwrap();
        assert!(
            pttl > 0 && pttl <= TTL.as_millis() as i64,
            "node {i}: pttl {pttl}"
        );
    }
    let earliest_expiry = spawned + TTL;
    while Instant::now() + POLL_EVERY < earliest_expiry {
        let attempt = nodes.runtime.lock("crash-job", TTL).await.unwrap();
        assert!(
            attempt.is_none(),
            "taken {:?} before the crashed holder's ttl ran out",
            earliest_expiry - Instant::now()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    let latest_expiry = holding_seen + TTL + NOTICE_MARGIN;
    loop {
        if let Some(lease) = nodes.runtime.lock("crash-job", TTL).await.unwrap() {
            lease.release().await.unwrap();
            break;
        }
        assert!(
            Instant::now() < latest_expiry,
            "still blocked after the crashed holder's ttl"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
