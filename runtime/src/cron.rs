//! Cron schedules for `#[singleton]` jobs: every machine of the fleet keeps the same schedule,
//! and each tick runs once in the fleet (needs the `cron` feature).
//!
//! ```no_run
//! use cluster_singleton::singleton;
//!
//! #[singleton(key = "daily-report", ttl = "10m")]
//! async fn daily_report() -> Result<usize, std::io::Error> {
//!     Ok(3) // send the report
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), cluster_singleton::Error> {
//!     cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
//!     cluster_singleton::cron::Schedule::new()
//!         .job("0 0 2 * * *", || daily_report()) // 02:00:00 UTC every day
//!         .run()
//!         .await
//! }
//! ```
//!
//! # Each tick is a period of its own
//!
//! A job's call for a tick runs as if the call had a `slot` whose period is that tick: from its
//! scheduled time to the next tick. The tick's scheduled time names it alike on every machine, so
//!
//! - the first machine to take the lock runs the tick; when its run succeeds (`Ok` for a
//!   `Result`, anything else always), it marks the tick done while it still holds the lock;
//! - a machine whose clock or scheduler fires late, after that run released the lock, finds the
//!   mark and gets `Ok(Outcome::Skipped(Skip::AlreadyDone { period_start }))`, with the tick's
//!   scheduled time as `period_start`: no `min_hold` or `slot` is needed for that;
//! - a run that failed (`Err`, a panic, a lost lease) marks nothing and frees the lock at once,
//!   so a machine that fires later in the same tick runs it again;
//! - a machine that fires while another runs the tick gets `Skipped(Busy)`, as ever.
//!
//! The job's lock key is still the key its `#[singleton]` names, and its options stay as
//! written: the tick only chooses the done marker (`<prefix>done:<key>:<tick in Unix ms>`, kept
//! until the end of the next tick's period). A job whose options set a `slot` keeps that slot
//! instead: once per slot, however many ticks fall in it. `#[singleton]` calls that the job makes
//! in the same task (not in tasks it spawns) are once per tick too, each under its own key.
//! [`current_tick`] tells a job which tick it runs for.
//!
//! A tick's run that lasts past the next tick holds the lock then: the next tick is `Busy`
//! everywhere and is not run. Keep the ttl, and the run, shorter than the interval.
//!
//! # Which machines fire: every one, or only the leader
//!
//! - **Every machine fires, one runs each tick** (the default): nothing to set up beyond the
//!   schedule, and a tick runs as long as one machine is up and a majority of Redis nodes
//!   answers. Each tick costs one lock attempt per machine. The right choice for most jobs.
//!   (Machines that fire at the same instant may split the vote; they retry, up to four
//!   attempts within the tick, after random pauses as long as their attempts take, and a tick
//!   whose every attempt split is `Skipped(SplitVote)` everywhere and not run: rare, and the
//!   rarer the more the machines' firing times differ.)
//! - **Only the leader fires** ([`Schedule::leader_only`]): one machine's scheduler fires,
//!   the others stay quiet, so a fleet of hundreds sends one attempt per tick instead of
//!   hundreds. A tick is still run under its lock and marked done, so a tick near a hand-over
//!   that both the old and the new leader fire still runs once. But a tick that comes while no
//!   machine sees itself as leader (between a leader's loss and the next election) is not
//!   fired at all: use it for frequent jobs where a missed tick is harmless, or with
//!   [`Schedule::catch_up`].
//!
//! # Missed ticks
//!
//! A tick that comes while no machine of the fleet runs (or no leader exists, in leader mode) is
//! skipped by default, as cron does. [`Schedule::catch_up`] changes that: when the schedule
//! starts, it fires the latest tick before the start if that tick is at most that long ago.
//! Catching up is safe on every machine at once (a rolling restart): the tick is still a period
//! of its own, so it runs once, and not at all if it had run before the restart. Only the latest
//! missed tick is fired, once, never a backlog of them. The same holds while a schedule runs: a
//! process that was paused (or whose clock stepped forward) past several ticks fires only the
//! latest of them.
//!
//! # Expressions, time zone
//!
//! Expressions are parsed by [croner](https://docs.rs/croner): five fields (`min hour
//! day-of-month month day-of-week`, Vixie cron's) or six with seconds first (`sec min hour ...`),
//! with `L`, `W` and `#` (`0 0 12 * * FRI#2`, the second Friday), names (`MON-FRI`, `JAN`), and
//! day of week 0-7 with both 0 and 7 for Sunday. It was chosen because it reads the standard
//! five-field form as well as seconds (the `cron` crate requires six or seven fields and counts
//! weekdays from 1 = Sunday, a trap for crontab users), finds previous ticks as well as next ones
//! (which [`Schedule::catch_up`] needs), is actively maintained (version 3, 2025), and is what
//! tokio-cron-scheduler uses too. Schedules are in **UTC**: `0 0 2 * * *` is 02:00 UTC on every
//! machine, whatever its local time zone, so that every machine names a tick alike.
//!
//! # Tests
//!
//! With `memory://` nodes (`Config::new(["memory://"])`), schedules work in one process as in a
//! fleet: several schedules on runtimes of the same `memory://` store run each tick once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::slot::{Period, TICK};

mod ticks;

use crate::{Error, Runtime};
use ticks::{latest_tick, next_tick, parse};

/// The longest a schedule sleeps before it reads the wall clock again: a clock that was
/// stepped (NTP, a suspended VM) moves the next tick by at most this much.
const READ_THE_CLOCK_EVERY: Duration = Duration::from_secs(60);

/// A tick's period when the expression has no later tick (a date that never comes again): long
/// enough for its done marker to outlive every late machine.
const LAST_TICK_LENGTH: Duration = Duration::from_secs(24 * 60 * 60);

/// A job as the schedule keeps it: a call that starts one run and forgets its output.
type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Cron expressions and the `#[singleton]` jobs they fire; [`Schedule::start`] or
/// [`Schedule::run`] sets them going. See [the module](self) for what a tick guarantees.
///
/// ```no_run
/// use std::time::Duration;
/// use cluster_singleton::singleton;
///
/// #[singleton(key = "sync", ttl = "30s")]
/// async fn sync() -> Result<(), std::io::Error> {
///     Ok(())
/// }
///
/// #[singleton(key = "cleanup", ttl = "5m")]
/// async fn cleanup(older_than_days: u32) -> usize {
///     older_than_days as usize
/// }
///
/// # async fn start() -> Result<(), cluster_singleton::Error> {
/// cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
/// let schedule = cluster_singleton::cron::Schedule::new()
///     .job("0 * * * * *", || sync()) // second 0 of every minute
///     .job("30 3 * * *", || cleanup(30)) // 03:30 UTC every day
///     .catch_up(Duration::from_secs(3600))
///     .start()?;
/// // ... and at the end of the program:
/// schedule.stop();
/// # Ok(())
/// # }
/// ```
#[must_use = "a schedule fires nothing until `start` or `run`"]
pub struct Schedule {
    jobs: Vec<Job>,
    /// What was wrong with the expressions given, reported by `start`.
    invalid: Vec<String>,
    runtime: Option<Runtime>,
    leader: Option<Arc<dyn Leader>>,
    catch_up: Option<Duration>,
    fire_late_by: Duration,
}

struct Job {
    expression: String,
    cron: Cron,
    call: Call,
}

/// Whether this process leads now, for [`Schedule::leader_only`]: any `Fn() -> bool`, such as
/// `move || leadership.is_leader()`.
pub trait Leader: Send + Sync + 'static {
    /// Whether this process is the leader at this instant.
    fn is_leader(&self) -> bool;
}

