//! A fleet of worker processes fires the same `#[singleton]` job on the same ticks, while the demo
//! kills a Redis node and then the worker that holds the lock.
//!
//! ```text
//! cargo run --example fleet
//! REDIS_URLS=redis://10.0.0.1,redis://10.0.0.2,redis://10.0.0.3 cargo run --example fleet
//! ```
//!
//! What it shows, in about 15 seconds:
//!
//! - **Mutual exclusion.** Four worker processes (this program, run again with `--worker <id>`)
//!   call the job at the same instant every second. One of them runs the 600 ms body; the others
//!   find the lock busy and skip. From the workers' own timestamps the demo checks that no tick ran
//!   twice and that no two bodies overlapped.
//! - **Fault tolerance.** At tick 4 + 300 ms it kills one of the three Redis nodes (SIGKILL). The
//!   ticks after that still run, on 2 of 3 nodes.
//! - **No deadlock.** At tick 7 + 300 ms it kills the worker that is running tick 7's body
//!   (SIGKILL: no release, no goodbye). It watches the remaining nodes until the lock key is gone
//!   and checks that this took no longer than the ttl (1.5 s): the tick right after the kill finds
//!   the dead holder's lease and skips, the one after runs again.
//!
//! Each worker prints one line per event (`start tick=3 worker=2 at_ms=..`, `end ..`,
//! `skipped ..`, `error .. msg=..`). The parent reads them and prints a line per tick, such as
//! `tick  3  ran: w2 at +3..+604 ms  skipped: w0 w1 w3` (when the body ran, counted from the
//! tick), then a summary of the checks. The exit code is non-zero when a check fails, so the demo
//! doubles as a test.
//!
//! Without `REDIS_URLS` it starts three local `redis-server`s with the test kit. With it, it uses
//! those nodes and skips the Redis node kill, since it does not own them. Workers exit when the
//! parent does, even if it is killed: each watches its stdin, a pipe from the parent.

use std::error::Error;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::process::{self, Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_singleton::{runtime::Config, singleton, Outcome};
use cluster_singleton_testkit::Cluster;

/// How many worker processes fire the job.
const WORKERS: usize = 4;
/// How many Redis nodes the demo starts when `REDIS_URLS` is not set.
const REDIS_NODES: usize = 3;
/// The environment variable that lists Redis nodes to use instead (comma-separated URLs).
const URLS_ENV: &str = "REDIS_URLS";

/// The Redis key of the job (the runtime puts `singleton:lock:` before the attribute's key).
const KEY: &str = "singleton:lock:fleet-job";
/// The job's ttl, as written in its attribute (which takes a literal).
const TTL_MS: u64 = 1_500;
/// How long the job's body takes: long enough that the others, firing at the same tick, find the
/// lock busy, and short enough to end before the next tick.
const BODY_MS: u64 = 600;
/// How long one Redis node may take to answer before its vote counts as missing.
const NODE_TIMEOUT: Duration = Duration::from_millis(100);

/// How many times the job fires, and how far apart.
const TICKS: u64 = 12;
const TICK_MS: u64 = 1_000;
/// From launching the workers to the first tick: room for them to start and connect, and for
/// the Redis nodes to count as up. A node's vote counts only once it has been up for the restart
/// grace (by default the longest ttl of the fleet, `Config::max_ttl`, here the job's), so that a
/// node that restarted and forgot its locks cannot grant them again; the nodes the demo starts
/// are that new. Redis gives its uptime in whole seconds and the runtime takes a node's start a
/// second later than it says: two seconds of room.
const FIRST_TICK_DELAY_MS: u64 = TTL_MS + 2_000;

/// How long a worker may take, after its last tick, to give back what it holds.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(1);

/// How far into a tick the faults strike: while that tick's body runs.
const FAULT_OFFSET_MS: u64 = 300;
/// At this tick (+ [`FAULT_OFFSET_MS`]) a Redis node is killed.
const NODE_KILL_TICK: u64 = 4;
/// Which Redis node is killed.
const KILLED_NODE: usize = 0;
/// At this tick (+ [`FAULT_OFFSET_MS`]) the worker running the body is killed.
const HOLDER_KILL_TICK: u64 = 7;

/// When a tick's line is printed: once its body is over.
const REPORT_AFTER_MS: u64 = 900;
/// How often the demo looks at the lock key after killing its holder.
const KEY_POLL: Duration = Duration::from_millis(10);
/// How long past the ttl the key may be seen held: the demo's stamps and Redis' clock are read a
/// little apart.
const EXPIRY_MARGIN_MS: u64 = 50;
/// How long to watch the key at most before giving up on it ever going away.
const KEY_WATCH_DEADLINE_MS: u64 = 3 * TTL_MS;
/// Connect and read timeout of the demo's own Redis connections.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the workers get to exit after the last tick before they are killed.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// The first argument of a worker process.
const WORKER_FLAG: &str = "--worker";

fn main() -> Result<ExitCode, Box<dyn Error>> {
    match WorkerArgs::from_command_line()? {
        Some(args) => {
            run_worker(args)?;
            Ok(ExitCode::SUCCESS)
        }
        None => run_fleet(),
    }
}

// ---------------------------------------------------------------------------------------------
// The worker: one "machine" of the fleet.
// ---------------------------------------------------------------------------------------------

#[singleton(key = "fleet-job", ttl = "1500ms")]
async fn job(tick: u64, worker: usize) {
    say(tick, worker, What::Start(unix_ms()));
    tokio::time::sleep(Duration::from_millis(BODY_MS)).await;
    say(tick, worker, What::End(unix_ms()));
}

/// What the parent tells a worker on its command line.
struct WorkerArgs {
    id: usize,
    first_tick_ms: u64,
    urls: Vec<String>,
}

impl WorkerArgs {
    /// `--worker <id> --first-tick-ms <unix ms> --urls <url,url,..>`, or `None` for the parent.
    fn from_command_line() -> Result<Option<WorkerArgs>, Box<dyn Error>> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) != Some(WORKER_FLAG) {
            return Ok(None);
        }
        let value = |flag: &str| {
            args.iter()
                .position(|arg| arg == flag)
                .and_then(|i| args.get(i + 1))
                .ok_or_else(|| format!("worker: missing `{flag} <value>`"))
        };
        Ok(Some(WorkerArgs {
            id: value(WORKER_FLAG)?.parse()?,
            first_tick_ms: value("--first-tick-ms")?.parse()?,
            urls: value("--urls")?.split(',').map(str::to_owned).collect(),
        }))
    }

    fn to_command_line(&self) -> Vec<String> {
        vec![
            WORKER_FLAG.to_owned(),
            self.id.to_string(),
            "--first-tick-ms".to_owned(),
            self.first_tick_ms.to_string(),
            "--urls".to_owned(),
            self.urls.join(","),
        ]
    }
}

