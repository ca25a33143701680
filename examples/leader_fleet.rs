//! The second demo: a fleet of processes with a cron schedule every second and an elected
//! leader, while the demo SIGKILLs the leader and freezes a Redis node.
//!
//! ```text
//! ./scripts/demo-leader            # or: cargo run --features cron --example leader_fleet
//! ```
//!
//! Three worker processes (this program, run again with `--worker <id>`) each:
//!
//! - fire the same `#[singleton]` job on every second through `cluster_singleton::cron` (every
//!   machine fires; the tick's done marker makes it run once per tick);
//! - campaign for leadership of one key, and print each `Elected` / `Revoked` with the instant
//!   (`CLOCK_MONOTONIC`, the same clock in every process of the machine).
//!
//! Mid-way the demo SIGKILLs the leader, then freezes one of the three Redis nodes (SIGSTOP) for
//! three seconds. It prints one line per tick (who ran it; who found it `busy`, `done` or lost a
//! `split` vote), then checks
//! that every tick ran exactly once (or names the ticks lost while no quorum existed, or while
//! the killed leader's lock on a tick had not yet run out with its ttl), that at
//! most one process led at any instant, that every new leader's fencing token is larger than
//! the last, and how long the hand-over took after the kill. The exit code is non-zero when a
//! check fails, so the demo doubles as a test.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{self, BufRead, BufReader};
use std::process::{self, Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_singleton::runtime::{Config, LeaderEvent};
use cluster_singleton::{cron, singleton, Outcome, Skip};
use cluster_singleton_testkit::Cluster;

/// Worker processes.
const WORKERS: usize = 3;
/// The leader's lease: a killed leader is replaced about this long after it died.
const LEADER_TTL: Duration = Duration::from_secs(2);
/// When, from the start of the workers, the leader is killed.
const KILL_LEADER_AT: Duration = Duration::from_secs(7);
/// When a Redis node is frozen, and for how long.
const FREEZE_NODE_AT: Duration = Duration::from_secs(11);
const FREEZE_FOR: Duration = Duration::from_secs(3);
/// How long the fleet runs.
const RUN_FOR: Duration = Duration::from_secs(18);
/// The node that is frozen.
const FROZEN_NODE: usize = 2;
/// How long a Redis node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_millis(100);
/// Ticks before this long after the start, and in the last second, are not checked: the
/// workers are still starting, or already stopping.
const SETTLE: Duration = Duration::from_secs(3);

const WORKER_FLAG: &str = "--worker";

fn main() -> Result<ExitCode, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(WORKER_FLAG) {
        let id: usize = args.get(2).ok_or("--worker <id> <urls>")?.parse()?;
        let urls: Vec<String> = args
            .get(3)
            .ok_or("--worker <id> <urls>")?
            .split(',')
            .map(str::to_owned)
            .collect();
        run_worker(id, urls)?;
        return Ok(ExitCode::SUCCESS);
    }
    run_fleet()
}

/// The tick job's ttl: when the leader is killed while it runs a tick, the lock stays taken
/// this long, and the ticks in between find it busy everywhere.
const TICK_TTL: Duration = Duration::from_secs(3);

/// The scheduled job: its body takes a moment, so that the others find the lock busy, then says
/// which tick it ran for.
#[singleton(key = "leader-demo-tick", ttl = "3s")]
async fn tick_job() -> u64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    unix_ms(cron::current_tick().expect("called by the schedule"))
}

