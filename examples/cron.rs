//! Cron jobs that run on one machine of the fleet: a cron scheduler
//! ([`tokio-cron-scheduler`](https://docs.rs/tokio-cron-scheduler)) fires every job on every
//! machine, and `#[singleton]` lets one machine run each tick while the others skip.
//!
//! ```text
//! cargo run --example cron
//! REDIS_URLS=redis://10.0.0.1,redis://10.0.0.2,redis://10.0.0.3 cargo run --example cron
//! ```
//!
//! Two "machines", `a` and `b`, run in this one process. Each has its own scheduler and its own
//! runtime (its own connections to the Redis nodes, built with `Config::build`), as two servers
//! of a fleet would, and both schedule the same two jobs:
//!
//! | job | schedule in production | options in production | in this demo |
//! | --- | --- | --- | --- |
//! | `daily-report` | `0 0 2 * * *`: 02:00:00 UTC every day | `ttl = "10m", slot = "1d"` | every second, `slot = "4s"` |
//! | `sync` | `0 * * * * *`: second 0 of every minute | `ttl = "30s", min_hold = "50s"` | every second, `min_hold = "500ms"` |
//!
//! (tokio-cron-scheduler's expressions have six fields, `sec min hour day-of-month month
//! day-of-week`, in UTC.) The demo fires both jobs every second so that it is over in about ten
//! seconds; the durations that are counted in ticks (the day of the daily job, the sync job's
//! `min_hold`) are shortened to match, and everything else is as in production.
//!
//! The scheduler looks for due jobs every 500 ms, so a job fires up to half a second after its
//! second, and machine `b` starts its scheduler a quarter of a second after `a`: in each tick one
//! machine fires about 250 ms after the other, as a fleet's clocks and schedulers do. Each call's
//! outcome is one log line, which is how to read the jobs in production logs:
//!
//! - `ran`: this machine held the lock and ran the body (`Outcome::Ran`), with what the body
//!   returned: its value, or its error (`Ran(Err(..))`: this machine ran the job, and it failed).
//! - `skipped: busy`: another machine holds the lock (`Skip::Busy`). The normal line on every
//!   machine but one. The sync job's body takes 150 ms, and its `min_hold` keeps the key until
//!   500 ms after it was taken, so the machine that fires 250 ms late logs this rather than
//!   running the tick a second time; the key is free again well before the next tick.
//! - `skipped: already done`: with `slot`, a run in this period already succeeded
//!   (`Skip::AlreadyDone`). The first daily run fails (on purpose), so the key is freed at once
//!   and no period is marked done: the next attempt runs it again, and once one succeeds, every
//!   later tick of that "day" logs this line on both machines.
//! - `ERROR`: the call could not decide (`Error::NoQuorum`: too few Redis nodes answered; the
//!   line to alert on), or the lease was lost while the body ran (`Error::LeaseLost`). After 7 s
//!   the demo kills two of its three Redis nodes, so the last ticks log `no quorum` on both
//!   machines. With `REDIS_URLS` it does not, since it does not own those nodes.
//!
//! At the end it prints every tick with what each machine did, and checks that the sync bodies
//! never overlapped and that the daily report succeeded at most once per "day"; the exit code is
//! non-zero when either fails.
//!
//! Without `REDIS_URLS` it starts three local `redis-server`s with the test kit, and counts their
//! votes at once (`restart_grace(Duration::ZERO)`: nodes started a moment ago held no lock to
//! forget). With `REDIS_URLS` it keeps the default restart grace, the lock's ttl: on nodes up for
//! less than 10 minutes the daily report logs `no quorum`, naming each node and when its vote
//! counts. Keys get the prefix `cron-example:`, so that they cannot collide with real jobs on
//! those nodes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::Display;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::{singleton, Error, Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use tokio_cron_scheduler::{Job, JobScheduler};

/// The daily report's schedule in production: 02:00:00 UTC.
const DAILY_CRON: &str = "0 0 2 * * *";
/// The sync job's schedule in production: second 0 of every minute.
const EVERY_MINUTE_CRON: &str = "0 * * * * *";
/// The demo's schedule for both jobs: every second.
const DEMO_CRON: &str = "* * * * * *";

/// The daily report's slot in the demo: a "day" of four one-second ticks (`slot = "4s"`).
const DEMO_DAY: Duration = Duration::from_secs(4);