fn run_worker(args: WorkerArgs) -> Result<(), Box<dyn Error>> {
    exit_when_stdin_closes()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fire_on_every_tick(args))
}

/// The parent holds the other end of a worker's stdin. When it closes, because the parent is done
/// or died, the worker exits: no worker outlives the demo.
fn exit_when_stdin_closes() -> io::Result<()> {
    thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            // Returns at end of file, or on an error, which means the same here.
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            process::exit(1);
        })?;
    Ok(())
}

async fn fire_on_every_tick(args: WorkerArgs) -> Result<(), Box<dyn Error>> {
    // Every machine of a fleet gives the same longest ttl: here the job's, the only one.
    Config::new(&args.urls)
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(Duration::from_millis(TTL_MS))
        .init()
        .await?;
    let worker = args.id;
    for tick in 1..=TICKS {
        let fire_at = tick_at(args.first_tick_ms, tick);
        tokio::time::sleep(Duration::from_millis(fire_at.saturating_sub(unix_ms()))).await;
        match job(tick, worker).await {
            // The body printed its own start and end.
            Ok(Outcome::Ran(())) => {}
            Ok(Outcome::Skipped(_)) => say(tick, worker, What::Skipped),
            Err(err) => say(
                tick,
                worker,
                What::Failed(err.to_string().replace('\n', " ")),
            ),
        }
    }
    // Gives back anything still held or on its way before the process exits.
    cluster_singleton::runtime::shutdown(SHUTDOWN_WITHIN).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What workers tell the parent: one line per event on stdout.
// ---------------------------------------------------------------------------------------------

/// One line of a worker's stdout, such as `start tick=3 worker=2 at_ms=1700000000123`.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    tick: u64,
    worker: usize,
    what: What,
}

#[derive(Debug, Clone, PartialEq)]
enum What {
    /// The body began, at this wall-clock time (unix ms), just after the lock was taken.
    Start(u64),
    /// The body ended, at this time, just before the lock is released.
    End(u64),
    /// Another holder had the lock.
    Skipped,
    /// The call failed: Redis could not decide.
    Failed(String),
}