fn run_worker(id: usize, urls: Vec<String>) -> Result<(), Box<dyn Error>> {
    // The parent's pipe closes when it exits, even when it is killed: leave with it.
    thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        Config::new(urls)
            .node_timeout(NODE_TIMEOUT)
            .restart_grace(Duration::ZERO) // the demo's nodes were started just now, empty
            .max_ttl(Duration::from_secs(3))
            .holder_id(format!("w{id}"))
            .init()
            .await?;
        let leadership = cluster_singleton::runtime::campaign("leader-demo", LEADER_TTL)?;
        let mut events = leadership.events();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                match event {
                    LeaderEvent::Elected { fencing_token } => {
                        println!("elected {} {fencing_token}", monotonic_ns())
                    }
                    LeaderEvent::Revoked { reason } => {
                        println!("revoked {} {reason}", monotonic_ns())
                    }
                    _ => {}
                }
            }
        });
        cron::Schedule::new()
            .job("* * * * * *", || async {
                let tick = cron::current_tick().map_or(0, unix_ms);
                match tick_job().await {
                    Ok(Outcome::Ran(ran)) => println!("ran {ran}"),
                    Ok(Outcome::Skipped(Skip::Busy)) => println!("busy {tick}"),
                    Ok(Outcome::Skipped(Skip::AlreadyDone { .. })) => println!("done {tick}"),
                    Ok(Outcome::Skipped(Skip::SplitVote { .. })) => println!("split {tick}"),
                    Ok(Outcome::Skipped(_)) => println!("skipped {tick}"),
                    Err(err) => println!("error {tick} {}", err.to_string().replace('\n', " ")),
                }
            })
            .run()
            .await?;
        drop(leadership);
        Ok::<(), Box<dyn Error>>(())
    })
}

/// A worker process and what it said.
struct Worker {
    child: Child,
    _stdin: ChildStdin,
}

/// What the parent learned from a line of a worker.
enum Said {
    Elected { at_ns: u64, fencing_token: u64 },
    Revoked { at_ns: u64 },
    Tick { tick_ms: u64, what: String },
}

fn parse(line: &str) -> Option<Said> {
    let mut words = line.split(' ');
    let kind = words.next()?;
    let first: u64 = words.next()?.parse().ok()?;
    Some(match kind {
        "elected" => Said::Elected {
            at_ns: first,
            fencing_token: words.next()?.parse().ok()?,
        },
        "revoked" => Said::Revoked { at_ns: first },
        "ran" | "busy" | "done" | "split" | "skipped" => Said::Tick {
            tick_ms: first,
            what: kind.to_owned(),
        },
        "error" => Said::Tick {
            tick_ms: first,
            what: format!("error ({})", words.collect::<Vec<_>>().join(" ")),
        },
        _ => return None,
    })
}