/// How long the bodies take: shorter than the 250 ms by which one machine fires after the
/// other, so without `min_hold` the late machine would find the key free and sync again.
const SYNC_BODY: Duration = Duration::from_millis(150);
const REPORT_BODY: Duration = Duration::from_millis(300);

/// How long after machine `a`'s scheduler machine `b`'s starts.
const STAGGER: Duration = Duration::from_millis(250);
/// How long the jobs fire with every node up, and then with a majority of nodes down.
const HEALTHY_FOR: Duration = Duration::from_secs(7);
const OUTAGE_FOR: Duration = Duration::from_secs(2);
/// The longest the demo waits for calls still running when the schedulers stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

/// How many Redis nodes the demo starts when `REDIS_URLS` is not set.
const REDIS_NODES: usize = 3;
/// The environment variable that lists Redis nodes to use instead (comma-separated URLs).
const URLS_ENV: &str = "REDIS_URLS";

/// How long each machine's runtime may take to give back its locks at the end.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);

/// The every-minute job: whichever machine fires first syncs, the others skip.
///
/// In production: `#[singleton(key = "sync", ttl = "30s", min_hold = "50s")]` on the schedule
/// `0 * * * * *`. The body takes a few seconds; `min_hold` keeps the key until 50 s after it was
/// taken, so a machine whose scheduler fires a few seconds late skips instead of syncing twice,
/// and the key is free again before the next minute. The demo ticks every second, so it keeps
/// the key for 500 ms: longer than the 250 ms by which one machine fires after the other, and
/// short enough that the key is free again at the next tick.
#[singleton(key = "sync", ttl = "30s", min_hold = "500ms")]
async fn sync(machine: &'static str, journal: &Journal) -> String {
    let _body = journal.body("sync", machine, None);
    tokio::time::sleep(SYNC_BODY).await;
    format!("synced 12 records on {machine}")
}

/// The daily report: at most one successful run per day across the fleet.
///
/// In production every machine fires it at 02:00 UTC ([`DAILY_CRON`]), with
/// `#[singleton(key = "daily-report", ttl = "10m", slot = "1d")]`: one machine runs it, a machine
/// whose scheduler fires after that run succeeded skips (`AlreadyDone`), and if the run fails
/// (`Err`), the key is freed at once and the day is not marked done, so the next call retries.
/// The demo's "day" is four seconds ([`DEMO_DAY`]).
#[singleton(key = "daily-report", ttl = "10m", slot = "4s")]
async fn daily_report(machine: &'static str, journal: &Journal) -> Result<String, ReportError> {
    let body = journal.body("daily-report", machine, Some(DEMO_DAY));
    tokio::time::sleep(REPORT_BODY).await;
    if journal.report_fails.swap(false, Ordering::SeqCst) {
        body.failed();
        return Err(ReportError);
    }
    Ok(format!("report sent to 3 recipients by {machine}"))
}

/// How the demo's first daily report fails: the job's own error, not the lock's.
#[derive(Debug, thiserror::Error)]
#[error("the warehouse did not answer")]
struct ReportError;

/// What each machine did, for the log lines and the summary at the end.
struct Journal {
    started: Instant,
    /// Whether the next daily report fails: only the first one does.
    report_fails: AtomicBool,
    /// Calls that have started and not yet logged their outcome.
    in_flight: AtomicUsize,
    outcomes: Mutex<Vec<Logged>>,
    bodies: Mutex<Vec<BodyRun>>,
}

/// One call's outcome, as logged.
struct Logged {
    job: &'static str,
    tick: u64,
    machine: &'static str,
    what: &'static str,
}

/// One run of a body, timed from the inside.
struct BodyRun {
    job: &'static str,
    machine: &'static str,
    started: Instant,
    ended: Instant,
    /// With a slot: the index of the period the body ran in.
    period: Option<u64>,
    succeeded: bool,
}

/// Records a body's run when it ends, however it ends.
struct BodyGuard<'a> {
    journal: &'a Journal,
    run: Option<BodyRun>,
}

impl BodyGuard<'_> {
    fn failed(mut self) {
        if let Some(run) = &mut self.run {
            run.succeeded = false;
        }
    }
}

impl Drop for BodyGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.ended = Instant::now();
            lock(&self.journal.bodies).push(run);
        }
    }
}

impl Journal {
    fn new() -> Self {
        Journal {
            started: Instant::now(),
            report_fails: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            outcomes: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
        }
    }

