//! One contention run: real nodes behind proxies, worker processes contending on a few keys, a
//! fault schedule played against them, and the checker over everything they recorded.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use cluster_singleton_testkit::Cluster;

use super::checker::{check, Verdict};
use super::fleet::Fleet;
use super::leader;
use super::records::{monotonic_now, Counts, Nanos, Record};
use super::schedule::{plan, Episode, Fault, Limits};
use super::worker::{WorkerConfig, SHORT_TTL, TTL};

/// Five nodes: two may be faulty at once.
pub const NODES: usize = 5;

/// How long the workers may take to start and take their first lock, beyond the restart grace
/// that fresh nodes first serve out (a client cannot tell them from nodes that just lost their
/// data).
const WARM_UP_BEYOND_GRACE: Duration = Duration::from_secs(15);

/// How long, once every fault is undone, until some body must have run again.
const RECOVERY_BEYOND_REJOIN: Duration = Duration::from_secs(10);

/// How long workers may take to finish their attempt in progress and exit once asked.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// Runs with at most this many faults print each as it happens; longer ones only log them to a
/// file (kept, with the records, when the run fails).
const ECHOED_FAULTS: usize = 100;

/// When set, every run keeps its records, logs and fault log, not only a failed one.
const KEEP_ENV: &str = "CLUSTER_SINGLETON_CONTENTION_KEEP";

/// How many sample no-quorum errors from the faults the report shows.
const NO_QUORUM_SAMPLES_SHOWN: usize = 3;

/// How often the schedule looks at the workers while it waits for the next fault.
const SCHEDULE_TICK: Duration = Duration::from_millis(50);

/// Worker `i`'s seed is the run's plus `i` times this: far enough apart that the tasks of
/// different workers (seeded one apart within a worker) never share a random sequence.
const WORKER_SEED_STRIDE: u64 = 1_000;

/// How long the workers may take to answer a request for their counts.
const COUNTS_WITHIN: Duration = Duration::from_secs(5);

/// How long to look for a worker inside a body before killing one at random.
const HOLDER_SEARCH: Duration = Duration::from_secs(2);

/// What one run does.
#[derive(Clone, Debug)]
pub struct Setup {
    pub name: &'static str,
    /// The kinds of fault drawn; empty for a run without faults.
    pub faults: Vec<Fault>,
    /// How long faults are injected.
    pub length: Duration,
    pub workers: usize,
    pub tasks: usize,
    pub keys: usize,
    pub seed: u64,
    /// Given to the workers' runtimes: how long a restarted node's votes do not count.
    pub restart_grace: Duration,
    /// Given to the workers' runtimes: whether a node whose clock stepped is treated like a
    /// restarted one.
    pub detect_clock_jumps: bool,
    /// Each worker locks on a different single node: nothing excludes the workers from each
    /// other, so the checker must find overlaps. Shows that it can fail.
    pub broken: bool,
    /// One body in this many blocks its thread past its lease (0: none does).
    pub overrun_one_in: usize,
    /// Workers campaign for one leadership instead of locking (see `leader.rs`): 0 they lock,
    /// [`leader::HONEST`] or the control [`leader::CACHING`].
    pub leader: u8,
}

impl Setup {
    /// Whether the run is a control, set up so that the checker must find overlaps: workers
    /// that do not exclude each other, or clock steps that they do not watch for.
    pub fn is_control(&self) -> bool {
        self.broken
            || self.leader == leader::CACHING
            || (!self.detect_clock_jumps && self.faults.contains(&Fault::ClockJump))
    }
}

/// What a run saw.
pub struct Report {
    pub setup: Setup,
    pub verdict: Verdict,
    /// The attempts' outcomes from the start of the faults on.
    pub counts: Counts,
    /// Before: while the fresh nodes served out the restart grace and workers started.
    pub warm_up_counts: Counts,
    pub planned: usize,
    pub injected: BTreeMap<Fault, usize>,
    /// Planned faults left out because their node was still faulty when their time came (the
    /// run was running late).
    pub skipped: usize,
    pub holder_kills_holding: usize,
    pub workers_started: usize,
    /// How long faults were injected, in fact.
    pub window: Duration,
    pub bodies_in_window: usize,
    /// From the last fault undone to the next body.
    pub recovery: Option<Duration>,
    /// Where the records, logs and fault log are, when kept after a failure.
    pub kept: Option<PathBuf>,
    /// The start of the faults, on the records' clock.
    pub origin: Nanos,
}