fn run_fleet() -> Result<ExitCode, Box<dyn Error>> {
    let mut cluster = Cluster::start(3)?;
    let urls = cluster.urls().join(",");
    let (lines, received) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        let mut child = Command::new(std::env::current_exe()?)
            .args([WORKER_FLAG, &id.to_string(), &urls])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send((id, line));
            }
        });
        workers.push(Worker {
            child,
            _stdin: stdin,
        });
    }
    drop(lines);
    println!("{WORKERS} workers, 3 Redis nodes; the leader is killed at +{KILL_LEADER_AT:?}, node {FROZEN_NODE} frozen at +{FREEZE_NODE_AT:?} for {FREEZE_FOR:?}");

    let started_ns = monotonic_ns();
    let started_ms = unix_ms(SystemTime::now());
    let mut history = History {
        started_ns,
        ..History::default()
    };
    let mut killed: Option<(usize, u64)> = None;
    let mut frozen = false;
    let mut resumed = false;
    loop {
        let since = Duration::from_nanos(monotonic_ns() - started_ns);
        if since >= RUN_FOR {
            break;
        }
        if killed.is_none() && since >= KILL_LEADER_AT {
            match history.leader_now() {
                Some(leader) => {
                    workers[leader].child.kill()?;
                    let at_ns = monotonic_ns();
                    println!(
                        "+{:.1}s  SIGKILL the leader, w{leader}",
                        since.as_secs_f64()
                    );
                    killed = Some((leader, at_ns));
                }
                None => println!("+{:.1}s  no leader to kill", since.as_secs_f64()),
            }
            killed.get_or_insert((usize::MAX, 0));
        }
        if !frozen && since >= FREEZE_NODE_AT {
            cluster.freeze(FROZEN_NODE)?;
            println!(
                "+{:.1}s  SIGSTOP Redis node {FROZEN_NODE}",
                since.as_secs_f64()
            );
            frozen = true;
        }
        if frozen && !resumed && since >= FREEZE_NODE_AT + FREEZE_FOR {
            cluster.resume(FROZEN_NODE)?;
            println!(
                "+{:.1}s  SIGCONT Redis node {FROZEN_NODE}",
                since.as_secs_f64()
            );
            resumed = true;
        }
        collect(&received, &mut history, Duration::from_millis(20))?;
    }
    for worker in &mut workers {
        let _ = worker.child.kill();
        let _ = worker.child.wait();
    }
    collect(&received, &mut history, Duration::from_millis(200))?;
    let ended_ns = monotonic_ns();

    let killed = killed.filter(|(worker, _)| *worker != usize::MAX);
    let first = started_ms + SETTLE.as_millis() as u64;
    let last = started_ms + (RUN_FOR - Duration::from_secs(1)).as_millis() as u64;
    println!();
    for (tick, seen) in &history.ticks {
        let said: Vec<String> = seen
            .iter()
            .map(|(worker, what)| format!("w{worker} {what}"))
            .collect();
        println!("tick {}  {}", clock(*tick), said.join(", "));
    }
    let killed_at_ms = killed.map(|(_, at_ns)| started_ms + (at_ns - started_ns) / 1_000_000);
    let checks = [
        history.ticks_once(first, last, killed_at_ms),
        history.one_leader_at_a_time(killed, ended_ns),
        history.fencing_grows(),
        history.hand_over(killed),
    ];
    println!("\nsummary");
    let mut failed = false;
    for (passed, text) in checks {
        println!("  {} {text}", if passed { "ok  " } else { "FAIL" });
        failed |= !passed;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads the workers' lines until none came for `within`.
fn collect(
    received: &Receiver<(usize, String)>,
    history: &mut History,
    within: Duration,
) -> Result<(), Box<dyn Error>> {
    loop {
        match received.recv_timeout(within) {
            Ok((worker, line)) => match parse(&line) {
                Some(said) => history.record(worker, said),
                None => eprintln!("w{worker}: {line}"),
            },
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Everything the workers said.
#[derive(Default)]
struct History {
    /// When the fleet started, on `CLOCK_MONOTONIC`.
    started_ns: u64,
    /// Per tick (its scheduled Unix ms), what each worker did.
    ticks: BTreeMap<u64, Vec<(usize, String)>>,
    /// Terms of leadership: worker, elected at, revoked at (if it said so), fencing token.
    terms: Vec<(usize, u64, Option<u64>, u64)>,
}

impl History {
    fn record(&mut self, worker: usize, said: Said) {
        match said {
            Said::Elected {
                at_ns,
                fencing_token,
            } => {
                let since = at_ns.saturating_sub(self.started_ns) as f64 / 1e9;
                println!("+{since:.1}s  w{worker} elected (fencing token {fencing_token})");
                self.terms.push((worker, at_ns, None, fencing_token));
            }
            Said::Revoked { at_ns } => {
                let since = at_ns.saturating_sub(self.started_ns) as f64 / 1e9;
                println!("+{since:.1}s  w{worker} revoked");
                if let Some(term) = self.terms.iter_mut().rev().find(|term| term.0 == worker) {
                    term.2.get_or_insert(at_ns);
                }
            }
            Said::Tick { tick_ms, what } => {
                self.ticks.entry(tick_ms).or_default().push((worker, what))
            }
        }
    }

    /// The worker whose latest term has not ended, if one.
    fn leader_now(&self) -> Option<usize> {
        self.terms
            .iter()
            .rev()
            .find(|term| term.2.is_none())
            .map(|term| term.0)
    }

    /// Whether every tick from `first` to `last` ran once; a killed worker (at `killed_at_ms`) may
    /// have held a tick's lock, which then runs out with its ttl.
    fn ticks_once(&self, first: u64, last: u64, killed_at_ms: Option<u64>) -> (bool, String) {
        let checked: Vec<(&u64, &Vec<(usize, String)>)> = self.ticks.range(first..=last).collect();
        let twice: Vec<String> = checked
            .iter()
            .filter(|(_, seen)| seen.iter().filter(|(_, what)| what == "ran").count() > 1)
            .map(|(tick, _)| clock(**tick))
            .collect();
        let lost: Vec<String> = checked
            .iter()
            .filter(|(_, seen)| !seen.iter().any(|(_, what)| what == "ran"))
            .map(|(tick, seen)| {
                let why: Vec<String> = seen
                    .iter()
                    .map(|(w, what)| format!("w{w}: {what}"))
                    .collect();
                format!("{} ({})", clock(**tick), why.join("; "))
            })
            .collect();
        // A tick may go unrun only when no quorum answered (every worker that fired said so), or
        // when every worker found it busy while the lock of a tick that the killed worker was
        // running had not yet run out: a holder that dies keeps the key until its ttl.
        let held_by_the_killed = |tick: u64| {
            killed_at_ms.is_some_and(|killed| {
                tick + 1_000 > killed && tick < killed + TICK_TTL.as_millis() as u64
            })
        };
        let explained = |tick: u64, seen: &[(usize, String)]| {
            let all = |said: &dyn Fn(&str) -> bool| seen.iter().all(|(_, what)| said(what));
            seen.iter().any(|(_, what)| what == "ran")
                || all(&|what| what.contains("no quorum"))
                || (held_by_the_killed(tick) && all(&|what| what == "busy"))
        };
        let lost_without_cause = checked.iter().any(|(tick, seen)| !explained(**tick, seen));
        let text = format!(
            "{} ticks checked: each ran once{}{}",
            checked.len(),
            if twice.is_empty() {
                String::new()
            } else {
                format!("; ran twice: {}", twice.join(", "))
            },
            if lost.is_empty() {
                String::new()
            } else {
                format!("; not run: {}", lost.join(", "))
            },
        );
        (
            twice.is_empty() && !lost_without_cause && !checked.is_empty(),
            text,
        )
    }

    /// No two terms of different workers overlap: a term runs from its `Elected` to its
    /// `Revoked`, or to the kill, or to the end of the run.
    fn one_leader_at_a_time(&self, killed: Option<(usize, u64)>, ended_ns: u64) -> (bool, String) {
        let end = |term: &(usize, u64, Option<u64>, u64)| match (term.2, killed) {
            (Some(revoked), _) => revoked,
            (None, Some((worker, at))) if worker == term.0 && at >= term.1 => at,
            _ => ended_ns,
        };
        let mut overlaps = Vec::new();
        for (i, a) in self.terms.iter().enumerate() {
            for b in &self.terms[i + 1..] {
                if a.0 != b.0 && a.1 < end(b) && b.1 < end(a) {
                    overlaps.push(format!("w{} and w{}", a.0, b.0));
                }
            }
        }
        (
            overlaps.is_empty() && !self.terms.is_empty(),
            format!(
                "{} terms of leadership, at most one leader at any instant{}",
                self.terms.len(),
                if overlaps.is_empty() {
                    String::new()
                } else {
                    format!("; OVERLAP: {}", overlaps.join(", "))
                }
            ),
        )
    }

    fn fencing_grows(&self) -> (bool, String) {
        let tokens: Vec<u64> = self.terms.iter().map(|term| term.3).collect();
        let grows = tokens.windows(2).all(|pair| pair[0] < pair[1]);
        (
            grows,
            format!("fencing tokens of successive leaders grow: {grows}"),
        )
    }

    fn hand_over(&self, killed: Option<(usize, u64)>) -> (bool, String) {
        let Some((worker, at_ns)) = killed else {
            return (false, "no leader was killed".into());
        };
        match self.terms.iter().find(|term| term.0 != worker && term.1 > at_ns) {
            Some(next) => (
                true,
                format!(
                    "hand-over after the leader w{worker} was killed: w{} elected {:.2}s later (leader ttl {LEADER_TTL:?})",
                    next.0,
                    (next.1 - at_ns) as f64 / 1e9
                ),
            ),
            None => (false, format!("nobody took over from w{worker}")),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn clock(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60
    )
}