    fn body(
        &self,
        job: &'static str,
        machine: &'static str,
        slot: Option<Duration>,
    ) -> BodyGuard<'_> {
        let now = Instant::now();
        let period = slot.map(|slot| unix_millis() / slot.as_millis().max(1) as u64);
        BodyGuard {
            journal: self,
            run: Some(BodyRun {
                job,
                machine,
                started: now,
                ended: now,
                period,
                succeeded: true,
            }),
        }
    }

    /// Logs one call's outcome the way a service would: one line, with the machine, the job, the
    /// tick and what happened.
    fn log<T: Display, E: Display>(
        &self,
        machine: &'static str,
        job: &'static str,
        tick: u64,
        result: Result<Outcome<Result<T, E>>, Error>,
    ) {
        let (level, what, message) = match result {
            Ok(Outcome::Ran(Ok(value))) => ("INFO", "ran", format!("ran: {value}")),
            Ok(Outcome::Ran(Err(err))) => (
                "WARN",
                "ran(err)",
                format!("ran, and the job failed: {err} (the key is free again: another call may retry)"),
            ),
            Ok(Outcome::Skipped(Skip::Busy)) => (
                "INFO",
                "busy",
                "skipped: busy (another machine holds the lock)".to_owned(),
            ),
            Ok(Outcome::Skipped(Skip::AlreadyDone { period_start })) => (
                "INFO",
                "done",
                format!(
                    "skipped: already done in the period that began at {}",
                    clock(period_start)
                ),
            ),
            Ok(Outcome::Skipped(other)) => ("INFO", "skipped", format!("skipped: {other}")),
            Err(err @ Error::NoQuorum(_)) => ("ERROR", "NoQuorum", format!("no run, alert: {err}")),
            Err(err @ Error::LeaseLost { .. }) => ("ERROR", "LeaseLost", format!("lease lost: {err}")),
            Err(err) => ("ERROR", "error", format!("{err}")),
        };
        println!(
            "{:>8} {level:<5} machine={machine} job={job:<12} tick={} {message}",
            format!("+{:.3}s", self.started.elapsed().as_secs_f64()),
            clock(UNIX_EPOCH + Duration::from_secs(tick)),
        );
        lock(&self.outcomes).push(Logged {
            job,
            tick,
            machine,
            what,
        });
    }
}

/// Counts a call as in flight until it has logged its outcome.
struct InFlight(Arc<Journal>);