impl<F: Fn() -> bool + Send + Sync + 'static> Leader for F {
    fn is_leader(&self) -> bool {
        self()
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::new()
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expressions: Vec<&str> = self
            .jobs
            .iter()
            .map(|job| job.expression.as_str())
            .collect();
        f.debug_struct("Schedule")
            .field("jobs", &expressions)
            .field("leader_only", &self.leader.is_some())
            .field("catch_up", &self.catch_up)
            .finish_non_exhaustive()
    }
}

impl Schedule {
    /// A schedule with no jobs, every machine firing, missed ticks skipped, on the runtime in
    /// effect when it starts.
    ///
    /// ```
    /// let schedule = cluster_singleton::cron::Schedule::new();
    /// # drop(schedule);
    /// ```
    pub fn new() -> Self {
        Schedule {
            jobs: Vec::new(),
            invalid: Vec::new(),
            runtime: None,
            leader: None,
            catch_up: None,
            fire_late_by: Duration::ZERO,
        }
    }

    /// Calls `job` at every tick of `expression` (five fields, or six with seconds first; in
    /// UTC), and waits for what it returns. `job` is typically a closure calling a
    /// `#[singleton]` function, whose output (any type) is dropped: log it in the job if it
    /// matters. Each call runs as a task of its own, so a slow run delays no other job.
    ///
    /// An expression that does not parse is reported by [`Schedule::start`] as
    /// [`Error::InvalidConfig`].
    ///
    /// ```no_run
    /// # use cluster_singleton::{singleton, Outcome};
    /// #[singleton(key = "invoices", ttl = "1m")]
    /// async fn invoices() -> Result<u32, std::io::Error> {
    ///     Ok(12)
    /// }
    ///
    /// # fn demo() -> Result<(), cluster_singleton::Error> {
    /// cluster_singleton::cron::Schedule::new()
    ///     .job("*/15 * * * *", || async {
    ///         match invoices().await {
    ///             Ok(Outcome::Ran(sent)) => println!("sent: {sent:?}"),
    ///             Ok(Outcome::Skipped(why)) => println!("skipped: {why}"),
    ///             Err(err) => eprintln!("could not run: {err}"),
    ///         }
    ///     })
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn job<F, Fut>(mut self, expression: &str, job: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
    {
        match parse(expression) {
            Ok(cron) => {
                let call: Call = Arc::new(move || {
                    let run = job();
                    Box::pin(async move {
                        let _ = run.await;
                    })
                });
                self.jobs.push(Job {
                    expression: expression.to_owned(),
                    cron,
                    call,
                });
            }
            Err(err) => self.invalid.push(err),
        }
        self
    }

    /// Uses `runtime` for the jobs' `#[singleton]` calls, rather than the runtime in effect when
    /// the schedule starts (the one `Runtime::scope` set, else the global one): for several sets
    /// of nodes in one process, or tests.
    ///
    /// ```
    /// # fn demo() -> Result<(), cluster_singleton::Error> {
    /// let runtime = cluster_singleton::runtime::Config::new(["memory://"]).build()?;
    /// let schedule = cluster_singleton::cron::Schedule::new().runtime(runtime);
    /// # drop(schedule);
    /// # Ok(())
    /// # }
    /// ```
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Fires the jobs only while `leader` says this process leads (checked at each tick); see
    /// [the module](self#which-machines-fire-every-one-or-only-the-leader) for when to choose
    /// it. Every machine of the fleet keeps the schedule, each with its own `leader`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// // Here a flag that the program sets when it is elected; a leadership's `is_leader`
    /// // works the same: `move || leadership.is_leader()`.
    /// let leading = Arc::new(AtomicBool::new(false));
    /// let flag = leading.clone();
    /// let schedule = cluster_singleton::cron::Schedule::new()
    ///     .leader_only(move || flag.load(Ordering::SeqCst));
    /// # drop(schedule);
    /// ```
    pub fn leader_only(mut self, leader: impl Leader) -> Self {
        self.leader = Some(Arc::new(leader));
        self
    }

    /// When the schedule starts, fires each job's latest tick before the start if it came at
    /// most `within` ago: a tick missed while every machine was down (a deploy at 02:00) runs
    /// late rather than not at all. A tick that ran before is `AlreadyDone`, so this is safe on
    /// every machine at once. Off by default: missed ticks are skipped.
    ///
    /// A tick's done mark lasts until the end of the next tick's period, so `within` longer
    /// than the interval between ticks changes nothing: only the latest tick is ever caught up.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let schedule = cluster_singleton::cron::Schedule::new()
    ///     .catch_up(Duration::from_secs(6 * 3600));
    /// # drop(schedule);
    /// ```
    pub fn catch_up(mut self, within: Duration) -> Self {
        self.catch_up = Some(within);
        self
    }

    /// Fires every tick this much after its scheduled time: how tests play a machine whose
    /// clock or scheduler is late. The tick is still the scheduled one.
    #[doc(hidden)]
    pub fn fire_late_by(mut self, late: Duration) -> Self {
        self.fire_late_by = late;
        self
    }

    /// Starts firing the jobs, in tasks on the tokio runtime this is called in, and returns at
    /// once. The schedule fires until [`Scheduled::stop`], or until its runtime is shut down
    /// (`runtime::shutdown`); dropping the returned handle leaves it running.
    ///
    /// Fails with [`Error::InvalidConfig`] for an expression that does not parse, a schedule
    /// without jobs, or a call outside a tokio runtime, and with [`Error::NotInitialised`] when
    /// no runtime is in effect (call `runtime::init` first, or give [`Schedule::runtime`]).
    ///
    /// ```no_run
    /// # use cluster_singleton::singleton;
    /// # #[singleton(key = "sync", ttl = "30s")]
    /// # async fn sync() {}
    /// # async fn demo() -> Result<(), cluster_singleton::Error> {
    /// let schedule = cluster_singleton::cron::Schedule::new()
    ///     .job("*/10 * * * * *", || sync())
    ///     .start()?;
    /// // ... the service runs; at the end:
    /// schedule.stop();
    /// cluster_singleton::runtime::shutdown(std::time::Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<Scheduled, Error> {
        if !self.invalid.is_empty() {
            return Err(Error::InvalidConfig(self.invalid.join("; ")));
        }
        if self.jobs.is_empty() {
            return Err(Error::InvalidConfig(
                "the schedule has no jobs; add them with `Schedule::job` before `start`".into(),
            ));
        }
        let tasks = Handle::try_current().map_err(|_| {
            Error::InvalidConfig(
                "`Schedule::start` was called outside a tokio runtime; call it from async code \
                 (inside `#[tokio::main]`)"
                    .into(),
            )
        })?;
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Runtime::current()?,
        };
        let firing = Arc::new(Firing {
            runtime,
            tasks: tasks.clone(),
            leader: self.leader,
            catch_up: self.catch_up,
            fire_late_by: self.fire_late_by,
        });
        let jobs = self
            .jobs
            .into_iter()
            .map(|job| tasks.spawn(fire(job, firing.clone())))
            .collect();
        Ok(Scheduled { jobs })
    }

    /// [`Schedule::start`], then waits for as long as the schedule fires: until the runtime is
    /// shut down. Dropping the returned future stops the schedule (calls already running go
    /// on), so it fits a `tokio::select!` beside the program's signal handling.
    ///
    /// ```no_run
    /// # use cluster_singleton::singleton;
    /// # #[singleton(key = "sync", ttl = "30s")]
    /// # async fn sync() {}
    /// # async fn demo() -> Result<(), cluster_singleton::Error> {
    /// # let sigterm = std::future::pending::<()>();
    /// let schedule = cluster_singleton::cron::Schedule::new().job("* * * * *", || sync());
    /// tokio::select! {
    ///     ended = schedule.run() => ended?,
    ///     _ = sigterm => {} // the program's shutdown signal: `tokio::signal::ctrl_c()`, say
    /// }
    /// cluster_singleton::runtime::shutdown(std::time::Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run(self) -> Result<(), Error> {
        let mut scheduled = StopOnDrop(self.start()?);
        for job in scheduled.0.jobs.iter_mut() {
            // A job's task ends only when the runtime shuts down (or it panicked: nothing to add).
            let _ = job.await;
        }
        Ok(())
    }
}