/// Prints one event for the parent.
fn say(tick: u64, worker: usize, what: What) {
    println!("{}", Event { tick, worker, what });
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tick, worker) = (self.tick, self.worker);
        match &self.what {
            What::Start(at_ms) => write!(f, "start tick={tick} worker={worker} at_ms={at_ms}"),
            What::End(at_ms) => write!(f, "end tick={tick} worker={worker} at_ms={at_ms}"),
            What::Skipped => write!(f, "skipped tick={tick} worker={worker}"),
            // `msg` goes last: it is the rest of the line, spaces and all.
            What::Failed(msg) => write!(f, "error tick={tick} worker={worker} msg={msg}"),
        }
    }
}

impl Event {
    /// Reads back what `Display` wrote; `None` for any other line.
    fn parse(line: &str) -> Option<Event> {
        let (head, msg) = match line.split_once(" msg=") {
            Some((head, msg)) => (head, Some(msg.to_owned())),
            None => (line, None),
        };
        let mut words = head.split(' ');
        let kind = words.next()?;
        let (mut tick, mut worker, mut at_ms) = (None, None, None);
        for word in words {
            let (name, value) = word.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match name {
                "tick" => tick = Some(value),
                "worker" => worker = Some(value),
                "at_ms" => at_ms = Some(value),
                _ => return None,
            }
        }
        let what = match (kind, at_ms, msg) {
            ("start", Some(at_ms), None) => What::Start(at_ms),
            ("end", Some(at_ms), None) => What::End(at_ms),
            ("skipped", None, None) => What::Skipped,
            ("error", None, Some(msg)) => What::Failed(msg),
            _ => return None,
        };
        let worker = usize::try_from(worker?).ok()?;
        Some(Event {
            tick: tick?,
            worker,
            what,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: Redis nodes, the workers, the faults, the report.
// ---------------------------------------------------------------------------------------------

fn run_fleet() -> Result<ExitCode, Box<dyn Error>> {
    let mut redis = Redis::from_env()?;
    let first_tick_ms = unix_ms() + FIRST_TICK_DELAY_MS;
    let (reports, inbox) = mpsc::channel();
    let mut fleet = Fleet::spawn(&redis.urls(), first_tick_ms, reports)?;
    print_header(&redis, &fleet);

    let mut log = Log::new(inbox);
    let (mut node_kill, mut holder_kill) = (None, None);
    for tick in 1..=TICKS {
        let fired_ms = tick_at(first_tick_ms, tick);
        if tick == NODE_KILL_TICK {
            log.collect_until(fired_ms + FAULT_OFFSET_MS);
            node_kill = kill_redis_node(&mut redis)?;
        }
        if tick == HOLDER_KILL_TICK {
            log.collect_until(fired_ms + FAULT_OFFSET_MS);
            holder_kill = kill_holder(&mut fleet, &log, &redis, node_kill.as_ref())?;
        }
        log.collect_until(fired_ms + REPORT_AFTER_MS);
        print!(
            "{}",
            log.tick_report(tick, first_tick_ms, holder_kill.as_ref())
        );
        if let Some(line) = holder_kill.as_mut().and_then(HolderKill::expiry_report) {
            println!("{line}");
        }
    }

    let exits = fleet.stop();
    log.collect_rest();
    if let Some(kill) = &mut holder_kill {
        kill.wait_for_watch();
    }
    let faults = (node_kill.as_ref(), holder_kill.as_ref());
    let checks = run_checks(&log.bodies(), first_tick_ms, faults, &exits);
    print_summary(&log, &checks);
    let passed = checks.iter().all(|check| check.passed);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_header(redis: &Redis, fleet: &Fleet) {
    let source = match redis {
        Redis::Local(_) => "local, started for this run",
        Redis::External(_) => "from REDIS_URLS",
    };
    println!(
        "fleet demo: {WORKERS} worker processes fire job `fleet-job` (ttl {TTL_MS} ms, \
         body {BODY_MS} ms) on {TICKS} ticks {TICK_MS} ms apart"
    );
    println!("redis nodes ({source}): {}", redis.addresses().join(", "));
    println!("workers: {}", fleet.describe());
    println!();
}

/// The Redis nodes: started here (ours to kill; dropping the cluster stops them), or given in
/// `REDIS_URLS`.
enum Redis {
    Local(Cluster),
    External(Vec<String>),
}

impl Redis {
    fn from_env() -> Result<Redis, Box<dyn Error>> {
        let Ok(urls) = std::env::var(URLS_ENV) else {
            return Ok(Redis::Local(Cluster::start(REDIS_NODES)?));
        };
        let urls: Vec<String> = urls.split(',').map(|url| url.trim().to_owned()).collect();
        // Bad URLs fail here, before any worker starts, rather than in every worker.
        Config::new(&urls).build()?;
        Ok(Redis::External(urls))
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Redis::Local(cluster) => cluster.urls(),
            Redis::External(urls) => urls.clone(),
        }
    }

    /// `host:port` of each node: fit to print, unlike a URL, which may carry a password.
    fn addresses(&self) -> Vec<String> {
        self.urls().iter().map(|url| address(url)).collect()
    }
}

fn address(url: &str) -> String {
    match redis::Client::open(url) {
        Ok(client) => client.get_connection_info().addr().to_string(),
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// The worker processes, and a thread per worker that reads its stdout.
struct Fleet {
    workers: Vec<Worker>,
}

struct Worker {
    id: usize,
    child: Child,
    /// Held open for as long as the worker should live; see [`exit_when_stdin_closes`].
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    killed: bool,
}

impl Fleet {
    fn spawn(urls: &[String], first_tick_ms: u64, reports: Sender<Report>) -> io::Result<Fleet> {
        let program = std::env::current_exe()?;
        let mut workers = Vec::with_capacity(WORKERS);
        for id in 0..WORKERS {
            let urls = urls.to_vec();
            let args = WorkerArgs {
                id,
                first_tick_ms,
                urls,
            };
            // Should a later spawn fail, the earlier workers' stdin closes and they exit.
            let mut child = Command::new(&program)
                .args(args.to_command_line())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no stdout"))?;
            let reports = reports.clone();
            let reader = thread::Builder::new()
                .name(format!("read-w{id}"))
                .spawn(move || forward_lines(id, stdout, &reports))?;
            let stdin = child.stdin.take();
            let reader = Some(reader);
            workers.push(Worker {
                id,
                child,
                stdin,
                reader,
                killed: false,
            });
        }
        Ok(Fleet { workers })
    }

    fn describe(&self) -> String {
        let workers: Vec<String> = self
            .workers
            .iter()
            .map(|worker| format!("w{} (pid {})", worker.id, worker.child.id()))
            .collect();
        workers.join(", ")
    }

    /// SIGKILLs worker `id` and reaps it; returns its pid.
    fn kill(&mut self, id: usize) -> io::Result<u32> {
        let worker = &mut self.workers[id];
        worker.child.kill()?;
        worker.child.wait()?;
        worker.killed = true;
        Ok(worker.child.id())
    }

    /// Waits for every worker to exit, killing (by pid) any still running after
    /// [`EXIT_DEADLINE`]. Returns a line for each worker that did not exit well on its own.
    fn stop(mut self) -> Vec<String> {
        for worker in &mut self.workers {
            worker.stdin.take(); // tells a worker that is somehow still running to exit
        }
        let deadline = Instant::now() + EXIT_DEADLINE;
        let mut problems = Vec::new();
        for worker in &mut self.workers {
            if let Some(problem) = worker.wait_until(deadline) {
                problems.push(format!("w{}: {problem}", worker.id));
            }
            if let Some(reader) = worker.reader.take() {
                let _ = reader.join();
            }
        }
        problems
    }
}

impl Worker {
    /// Waits for the worker to exit; what went wrong, if anything.
    fn wait_until(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) if self.killed => return None,
                Ok(Some(status)) if status.success() => return None,
                Ok(Some(status)) => return Some(format!("exited with {status}")),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let pid = self.child.id();
                    return Some(format!(
                        "still running after the last tick; killed pid {pid}"
                    ));
                }
                Err(err) => return Some(format!("could not wait for it: {err}")),
            }
        }
    }
}

/// What a reader thread hands the parent: a worker's event, or a line that is not one.
enum Report {
    Event(Event),
    Other { worker: usize, line: String },
}

/// Sends each line of a worker's stdout to the parent until the worker exits.
fn forward_lines(worker: usize, stdout: impl io::Read, reports: &Sender<Report>) {
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let report = match Event::parse(&line) {
            Some(event) => Report::Event(event),
            None => Report::Other { worker, line },
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The faults.
// ---------------------------------------------------------------------------------------------

/// A Redis node the demo killed, and when (unix ms).
struct NodeKill {
    node: usize,
    at_ms: u64,
}

fn kill_redis_node(redis: &mut Redis) -> Result<Option<NodeKill>, Box<dyn Error>> {
    let when = format!("tick {NODE_KILL_TICK} + {FAULT_OFFSET_MS} ms");
    let Redis::Local(cluster) = redis else {
        println!(
            "  >> {when}: no Redis node killed: they come from {URLS_ENV}, not from this demo"
        );
        return Ok(None);
    };
    cluster.kill(KILLED_NODE)?;
    let at_ms = unix_ms();
    let (left, quorum) = (cluster.len() - 1, cluster.len() / 2 + 1);
    println!(
        "  >> {when}: SIGKILL Redis node {KILLED_NODE} ({}); {left} of {} nodes left, \
         a lock needs {quorum}",
        address(&cluster.url(KILLED_NODE)),
        cluster.len(),
    );
    Ok(Some(NodeKill {
        node: KILLED_NODE,
        at_ms,
    }))
}

/// The worker the demo killed in the middle of a body, and the watch on the lock it left behind.
struct HolderKill {
    worker: usize,
    /// When its body started (unix ms): just after it took the lock.
    started_ms: u64,
    at_ms: u64,
    watch: Option<JoinHandle<Result<Expiry, String>>>,
    /// What the watch saw, once it is over.
    expiry: Option<Result<Expiry, String>>,
}

/// Kills the worker running [`HOLDER_KILL_TICK`]'s body, then watches the remaining Redis nodes
/// until the lock it held is gone. `None` when no one is running that body.
fn kill_holder(
    fleet: &mut Fleet,
    log: &Log,
    redis: &Redis,
    node_kill: Option<&NodeKill>,
) -> Result<Option<HolderKill>, Box<dyn Error>> {
    let tick = HOLDER_KILL_TICK;
    let when = format!("tick {tick} + {FAULT_OFFSET_MS} ms");
    let running = log
        .bodies()
        .into_iter()
        .find(|b| b.tick == tick && b.end_ms.is_none());
    let Some(running) = running else {
        println!("  >> {when}: no worker is running tick {tick}'s body, so none is killed");
        return Ok(None);
    };
    // Connect and read the holder's token before the kill, so the watch starts right after it.
    let mut nodes = Vec::new();
    for (i, url) in redis.urls().iter().enumerate() {
        if node_kill.is_some_and(|kill| kill.node == i) {
            continue;
        }
        match connect(url) {
            Ok(node) => nodes.push(node),
            Err(err) => println!("  .. not watching {} for the key: {err}", address(url)),
        }
    }
    let token = holder_token(&mut nodes);

    let worker = running.worker;
    let pid = fleet.kill(worker)?;
    let at_ms = unix_ms();
    println!(
        "  >> {when}: SIGKILL worker w{worker} (pid {pid}) in the middle of tick {tick}'s body"
    );
    let (watch, expiry) = match token {
        Ok(token) => {
            let deadline_ms = at_ms + KEY_WATCH_DEADLINE_MS;
            let watch = thread::Builder::new()
                .name("key-watch".into())
                .spawn(move || watch_until_gone(nodes, &token, deadline_ms))?;
            (Some(watch), None)
        }
        Err(err) => (None, Some(Err(err))),
    };
    let started_ms = running.start_ms;
    Ok(Some(HolderKill {
        worker,
        started_ms,
        at_ms,
        watch,
        expiry,
    }))
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let connection = redis::Client::open(url)?.get_connection_with_timeout(REDIS_TIMEOUT)?;
    connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
    connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(connection)
}

fn get_key(node: &mut redis::Connection) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(KEY).query(node)
}

/// The lock's value, its holder's token, from the first node that has it.
fn holder_token(nodes: &mut [redis::Connection]) -> Result<String, String> {
    for node in nodes {
        match get_key(node) {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(err) => return Err(format!("could not read `{KEY}`: {err}")),
        }
    }
    Err(format!(
        "`{KEY}` was on no reachable Redis node while its holder ran"
    ))
}

/// When the dead holder's lock was last seen and first missed on the remaining nodes (unix ms).
///
/// The check uses `last_held_ms`, taken before a poll that found the key: a poll that the
/// machine runs late can make the key seem to live longer, never to have been seen later.
struct Expiry {
    last_held_ms: u64,
    gone_ms: u64,
}

/// Polls the nodes until none has `token` under the key.
fn watch_until_gone(
    mut nodes: Vec<redis::Connection>,
    token: &str,
    deadline_ms: u64,
) -> Result<Expiry, String> {
    let mut last_held_ms = unix_ms();
    loop {
        let polled_ms = unix_ms();
        let mut held = false;
        for node in &mut nodes {
            let value = get_key(node).map_err(|err| format!("GET {KEY} failed: {err}"))?;
            held |= value.as_deref() == Some(token);
        }
        if !held {
            let gone_ms = unix_ms();
            return Ok(Expiry {
                last_held_ms,
                gone_ms,
            });
        }
        last_held_ms = polled_ms;
        if polled_ms >= deadline_ms {
            return Err(format!("`{KEY}` was still held when the watch gave up"));
        }
        thread::sleep(KEY_POLL);
    }
}

impl HolderKill {
    /// The line that says when the key went away, once the watch is over; only once.
    fn expiry_report(&mut self) -> Option<String> {
        if !self.watch.as_ref()?.is_finished() {
            return None;
        }
        self.wait_for_watch();
        let worker = self.worker;
        Some(match self.expiry.as_ref()? {
            Ok(expiry) => format!(
                "  .. `{KEY}` freed itself {} ms after w{worker} was killed, {} ms after \
                 w{worker} took it (ttl {TTL_MS} ms)",
                expiry.gone_ms.saturating_sub(self.at_ms),
                expiry.gone_ms.saturating_sub(self.started_ms),
            ),
            Err(err) => format!("  .. {err}"),
        })
    }

    fn wait_for_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            let panicked = || Err("the key watch panicked".to_owned());
            self.expiry = Some(watch.join().unwrap_or_else(|_| panicked()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Everything the workers said, and what it adds up to.
// ---------------------------------------------------------------------------------------------

/// Every event from every worker, in the order the parent got them.
struct Log {
    inbox: Receiver<Report>,
    events: Vec<Event>,
}

/// One run of the job's body, from its worker's stamps (unix ms).
struct Body {
    tick: u64,
    worker: usize,
    start_ms: u64,
    /// `None` while it runs, and for good when its worker was killed in the middle.
    end_ms: Option<u64>,
}

impl Log {
    fn new(inbox: Receiver<Report>) -> Log {
        Log {
            inbox,
            events: Vec::new(),
        }
    }

    /// Takes in reports until the wall clock reads `until_ms`.
    fn collect_until(&mut self, until_ms: u64) {
        loop {
            let left = Duration::from_millis(until_ms.saturating_sub(unix_ms()));
            if left.is_zero() {
                return;
            }
            match self.inbox.recv_timeout(left) {
                Ok(report) => self.take(report),
                Err(RecvTimeoutError::Timeout) => return,
                // Every worker is gone; keep to the schedule anyway.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(left),
            }
        }
    }

    /// Takes in what is left once every reader thread has ended.
    fn collect_rest(&mut self) {
        while let Ok(report) = self.inbox.try_recv() {
            self.take(report);
        }
    }

    fn take(&mut self, report: Report) {
        match report {
            Report::Event(event) => self.events.push(event),
            Report::Other { worker, line } => println!("  w{worker} says: {line}"),
        }
    }

    /// Every body that started, by start time.
    fn bodies(&self) -> Vec<Body> {
        let end_of = |tick, worker| {
            self.events.iter().find_map(|event| match event.what {
                What::End(at_ms) if (event.tick, event.worker) == (tick, worker) => Some(at_ms),
                _ => None,
            })
        };
        let mut bodies: Vec<Body> = self
            .events
            .iter()
            .filter_map(|event| match event.what {
                What::Start(start_ms) => Some(Body {
                    tick: event.tick,
                    worker: event.worker,
                    start_ms,
                    end_ms: end_of(event.tick, event.worker),
                }),
                _ => None,
            })
            .collect();
        bodies.sort_by_key(|body| body.start_ms);
        bodies
    }

    /// The events of one tick with `what` matching, by worker.
    fn at_tick(&self, tick: u64, matches: fn(&What) -> bool) -> Vec<&Event> {
        let mut events: Vec<&Event> = self
            .events
            .iter()
            .filter(|event| event.tick == tick && matches(&event.what))
            .collect();
        events.sort_by_key(|event| event.worker);
        events
    }

    /// One line per tick: who ran, who skipped, who failed (and why), who said nothing.
    fn tick_report(
        &self,
        tick: u64,
        first_tick_ms: u64,
        holder_kill: Option<&HolderKill>,
    ) -> String {
        let bodies: Vec<Body> = self
            .bodies()
            .into_iter()
            .filter(|b| b.tick == tick)
            .collect();
        let skipped = self.at_tick(tick, |what| matches!(what, What::Skipped));
        let failed = self.at_tick(tick, |what| matches!(what, What::Failed(_)));
        let killed = holder_kill.map(|kill| kill.worker);

        // When the body ran, counted from the tick: lock latency, then the body's length.
        let since_tick = |at_ms: u64| at_ms.saturating_sub(tick_at(first_tick_ms, tick));
        let ran: Vec<String> = bodies
            .iter()
            .map(|body| {
                let (worker, start) = (body.worker, since_tick(body.start_ms));
                match body.end_ms {
                    Some(end_ms) => format!("w{worker} at +{start}..+{} ms", since_tick(end_ms)),
                    None if killed == Some(worker) => format!("w{worker} at +{start} ms, killed"),
                    None => format!("w{worker} at +{start} ms, still running"),
                }
            })
            .collect();
        let ran = if ran.is_empty() {
            "nobody".to_owned()
        } else {
            ran.join(" ")
        };
        let mut line = format!(
            "tick {tick:>2}  ran: {ran:<22} skipped: {}",
            names(&skipped)
        );
        if !failed.is_empty() {
            line += &format!("  errors: {}", names(&failed));
        }
        let heard_from = |worker: usize| {
            let said = |event: &&Event| event.worker == worker;
            bodies.iter().any(|b| b.worker == worker)
                || skipped.iter().any(said)
                || failed.iter().any(said)
        };
        let gone_before = |worker| {
            holder_kill.is_some_and(|kill| kill.worker == worker) && tick > HOLDER_KILL_TICK
        };
        let silent: Vec<String> = (0..WORKERS)
            .filter(|&worker| !heard_from(worker) && !gone_before(worker))
            .map(|worker| format!("w{worker}"))
            .collect();
        if !silent.is_empty() {
            line += &format!("  no word from: {}", silent.join(" "));
        }
        line.push('\n');
        for event in failed {
            if let What::Failed(msg) = &event.what {
                line += &format!("          w{}: {msg}\n", event.worker);
            }
        }
        line
    }
}

// ---------------------------------------------------------------------------------------------
// The checks: the promises, from the workers' own stamps and the key watch.
// ---------------------------------------------------------------------------------------------

/// One line of the summary; any that did not pass makes the exit code non-zero.
struct Check {
    passed: bool,
    text: String,
}

fn check(passed: bool, text: impl Into<String>) -> Check {
    Check {
        passed,
        text: text.into(),
    }
}

fn run_checks(
    bodies: &[Body],
    first_tick_ms: u64,
    (node_kill, holder_kill): (Option<&NodeKill>, Option<&HolderKill>),
    exits: &[String],
) -> Vec<Check> {
    let mut checks = vec![at_most_once(bodies), no_overlap(bodies, holder_kill)];
    checks.extend(dead_holder(bodies, first_tick_ms, holder_kill));
    checks.extend(node_kill.map(|kill| went_on_after(bodies, kill)));
    checks.push(if exits.is_empty() {
        check(
            true,
            "every worker not killed by the demo ran to the end and exited on its own",
        )
    } else {
        check(
            false,
            format!("workers that did not end well: {}", exits.join("; ")),
        )
    });
    checks
}

fn at_most_once(bodies: &[Body]) -> Check {
    let runs = |tick: &u64| bodies.iter().filter(|body| body.tick == *tick).count();
    let twice: Vec<u64> = (1..=TICKS).filter(|tick| runs(tick) > 1).collect();
    let ran = (1..=TICKS).filter(|tick| runs(tick) > 0).count();
    if twice.is_empty() {
        check(
            true,
            format!("every tick ran at most once ({ran} of {TICKS} ran)"),
        )
    } else {
        check(false, format!("ticks that ran more than once: {twice:?}"))
    }
}

/// Sorted by start, each body must start after every earlier one ended. A body whose worker was
/// killed ends at the kill; one that never ended for another reason never ends.
fn no_overlap(bodies: &[Body], holder_kill: Option<&HolderKill>) -> Check {
    let killed_at = |body: &Body| {
        holder_kill
            .filter(|kill| kill.worker == body.worker && kill.started_ms == body.start_ms)
            .map(|kill| kill.at_ms)
    };
    let end_of = |body: &Body| body.end_ms.or_else(|| killed_at(body)).unwrap_or(u64::MAX);
    let mut latest: Option<&Body> = None;
    let mut smallest_gap = u64::MAX;
    for body in bodies {
        if let Some(earlier) = latest {
            let Some(gap) = body.start_ms.checked_sub(end_of(earlier)) else {
                let text = format!(
                    "bodies overlapped: w{} started tick {} while w{}'s body of tick {} ran",
                    body.worker, body.tick, earlier.worker, earlier.tick
                );
                return check(false, text);
            };
            smallest_gap = smallest_gap.min(gap);
        }
        if latest.is_none_or(|earlier| end_of(body) > end_of(earlier)) {
            latest = Some(body);
        }
    }
    check(
        true,
        format!(
            "no two bodies overlapped ({} bodies; the closest start came {smallest_gap} ms after \
             the previous end)",
            bodies.len()
        ),
    )
}

/// After its holder was killed, the lease blocked the key, and for no longer than the ttl.
fn dead_holder(bodies: &[Body], first_tick_ms: u64, kill: Option<&HolderKill>) -> Vec<Check> {
    let Some(kill) = kill else {
        let text = format!("no holder was killed: nobody was running tick {HOLDER_KILL_TICK}");
        return vec![check(false, text)];
    };
    let expiry = match &kill.expiry {
        Some(Ok(expiry)) => expiry,
        Some(Err(err)) => return vec![check(false, err.clone())],
        None => return vec![check(false, "the key was not watched")],
    };
    let since_taken = |at_ms: u64| at_ms.saturating_sub(kill.started_ms);
    let (last_held, gone) = (
        since_taken(expiry.last_held_ms),
        since_taken(expiry.gone_ms),
    );
    let within_ttl = last_held <= TTL_MS + EXPIRY_MARGIN_MS;
    let expired = check(
        within_ttl,
        format!(
            "the dead holder's lease {} its ttl of {TTL_MS} ms: last seen {last_held} ms and \
             gone {gone} ms after it was taken, {} ms after the kill",
            if within_ttl {
                "freed itself within"
            } else {
                "outlived"
            },
            expiry.gone_ms.saturating_sub(kill.at_ms)
        ),
    );

    let lease = kill.at_ms..expiry.gone_ms;
    let blocked: Vec<u64> = (HOLDER_KILL_TICK + 1..=TICKS)
        .filter(|tick| lease.contains(&tick_at(first_tick_ms, *tick)))
        .collect();
    let intruders: Vec<String> = bodies
        .iter()
        .filter(|body| lease.contains(&body.start_ms))
        .map(|body| format!("w{} at tick {}", body.worker, body.tick))
        .collect();
    let respected = if intruders.is_empty() {
        check(
            true,
            format!(
                "ticks blocked by the dead holder's lease: {blocked:?} (expected [{}]); \
                 nobody ran while it lived",
                HOLDER_KILL_TICK + 1
            ),
        )
    } else {
        let text = format!(
            "the dead holder's lease was taken early by {}",
            intruders.join(", ")
        );
        check(false, text)
    };
    vec![expired, respected]
}

/// After a Redis node was killed, the remaining majority still granted locks.
fn went_on_after(bodies: &[Body], kill: &NodeKill) -> Check {
    let mut ran: Vec<u64> = bodies
        .iter()
        .filter(|body| body.start_ms > kill.at_ms)
        .map(|body| body.tick)
        .collect();
    ran.dedup();
    check(
        !ran.is_empty(),
        format!(
            "locking went on with {} of {REDIS_NODES} Redis nodes after node {} was killed: \
             ticks {ran:?} ran",
            REDIS_NODES - 1,
            kill.node
        ),
    )
}

fn print_summary(log: &Log, checks: &[Check]) {
    let count = |matches: fn(&What) -> bool| log.events.iter().filter(|e| matches(&e.what)).count();
    let ran = count(|what| matches!(what, What::Start(_)));
    let skipped = count(|what| matches!(what, What::Skipped));
    let failed = count(|what| matches!(what, What::Failed(_)));
    println!();
    println!("summary: {ran} calls ran the body, {skipped} skipped it (busy), {failed} failed");
    for check in checks {
        let mark = if check.passed { "ok" } else { "FAIL" };
        println!("  [{mark:^4}] {}", check.text);
    }
    if checks.iter().all(|check| check.passed) {
        println!("all checks passed");
    } else {
        println!("some checks FAILED");
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------------

/// The wall clock in milliseconds since the Unix epoch: the one clock all processes share.
fn unix_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// When tick `tick` (counted from 1) fires.
fn tick_at(first_tick_ms: u64, tick: u64) -> u64 {
    first_tick_ms + (tick - 1) * TICK_MS
}

/// `w0 w2`, or `-` for no one.
fn names(events: &[&Event]) -> String {
    if events.is_empty() {
        return "-".to_owned();
    }
    let names: Vec<String> = events
        .iter()
        .map(|event| format!("w{}", event.worker))
        .collect();
    names.join(" ")
}