impl Report {
    pub fn acquisitions_per_second(&self) -> f64 {
        self.bodies_in_window as f64 / self.window.as_secs_f64().max(f64::EPSILON)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        let c = &self.counts;
        let w = &self.warm_up_counts;
        writeln!(
            f,
            "contention `{}`: seed {} (replay: CLUSTER_SINGLETON_FAULT_SEED={}), {NODES} nodes, \
             {} workers x {} tasks on {} keys, ttls {TTL:?} and {SHORT_TTL:?}, restart grace {:?}, \
             clock steps {}",
            s.name,
            s.seed,
            s.seed,
            s.workers,
            s.tasks,
            s.keys,
            s.restart_grace,
            if s.detect_clock_jumps {
                "detected"
            } else {
                "not detected"
            }
        )?;
        writeln!(
            f,
            "  faults for {:.1} s: {} planned, {} injected, {} skipped (node still faulty)",
            self.window.as_secs_f64(),
            self.planned,
            self.injected.values().sum::<usize>(),
            self.skipped
        )?;
        for (fault, n) in &self.injected {
            let extra = if *fault == Fault::KillHolder {
                format!(" ({} inside a body)", self.holder_kills_holding)
            } else {
                String::new()
            };
            writeln!(f, "    {fault}: {n}{extra}")?;
        }
        writeln!(
            f,
            "  bodies: {} in all, {} during the faults ({:.1}/s), {} cut short by a kill; per key {:?}",
            self.verdict.bodies(),
            self.bodies_in_window,
            self.acquisitions_per_second(),
            self.verdict.killed_bodies,
            self.verdict.bodies_per_key
        )?;
        writeln!(
            f,
            "  attempts from the first fault on: {} acquired, {} skipped busy; errors: {} no quorum, \
             {} expired, {} unexpected; {} bodies outlived their lease (the call said so)",
            c.acquired, c.busy, c.no_quorum, c.expired, c.unexpected, c.lost
        )?;
        writeln!(
            f,
            "  (warm-up before it: {} acquired, {} busy, {} no quorum while fresh nodes served \
             out the restart grace)",
            w.acquired, w.busy, w.no_quorum
        )?;
        writeln!(
            f,
            "  workers started: {}; recovery after the last fault: {}",
            self.workers_started,
            match self.recovery {
                Some(took) => format!("{:.0} ms", took.as_secs_f64() * 1e3),
                None => "NONE".into(),
            }
        )?;
        let origin = self.origin;
        let samples: Vec<&(Nanos, String)> = self
            .verdict
            .no_quorum_samples
            .iter()
            .filter(|(at, _)| *at >= origin)
            .take(NO_QUORUM_SAMPLES_SHOWN)
            .collect();
        for (at, message) in samples {
            let since = Duration::from_nanos(at - origin).as_secs_f64();
            writeln!(f, "  e.g. at {since:.3}s, {message}")?;
        }
        write!(
            f,
            "  overlaps that break a promise: {}; of a body that outlived its lease and whose \
             call said so: {}",
            self.verdict.failures().count(),
            self.verdict.honest_overlaps()
        )?;
        if let Some(dir) = &self.kept {
            write!(
                f,
                "\n  records, logs and the fault log kept in {}",
                dir.display()
            )?;
        }
        Ok(())
    }
}