/// A started schedule: [`Scheduled::stop`] ends it. Dropping it leaves the schedule running.
#[derive(Debug)]
pub struct Scheduled {
    jobs: Vec<JoinHandle<()>>,
}

impl Scheduled {
    /// Stops firing: no tick after this one fires. Calls already running go on to their end (and
    /// release their locks), or are ended by `runtime::shutdown`.
    ///
    /// ```no_run
    /// # fn demo(schedule: cluster_singleton::cron::Scheduled) {
    /// schedule.stop();
    /// # }
    /// ```
    pub fn stop(&self) {
        for job in &self.jobs {
            job.abort();
        }
    }
}

/// Stops a schedule that `run` started when `run`'s future is dropped.
struct StopOnDrop(Scheduled);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The scheduled time of the cron tick that this task runs a job for: `Some` inside a job that
/// a [`Schedule`] called (in the same task), `None` anywhere else.
///
/// ```
/// assert_eq!(cluster_singleton::cron::current_tick(), None);
/// ```
pub fn current_tick() -> Option<SystemTime> {
    crate::slot::current_tick().map(|tick| tick.start())
}

/// What every job of a started schedule shares.
struct Firing {
    runtime: Runtime,
    /// Where the job calls run: the caller's tokio runtime.
    tasks: Handle,
    leader: Option<Arc<dyn Leader>>,
    catch_up: Option<Duration>,
    fire_late_by: Duration,
}

