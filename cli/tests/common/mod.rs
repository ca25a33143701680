//! What the command's tests share: running the built binary, and a machine of the fleet that
//! holds locks on the test's nodes.

use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::Lease;
use cluster_singleton_testkit::Cluster;
use tokio::process::Command;

/// The command, as cargo built it for the tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_cluster-singleton");
/// The ttl of the tests' leases: longer than any test.
pub const TTL: Duration = Duration::from_secs(30);
/// How long a test waits for the command to answer, or for something that should happen soon.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What one run of the command gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The line of stdout that starts with `start`.
    pub fn line(&self, start: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{}", self.stdout))
    }
}

/// The command with `args`, and no `REDIS_URLS` from the environment the tests run in.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("REDIS_URLS")
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end.
pub async fn run(mut command: Command) -> Run {
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the command finished in time")
        .expect("the command ran");
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8"),
    }
}

/// The command with `--url` for each of `cluster`'s nodes, then `args`.
pub fn on(cluster: &Cluster, args: &[&str]) -> Command {
    let mut all = Vec::new();
    for url in cluster.urls() {
        all.push("--url".to_owned());
        all.push(url);
    }
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    command(&all)
}

/// Runs the command on `cluster`'s nodes with `args`.
pub async fn cli(cluster: &Cluster, args: &[&str]) -> Run {
    run(on(cluster, args)).await
}

/// A machine of the fleet, named `worker-1`. The nodes were just started and hold nothing a
/// restart could have made them forget, so the grace is off.
pub fn worker(cluster: &Cluster) -> Runtime {
    Config::new(cluster.urls())
        .restart_grace(Duration::ZERO)
        .node_timeout(Duration::from_millis(200))
        .holder_id("worker-1")
        .build()
        .expect("valid configuration")
}

/// `worker`'s lease on `key`, once every node has its copy (a lock is taken once a majority
/// granted it, so the last copy may still be on its way).
pub async fn hold(cluster: &Cluster, worker: &Runtime, key: &str, options: &Options) -> Lease {
    let lease = worker
        .lock_with(key, options)
        .await
        .expect("nodes up")
        .expect("the key is free");
    let deadline = Instant::now() + PATIENCE;
    while (0..cluster.len())
        .any(|i| value_on(cluster, i, lease.key()).as_deref() != Some(lease.token()))
    {
        assert!(
            Instant::now() < deadline,
            "the lease never reached every node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lease
}

/// The value of the Redis key `redis_key` on node `node`.
pub fn value_on(cluster: &Cluster, node: usize, redis_key: &str) -> Option<String> {
    let mut connection = cluster.connection(node).expect("connect to node");
    redis::cmd("GET")
        .arg(redis_key)
        .query(&mut connection)
        .expect("GET")
}

/// Node `i`'s `uptime_in_seconds`.
pub fn uptime_secs(cluster: &Cluster, i: usize) -> u64 {
    let mut connection = cluster.connection(i).expect("connect to node");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("uptime_in_seconds:"))
        .and_then(|uptime| uptime.trim().parse().ok())
        .expect("an uptime")
}