/// Runs `setup` and checks its history. Never panics on what the checker finds: the caller
/// decides what a run must show.
pub fn run(setup: Setup) -> Report {
    let dir = tempfile::Builder::new()
        .prefix("cluster-singleton-contention-")
        .tempdir()
        .expect("a temporary directory");
    let mut cluster = Cluster::builder()
        .nodes(NODES)
        .proxied(true)
        .steppable_clocks(setup.faults.contains(&Fault::ClockJump))
        .start()
        .expect("start redis-server nodes");
    let limits = Limits {
        nodes: NODES,
        ttl: TTL,
        restart_grace: setup.restart_grace,
        clock_jumps_detected: setup.detect_clock_jumps,
    };
    let configs = (0..setup.workers)
        .map(|slot| WorkerConfig {
            urls: if setup.broken {
                vec![cluster.url(slot % NODES)]
            } else {
                cluster.urls()
            },
            records: PathBuf::new(), // set per process by the fleet
            tasks: setup.tasks,
            keys: setup.keys,
            seed: setup.seed.wrapping_add(slot as u64 * WORKER_SEED_STRIDE),
            restart_grace: setup.restart_grace,
            detect_clock_jumps: setup.detect_clock_jumps,
            // Callers of one key with different ttls, as in a deploy that changed the ttl.
            ttl: if slot % 2 == 0 { TTL } else { SHORT_TTL },
            one_shot: false,
            overrun_one_in: setup.overrun_one_in,
            leader: setup.leader,
        })
        .collect();
    let mut fleet = Fleet::start(dir.path(), configs);

    let warm_up = setup.restart_grace + WARM_UP_BEYOND_GRACE;
    assert!(
        wait_until_nodes_vote(&cluster, setup.restart_grace, warm_up),
        "`{}`: the nodes did not outlive the restart grace within {warm_up:?}",
        setup.name
    );
    assert!(
        fleet.wait_until_every_worker_locked(warm_up),
        "`{}`: not every worker took a lock within {warm_up:?} of starting",
        setup.name
    );

    let episodes = if setup.faults.is_empty() {
        Vec::new()
    } else {
        plan(setup.seed, &setup.faults, setup.length, &limits)
    };
    let mut fault_log = FaultLog::create(
        dir.path().join("faults.log"),
        episodes.len() <= ECHOED_FAULTS,
    );
    // The run's time 0, on both clocks: `started` for the schedule, `origin` for the records.
    let started = Instant::now();
    let origin = monotonic_now();
    let warm_up_counts = fleet.counts_now(COUNTS_WITHIN);
    fault_log.line(format!(
        "`{}`: seed {}, {} faults planned; the run's time 0 is @{origin} on CLOCK_MONOTONIC",
        setup.name,
        setup.seed,
        episodes.len()
    ));
    let mut injector = Injector::new(&limits, setup.seed);
    for action in actions(&episodes) {
        sleep_until(&mut fleet, started + action.at);
        let episode = &episodes[action.episode];
        let line = injector.act(
            &mut cluster,
            &mut fleet,
            episode,
            action.undo,
            action.episode,
        );
        if let Some(line) = line {
            fault_log.line(format!("{:7.3}s {line}", started.elapsed().as_secs_f64()));
        }
    }
    sleep_until(&mut fleet, started + setup.length);
    let window = started.elapsed();
    let healed = monotonic_now();
    let recovery_within = limits.rejoin() + RECOVERY_BEYOND_REJOIN;
    let recovered = fleet.wait_for_a_body(healed, recovery_within);
    let recovery = recovered.map(|at| Duration::from_nanos(at.saturating_sub(healed)));

    fleet.stop(STOP_WITHIN);
    let records = fleet.records();
    let bodies_in_window = records
        .iter()
        .filter(
            |record| matches!(record, Record::Enter { at, .. } if (origin..healed).contains(at)),
        )
        .count();
    let verdict = check(records, fleet.kills(), origin);
    let counts = verdict.counts.since(&warm_up_counts);
    let mut report = Report {
        counts,
        warm_up_counts,
        planned: episodes.len(),
        injected: injector.injected,
        skipped: injector.skipped,
        holder_kills_holding: injector.holder_kills_holding,
        workers_started: fleet.started(),
        window,
        bodies_in_window,
        recovery,
        verdict,
        setup,
        kept: None,
        origin,
    };
    let as_expected = if report.setup.is_control() {
        !report.verdict.overlaps.is_empty()
    } else {
        report.verdict.is_clean() && report.verdict.unexpected.is_empty() && recovery.is_some()
    };
    if !as_expected || std::env::var_os(KEEP_ENV).is_some() {
        report.kept = Some(dir.keep());
    }
    println!("{report}");
    report
}