impl Firing {
    /// Starts one call of `job` for `tick`, as a task of its own, with the tick as its period
    /// and the schedule's runtime in effect.
    fn call(&self, job: &Job, tick: DateTime<Utc>) {
        let start = SystemTime::from(tick);
        let next = next_tick(&job.cron, tick).map_or(start + LAST_TICK_LENGTH, SystemTime::from);
        let span = tracing::info_span!("cron", schedule = %job.expression, tick = %tick);
        let run = self
            .runtime
            .scope(TICK.scope(Period::tick(start, next), (job.call)()));
        drop(self.tasks.spawn(run.instrument(span)));
    }
}

/// Fires `job` at each of its ticks, for as long as the runtime is not shut down.
async fn fire(job: Job, firing: Arc<Firing>) {
    let mut after = Utc::now();
    if let Some(within) = firing.catch_up {
        if let Ok(missed) = latest_tick(&job.cron, after) {
            let leads = firing
                .leader
                .as_ref()
                .is_none_or(|leader| leader.is_leader());
            if leads && (after - missed).to_std().is_ok_and(|ago| ago <= within) {
                tracing::info!(schedule = %job.expression, tick = %missed, "catching up the latest tick before the start");
                firing.call(&job, missed);
            }
        }
    }
    loop {
        let tick = match next_tick(&job.cron, after) {
            Ok(tick) => tick,
            Err(err) => {
                tracing::warn!(schedule = %job.expression, error = %err, "the schedule has no later tick; it stops");
                return;
            }
        };
        sleep_until(&firing, SystemTime::from(tick) + firing.fire_late_by).await;
        if firing.runtime.is_shut_down() {
            return;
        }
        // Woken past later ticks (a paused process, a clock stepped forward): only the latest
        // fires, as after a restart.
        let due = Utc::now() - firing.fire_late_by;
        let latest = latest_tick(&job.cron, due)
            .ok()
            .filter(|latest| *latest > tick)
            .unwrap_or(tick);
        if latest > tick {
            tracing::warn!(schedule = %job.expression, from = %tick, to = %latest, "woke up late: the ticks before the latest are skipped");
        }
        after = latest;
        if let Some(leader) = &firing.leader {
            if !leader.is_leader() {
                tracing::debug!(schedule = %job.expression, tick = %latest, "not the leader: the tick is the leader's");
                continue;
            }
        }
        firing.call(&job, latest);
    }
}

/// Waits until the wall clock reads `at`, reading it again at least every
/// [`READ_THE_CLOCK_EVERY`] (the timers count monotonic time, which a clock step does not move).
/// Returns early when the runtime begins to shut down, so that `Schedule::run` returns then.
async fn sleep_until(firing: &Firing, at: SystemTime) {
    let mut shutting_down = firing.runtime.shutting_down();
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            return;
        }
        let deadline = Instant::now() + left.min(READ_THE_CLOCK_EVERY);
        tokio::select! {
            () = crate::driver::sleep_until(firing.runtime.nodes().crate_thread(), deadline) => {}
            _ = shutting_down.wait_for(|down| *down) => return,
        }
    }
}