impl InFlight {
    fn enter(journal: &Arc<Journal>) -> Self {
        journal.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(journal.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One machine's scheduler, with both jobs on it; each call runs inside `runtime.scope`, so that
/// `#[singleton]` functions use this machine's runtime. (A service with one runtime per process
/// calls `runtime::init` once instead, and schedules the bare calls.)
async fn start_machine(
    machine: &'static str,
    runtime: Runtime,
    journal: Arc<Journal>,
) -> Result<JobScheduler, Box<dyn StdError>> {
    let scheduler = JobScheduler::new().await?;

    let (rt, jn) = (runtime.clone(), journal.clone());
    let daily = Job::new_async(DEMO_CRON, move |_job_id, _scheduler| {
        let (runtime, journal) = (rt.clone(), jn.clone());
        Box::pin(async move {
            let _in_flight = InFlight::enter(&journal);
            let tick = unix_millis() / 1000;
            let result = runtime.scope(daily_report(machine, &journal)).await;
            journal.log(machine, "daily-report", tick, result);
        })
    })?;
    scheduler.add(daily).await?;

    let (rt, jn) = (runtime, journal);
    let every_minute = Job::new_async(DEMO_CRON, move |_job_id, _scheduler| {
        let (runtime, journal) = (rt.clone(), jn.clone());
        Box::pin(async move {
            let _in_flight = InFlight::enter(&journal);
            let tick = unix_millis() / 1000;
            let result = runtime.scope(sync(machine, &journal)).await;
            let result = result.map(|outcome| outcome.map(Ok::<_, Infallible>));
            journal.log(machine, "sync", tick, result);
        })
    })?;
    scheduler.add(every_minute).await?;

    scheduler.start().await?;
    Ok(scheduler)
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn StdError>> {
    let mut local_redis = None; // stopped when `main` returns
    let config = match std::env::var(URLS_ENV) {
        Ok(urls) => Config::new(urls.split(',')),
        Err(_) => {
            let cluster = Cluster::start(REDIS_NODES)?;
            // A node's vote counts once it has been up for the restart grace (by default
            // `Config::max_ttl`, ten minutes), so that a node that restarted and forgot its
            // locks cannot grant them twice; nodes started just now held none.
            let config = Config::new(cluster.urls()).restart_grace(Duration::ZERO);
            local_redis = Some(cluster);
            config
        }
    };
    let config = config.key_prefix("cron-example:");
    println!(
        "machines a and b fire `daily-report` (in production `{DAILY_CRON}`, slot = \"1d\"; here every \
         second, slot = \"4s\") and `sync` (in production `{EVERY_MINUTE_CRON}`, min_hold = \"50s\"; \
         here every second, min_hold = \"500ms\") for {} s",
        (HEALTHY_FOR + OUTAGE_FOR).as_secs()
    );

    let journal = Arc::new(Journal::new());
    let (runtime_a, runtime_b) = (config.clone().build()?, config.build()?);
    let mut a = start_machine("a", runtime_a.clone(), journal.clone()).await?;
    tokio::time::sleep(STAGGER).await;
    let mut b = start_machine("b", runtime_b.clone(), journal.clone()).await?;

    tokio::time::sleep(HEALTHY_FOR).await;
    if let Some(cluster) = &mut local_redis {
        println!("--- killing Redis nodes 1 and 2 of 3: no quorum from here on ---");
        cluster.kill(1)?;
        cluster.kill(2)?;
    }
    tokio::time::sleep(OUTAGE_FOR).await;

    a.shutdown().await?;
    b.shutdown().await?;
    let deadline = Instant::now() + DRAIN_DEADLINE;
    while journal.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the machines still hold, or release in the background, is given back before `main`
    // returns. (Nodes 1 and 2 are down: the releases there fail, as they would in production.)
    for runtime in [runtime_a, runtime_b] {
        let _ = runtime.shutdown(SHUTDOWN_WITHIN).await;
    }

    Ok(summarize(&journal))
}

/// Prints what each machine did in each tick, and checks what the lock promises.
fn summarize(journal: &Journal) -> ExitCode {
    println!("\nper tick (UTC), what each machine did:");
    let mut ticks: BTreeMap<(u64, &str), Vec<String>> = BTreeMap::new();
    for logged in lock(&journal.outcomes).iter() {
        ticks
            .entry((logged.tick, logged.job))
            .or_default()
            .push(format!("{}={}", logged.machine, logged.what));
    }
    let mut sync_ticks = (0, 0);
    for ((tick, job), mut whats) in ticks {
        whats.sort();
        if job == "sync" && whats.iter().all(|what| !what.ends_with("NoQuorum")) {
            sync_ticks.0 += 1;
            sync_ticks.1 += usize::from(whats.iter().filter(|w| w.ends_with("=ran")).count() == 1);
        }
        println!(
            "  {}  {job:<12}  {}",
            clock(UNIX_EPOCH + Duration::from_secs(tick)),
            whats.join(" ")
        );
    }

    let bodies = lock(&journal.bodies);
    let mut ok = true;

    let mut syncs: Vec<&BodyRun> = bodies.iter().filter(|run| run.job == "sync").collect();
    syncs.sort_by_key(|run| run.started);
    let overlaps = syncs
        .windows(2)
        .filter(|pair| pair[1].started < pair[0].ended)
        .count();
    println!(
        "\ncheck: {} sync bodies ran, {overlaps} overlapped another one (mutual exclusion): {}",
        syncs.len(),
        verdict(overlaps == 0)
    );
    ok &= overlaps == 0;
    println!(
        "       sync ticks that reached a quorum: {}, run by exactly one machine: {} \
         (a machine that fires more than min_hold late runs a tick again)",
        sync_ticks.0, sync_ticks.1
    );

    let mut successes: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for run in bodies.iter().filter(|run| run.job == "daily-report") {
        let entry = successes.entry(run.period.unwrap_or_default()).or_default();
        if run.succeeded {
            entry.push(run.machine);
        }
    }
    let twice = successes
        .values()
        .filter(|machines| machines.len() > 1)
        .count();
    println!(
        "check: daily-report ran in {} \"days\" of {} s, succeeded twice in {twice} of them (slot): {}",
        successes.len(),
        DEMO_DAY.as_secs(),
        verdict(twice == 0)
    );
    ok &= twice == 0;

    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "ok"
    } else {
        "FAILED"
    }
}

/// Locks a mutex of the journal, poisoned or not (a panic elsewhere must not hide the summary).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or_default()
}

/// The time of day of `at`, in UTC, as `HH:MM:SS`.
fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default()
        % (24 * 60 * 60);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