/// Waits until every node has been up long enough that every worker counts its votes: a worker
/// takes a node's age from `uptime_in_seconds` less a second, so it may see a node as up to a
/// second younger than it says. Until then, a fault on one node could leave fewer than a majority
/// voting, which the schedule promises never to do.
fn wait_until_nodes_vote(cluster: &Cluster, grace: Duration, within: Duration) -> bool {
    let needed = grace.as_secs() + u64::from(grace.subsec_nanos() > 0) + 1;
    let deadline = Instant::now() + within;
    loop {
        let old_enough = (0..cluster.len()).all(|node| uptime(cluster, node) >= needed);
        if old_enough {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(SCHEDULE_TICK);
    }
}

/// Node `node`'s `uptime_in_seconds`, asked directly (not through its proxy).
fn uptime(cluster: &Cluster, node: usize) -> u64 {
    let mut connection = cluster.connection(node).expect("connect to a node");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .expect("INFO server");
    info.lines()
        .find_map(|line| line.strip_prefix("uptime_in_seconds:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("INFO server has uptime_in_seconds")
}

/// Sleeps until `due`: the schedule's own time, not a wait for something to happen. Checks the
/// workers on the way, so that one that died early fails the run at once.
fn sleep_until(fleet: &mut Fleet, due: Instant) {
    loop {
        fleet.check_alive();
        let now = Instant::now();
        if now >= due {
            return;
        }
        thread::sleep((due - now).min(SCHEDULE_TICK));
    }
}

/// Asserts that a run found no overlap, no lost record and no unexpected error, and that locking
/// worked during the faults and again after them.
pub fn assert_clean(report: &Report) {
    let verdict = &report.verdict;
    assert!(verdict.is_clean(), "{report}\n{}", verdict.problems());
    assert!(
        verdict.unexpected.is_empty(),
        "{report}\nunexpected errors:\n{}",
        verdict.unexpected.join("\n")
    );
    assert!(
        report.bodies_in_window > 0,
        "{report}\nno body ran during the faults"
    );
    assert!(
        report.recovery.is_some(),
        "{report}\nno body ran after the last fault was undone"
    );
}

/// One step of the schedule: a fault applied or undone.
struct Action {
    at: Duration,
    episode: usize,
    undo: bool,
}

/// The plan's steps in time order; an undo comes before an apply at the same instant, so that
/// the faulty nodes never exceed the plan's count.
fn actions(episodes: &[Episode]) -> Vec<Action> {
    let mut actions = Vec::new();
    for (index, episode) in episodes.iter().enumerate() {
        actions.push(Action {
            at: episode.at,
            episode: index,
            undo: false,
        });
        if episode.fault.is_held() {
            actions.push(Action {
                at: episode.at + episode.hold,
                episode: index,
                undo: true,
            });
        }
    }
    actions.sort_by_key(|action| (action.at, !action.undo));
    actions
}

/// Applies faults, and checks again, as it goes, that no more than a minority of nodes is
/// faulty: the plan assumed each step happens on time, and a loaded machine can run late.
struct Injector {
    max_faulty: usize,
    /// Per node: under a held fault now.
    held: Vec<bool>,
    /// Per node: not voting until then (it started again and serves out the restart grace).
    rejoins_at: Vec<Option<Instant>>,
    /// From a node answering again to its votes counting.
    rejoin: Duration,
    /// From a node's clock stepping to its votes counting.
    clock_jump_unusable: Duration,
    skipped_episodes: Vec<usize>,
    injected: BTreeMap<Fault, usize>,
    skipped: usize,
    holder_kills_holding: usize,
    rng: fastrand::Rng,
}

impl Injector {
    fn new(limits: &Limits, seed: u64) -> Injector {
        Injector {
            max_faulty: limits.max_faulty(),
            held: vec![false; limits.nodes],
            rejoins_at: vec![None; limits.nodes],
            rejoin: limits.rejoin_once_started(),
            clock_jump_unusable: limits.clock_jump_unusable(),
            skipped_episodes: Vec::new(),
            injected: BTreeMap::new(),
            skipped: 0,
            holder_kills_holding: 0,
            rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        }
    }

    fn faulty(&self, node: usize, now: Instant) -> bool {
        self.held[node] || self.rejoins_at[node].is_some_and(|at| now < at)
    }

    /// Applies or undoes one episode; returns what to log.
    fn act(
        &mut self,
        cluster: &mut Cluster,
        fleet: &mut Fleet,
        episode: &Episode,
        undo: bool,
        index: usize,
    ) -> Option<String> {
        let node = episode.node;
        if undo {
            if self.skipped_episodes.contains(&index) {
                return None;
            }
            match episode.fault {
                Fault::KillNode => {
                    cluster.start_node(node).expect("start a killed node");
                    self.rejoins_at[node] = Some(Instant::now() + self.rejoin);
                }
                Fault::FreezeNode => cluster.resume(node).expect("resume a node"),
                Fault::Partition => cluster.proxy(node).heal(),
                Fault::Latency => cluster.proxy(node).set_latency(Duration::ZERO),
                _ => unreachable!("only held faults are undone"),
            }
            self.held[node] = false;
            return Some(format!("undo {} node {node}", episode.fault));
        }
        if episode.fault == Fault::ShortLivedProcess {
            let pid = fleet.spawn_one_shot(self.rng.usize(..));
            *self.injected.entry(Fault::ShortLivedProcess).or_default() += 1;
            return Some(format!("short-lived-process pid {pid}"));
        }
        if episode.fault == Fault::KillHolder {
            let kill = fleet.kill_holder(&mut self.rng, HOLDER_SEARCH);
            *self.injected.entry(Fault::KillHolder).or_default() += 1;
            self.holder_kills_holding += usize::from(kill.was_holding);
            return Some(format!(
                "kill-holder pid {} ({})",
                kill.pid,
                if kill.was_holding {
                    "inside a body"
                } else {
                    "not inside a body"
                }
            ));
        }
        let now = Instant::now();
        let others = (0..self.held.len())
            .filter(|&other| other != node && self.faulty(other, now))
            .count();
        if self.faulty(node, now) || others >= self.max_faulty {
            self.skipped += 1;
            self.skipped_episodes.push(index);
            return Some(format!(
                "skip {episode}: its node or a majority would be faulty"
            ));
        }
        match episode.fault {
            Fault::KillNode => cluster.kill(node).expect("kill a node"),
            Fault::FreezeNode => cluster.freeze(node).expect("freeze a node"),
            Fault::RestartNode => {
                cluster.restart(node).expect("restart a node");
                self.rejoins_at[node] = Some(Instant::now() + self.rejoin);
            }
            Fault::Partition => cluster.proxy(node).partition(),
            Fault::Latency => cluster.proxy(node).set_latency(episode.latency),
            Fault::Disconnect => cluster.proxy(node).reset(),
            Fault::BlackHole => cluster.proxy(node).black_hole_open_connections(),
            Fault::ClockJump => {
                let step = i64::try_from(episode.step.as_millis()).expect("a short step");
                cluster.step_clock(node, step).expect("step a node's clock");
                self.rejoins_at[node] = Some(Instant::now() + self.clock_jump_unusable);
            }
            Fault::KillHolder | Fault::ShortLivedProcess => unreachable!("handled above"),
        }
        self.held[node] = episode.fault.is_held();
        *self.injected.entry(episode.fault).or_default() += 1;
        Some(format!("{episode}"))
    }
}

/// The faults as they happened, in the run's directory and in the test's output.
struct FaultLog {
    file: File,
    /// Whether lines also go to the output: not for a soak's hundreds of faults.
    echo: bool,
}

impl FaultLog {
    fn create(path: PathBuf, echo: bool) -> FaultLog {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("create the fault log");
        FaultLog { file, echo }
    }

    fn line(&mut self, line: String) {
        if self.echo {
            // Captured by the test harness; shown on failure or with --nocapture.
            println!("{line}");
        }
        writeln!(self.file, "{line}").expect("write the fault log");
    }
}
