//! Tests of the testkit against real `redis-server` processes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cluster_singleton_testkit::{Cluster, Error};

/// How long a killed process may take to disappear.
const GONE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between checks for a process to be gone.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Read timeout that a frozen node must exceed.
const SHORT_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Time for a wrongly set death signal to kill a node after its thread ends.
const DEATH_SIGNAL_GRACE: Duration = Duration::from_millis(200);
/// Environment variable that turns `orphan_helper` into the helper process.
const ORPHAN_HELPER_ENV: &str = "CLUSTER_SINGLETON_TESTKIT_ORPHAN_HELPER";
/// Marks the helper's lines that give a node's pid and directory.
const NODE_LINE_PREFIX: &str = "NODE ";
/// How many nodes the helper process starts.
const ORPHAN_HELPER_NODES: usize = 2;
/// How long the helper process waits to be killed before giving up.
const ORPHAN_HELPER_LIFETIME: Duration = Duration::from_secs(60);

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

fn run_id(cluster: &Cluster, i: usize) -> String {
    let mut con = cluster.connection(i).unwrap();
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .expect("INFO server has a run_id")
        .trim()
        .to_owned()
}

/// True once `pid` is gone, or is a zombie nobody reaped yet (it has stopped
/// running then; in a container, PID 1 may be slow to reap).
fn process_is_gone(pid: u32) -> bool {
    let raw = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: signal 0 only checks whether the process exists.
    if unsafe { libc::kill(raw, 0) } == -1 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The temporary directory of the node running as `pid`: redis-server chdirs
/// into its `--dir`, which lies in the node's temporary directory.
fn node_dir(pid: u32) -> PathBuf {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    cwd.parent().unwrap().to_owned()
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + GONE_DEADLINE;
    while !process_is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still runs after {GONE_DEADLINE:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

#[test]
fn three_nodes_store_keys_independently() {
    let cluster = Cluster::start(3).unwrap();
    assert_eq!(cluster.len(), 3);
    assert!(!cluster.is_empty());
    for (i, url) in cluster.urls().iter().enumerate() {
        assert_eq!(*url, format!("redis://127.0.0.1:{}", cluster.port(i)));
        assert!(cluster.pid(i).is_some());
        let mut con = cluster.connection(i).unwrap();
        redis::cmd("SET")
            .arg("key")
            .arg(format!("node-{i}"))
            .exec(&mut con)
            .unwrap();
    }
    for i in 0..3 {
        let mut con = cluster.connection(i).unwrap();
        let value: String = redis::cmd("GET").arg("key").query(&mut con).unwrap();
        assert_eq!(value, format!("node-{i}"));
    }
    let mut ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    assert!(cluster.log(0).contains("Ready to accept connections"));
}

#[test]
fn zero_nodes_is_empty() {
    let cluster = Cluster::start(0).unwrap();
    assert!(cluster.is_empty());
    assert!(cluster.urls().is_empty());
}

#[test]
fn frozen_node_times_out_until_resumed() {
    let mut cluster = Cluster::start(1).unwrap();
    let mut con = cluster.connection(0).unwrap();
    con.set_read_timeout(Some(SHORT_READ_TIMEOUT)).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    cluster.freeze(0).unwrap();
    cluster.freeze(0).unwrap(); // idempotent
    assert!(cluster.pid(0).is_some());
    let started = Instant::now();
    assert!(ping(&mut con).is_err(), "a frozen node answered PING");
    assert!(started.elapsed() >= SHORT_READ_TIMEOUT);

    cluster.resume(0).unwrap();
    // The old connection has an unread PONG in flight; use a new one.
    let mut con = cluster.connection(0).unwrap();
    con.set_read_timeout(Some(SHORT_READ_TIMEOUT)).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    cluster.resume(0).unwrap(); // harmless on a running node
}

#[test]
fn frozen_node_is_killed_by_drop() {
    let mut cluster = Cluster::start(1).unwrap();
    let pid = cluster.pid(0).unwrap();
    cluster.freeze(0).unwrap();
    drop(cluster);
    wait_until_gone(pid);
}

#[test]
fn kill_then_start_node_keeps_the_port() {
    let mut cluster = Cluster::start(2).unwrap();
    let port = cluster.port(1);
    let old_pid = cluster.pid(1).unwrap();

    cluster.kill(1).unwrap();
    cluster.kill(1).unwrap(); // idempotent
    assert_eq!(cluster.pid(1), None);
    wait_until_gone(old_pid);
    assert!(matches!(
        cluster.connection(1),
        Err(Error::NotRunning { node: 1 })
    ));
    assert!(matches!(
        cluster.freeze(1),
        Err(Error::NotRunning { node: 1 })
    ));
    assert!(redis::Client::open(cluster.url(1))
        .unwrap()
        .get_connection()
        .is_err());
    // The other node is unaffected.
    assert_eq!(ping(&mut cluster.connection(0).unwrap()).unwrap(), "PONG");

    cluster.start_node(1).unwrap();
    assert_eq!(cluster.port(1), port);
    assert_ne!(cluster.pid(1), Some(old_pid));
    assert_eq!(ping(&mut cluster.connection(1).unwrap()).unwrap(), "PONG");
    assert!(matches!(
        cluster.start_node(1),
        Err(Error::AlreadyRunning { node: 1 })
    ));
}

#[test]
fn restart_forgets_keys_and_changes_run_id() {
    let mut cluster = Cluster::start(1).unwrap();
    let port = cluster.port(0);
    let mut con = cluster.connection(0).unwrap();
    redis::cmd("SET")
        .arg("lock")
        .arg("me")
        .exec(&mut con)
        .unwrap();
    // Even an explicit snapshot must not survive a restart.
    redis::cmd("SAVE").exec(&mut con).unwrap();
    let before = run_id(&cluster, 0);

    cluster.restart(0).unwrap();
    assert_eq!(cluster.port(0), port);
    let mut con = cluster.connection(0).unwrap();
    let value: Option<String> = redis::cmd("GET").arg("lock").query(&mut con).unwrap();
    assert_eq!(value, None);
    let size: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 0);
    assert_ne!(run_id(&cluster, 0), before);

    // Restart also works on a killed node.
    cluster.kill(0).unwrap();
    cluster.restart(0).unwrap();
    assert!(cluster.pid(0).is_some());
    let log = cluster.log(0);
    assert_eq!(
        log.matches("cluster-singleton-testkit: starting").count(),
        3
    );
}

#[test]
fn drop_ends_processes_and_removes_directories() {
    let cluster = Cluster::start(3).unwrap();
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
    let dirs: Vec<PathBuf> = pids.iter().map(|&pid| node_dir(pid)).collect();
    for dir in &dirs {
        assert!(dir.join("redis.log").is_file(), "{}", dir.display());
    }
    drop(cluster);
    for pid in pids {
        wait_until_gone(pid);
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[test]
fn password_is_required_and_in_the_url() {
    let password = "s3cret p@ss";
    let cluster = Cluster::builder()
        .nodes(2)
        .password(password)
        .start()
        .unwrap();
    let url = cluster.url(1);
    assert_eq!(
        url,
        format!("redis://:s3cret%20p%40ss@127.0.0.1:{}", cluster.port(1))
    );
    assert_eq!(ping(&mut cluster.connection(1).unwrap()).unwrap(), "PONG");
    // Through the URL, as users' code would connect.
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    // Without the password, commands are refused.
    let mut anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.port(1)))
        .unwrap()
        .get_connection()
        .unwrap();
    let refused = ping(&mut anonymous).unwrap_err();
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
}

#[test]
fn extra_args_reach_every_node() {
    let cluster = Cluster::builder()
        .nodes(2)
        .arg("--maxclients")
        .arg("123")
        .start()
        .unwrap();
    for i in 0..2 {
        let mut con = cluster.connection(i).unwrap();
        let config: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxclients")
            .query(&mut con)
            .unwrap();
        assert_eq!(config, ["maxclients", "123"]);
    }
}

#[test]
fn bad_argument_fails_fast_with_the_log() {
    let started = Instant::now();
    let err = Cluster::builder()
        .arg("--no-such-option")
        .arg("1")
        .start()
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Exited { .. }), "{message}");
    assert!(message.contains("no-such-option"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "{message}");
}

#[test]
fn taken_port_is_reported_on_start_node() {
    let mut cluster = Cluster::start(1).unwrap();
    cluster.kill(0).unwrap();
    let squatter = TcpListener::bind(("127.0.0.1", cluster.port(0))).unwrap();
    let err = cluster.start_node(0).unwrap_err();
    assert!(err.to_string().contains("Address already in use"), "{err}");
    assert_eq!(cluster.pid(0), None);
    drop(squatter);
    cluster.start_node(0).unwrap();
}

#[test]
fn nodes_outlive_the_thread_that_started_them() {
    // Guards the spawner thread: with PR_SET_PDEATHSIG set from the calling
    // thread, the nodes would die as soon as this thread ends.
    let cluster = thread::spawn(|| Cluster::start(1).unwrap()).join().unwrap();
    // The death signal lands just after join returns; give it time.
    thread::sleep(DEATH_SIGNAL_GRACE);
    assert_eq!(ping(&mut cluster.connection(0).unwrap()).unwrap(), "PONG");
}

/// Run as a separate process by `nodes_die_with_a_killed_test_process`:
/// starts a cluster, reports each node's pid and directory, and waits to be
/// SIGKILLed. Does nothing in a normal test run.
#[test]
fn orphan_helper() {
    if std::env::var_os(ORPHAN_HELPER_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start(ORPHAN_HELPER_NODES).unwrap();
    for i in 0..cluster.len() {
        let pid = cluster.pid(i).unwrap();
        let dir = node_dir(pid);
        println!("{NODE_LINE_PREFIX}{pid} {}", dir.display());
    }
    thread::sleep(ORPHAN_HELPER_LIFETIME);
}

#[test]
fn nodes_die_with_a_killed_test_process() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    // The harness prints "test orphan_helper ... " before the first line.
    let nodes: Vec<(u32, PathBuf)> = stdout
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| {
            let (pid, dir) = l.split_once(NODE_LINE_PREFIX)?.1.split_once(' ')?;
            Some((pid.parse().unwrap(), PathBuf::from(dir)))
        })
        .take(ORPHAN_HELPER_NODES)
        .collect();
    assert_eq!(
        nodes.len(),
        ORPHAN_HELPER_NODES,
        "the helper reports its nodes"
    );

    // SIGKILL: no Drop, no cleanup code runs in the helper.
    helper.kill().unwrap();
    helper.wait().unwrap();
    for (pid, dir) in nodes {
        wait_until_gone(pid);
        // Only the directories are left behind; tidy up after the helper.
        std::fs::remove_dir_all(dir).unwrap();
    }
}
