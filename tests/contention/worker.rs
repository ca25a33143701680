//! One worker process: T tasks, each in a loop of a call on a random key, as `#[singleton]`
//! makes it (`Runtime::run_with`, renewal off so that the lease's validity is the one recorded),
//! until the orchestrator closes the worker's stdin. A line [`COUNTS_REQUEST`] on stdin makes it
//! write its counts at once. A one-shot worker makes one call per task and exits right after,
//! as a program run by cron would.
//!
//! The worker is this test binary, started again to run only the ignored `worker_process` test,
//! which reads its settings from environment variables (see [`WorkerConfig`]).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_singleton::runtime::{Config, OnLost, Options, Runtime};
use cluster_singleton::{lease, Error, Outcome};

use super::records::{monotonic_now, Counts, Nanos, Record, RecordWriter};

/// The longest ttl of the fleet (`Config::max_ttl`, and so the restart grace): as in
/// `#[singleton(key = "...", ttl = "2s")]`. Workers in odd slots use [`SHORT_TTL`] instead, as
/// after a deploy that changed the ttl of a job.
pub const TTL: Duration = Duration::from_secs(2);

/// The ttl of workers in odd slots.
pub const SHORT_TTL: Duration = Duration::from_millis(1500);

/// A body that overruns blocks its thread this long past its ttl: the lease runs out under it,
/// and another worker takes the key while it still runs.
const OVERRUN_BEYOND_TTL: Duration = Duration::from_millis(400);

/// Per node and command. Short, so that a faulty node costs little of the workload; loopback
/// answers in well under a millisecond.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(200);

/// Opening a connection, which a frozen or partitioned node never completes.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The shortest and longest body: from a few milliseconds, shorter than a lock round trip, to a
/// tenth of a second, far below the ttl (renewal is off, so a body must end well within its
/// lease).
const BODY: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(100));

/// One body in this many is long instead: a fault that takes a moment to act (a node restarted
/// and reconnected to, which takes a tenth of a second or more) must be able to fall inside a
/// body, or the checker could never see what it does to a lock that is held.
const LONG_BODY_ONE_IN: usize = 8;

/// A long body: up to half the ttl, leaving the rest for acquisition time and a loaded machine.
const LONG_BODY: (Duration, Duration) = (Duration::from_millis(300), Duration::from_secs(1));

/// The pause after each attempt, so that a task that keeps finding its key busy does not spin a
/// core; short enough that every release meets contenders racing for the key.
const PAUSE: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(30));

/// How often a worker writes its counts, so that a killed worker's are nearly complete.
const COUNTS_EVERY: Duration = Duration::from_millis(250);

/// Tokio threads per worker: the crate's own thread does the Redis I/O.
const TOKIO_THREADS: usize = 2;

/// At most this many unexpected errors are written down per worker: the first say enough.
const MAX_UNEXPECTED_RECORDS: u64 = 10;

/// A worker writes down at most one no-quorum error in this long, as a sample of what the
/// faults did to the votes: often enough to catch a short fault, rarely enough that the warm-up
/// (every attempt fails while fresh nodes serve out the restart grace) does not flood the file.
const NO_QUORUM_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Sent on a worker's stdin, as a line, to have it write its counts now.
pub const COUNTS_REQUEST: &str = "counts";

/// Redis keys are `singleton:contention-<k>`.
pub const KEY_PREFIX: &str = "contention-";

const URLS_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_URLS";
const RECORDS_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_RECORDS";
const TASKS_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_TASKS";
const KEYS_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_KEYS";
const SEED_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_SEED";
const GRACE_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_RESTART_GRACE_MS";
const DETECT_CLOCK_JUMPS_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_DETECT_CLOCK_JUMPS";
const TTL_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_TTL_MS";
const ONE_SHOT_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_ONE_SHOT";
const OVERRUN_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_OVERRUN_ONE_IN";
const LEADER_VAR: &str = "CLUSTER_SINGLETON_CONTENTION_LEADER";

/// What a worker is told by the orchestrator, through environment variables.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub urls: Vec<String>,
    pub records: PathBuf,
    pub tasks: usize,
    pub keys: usize,
    pub seed: u64,
    /// How long a restarted node must be up before its votes count.
    pub restart_grace: Duration,
    /// Whether a node whose clock stepped forward is treated like a restarted one.
    pub detect_clock_jumps: bool,
    /// The ttl of this worker's calls.
    pub ttl: Duration,
    /// One call per task, then exit.
    pub one_shot: bool,
    /// One body in this many blocks its thread past its lease (0: none does).
    pub overrun_one_in: usize,
    /// Campaign for leadership instead of locking (see `leader.rs`); 0: lock.
    pub leader: u8,
}

impl WorkerConfig {
    /// The settings the orchestrator gave, or `None` when this process is not a worker (the
    /// ignored test was run by hand).
    pub fn from_env() -> Option<WorkerConfig> {
        let urls = std::env::var(URLS_VAR).ok()?;
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
        let number = |name: &str| -> u64 {
            var(name)
                .parse()
                .unwrap_or_else(|_| panic!("{name} is a number"))
        };
        Some(WorkerConfig {
            urls: urls.split(',').map(str::to_owned).collect(),
            records: var(RECORDS_VAR).into(),
            tasks: number(TASKS_VAR) as usize,
            keys: number(KEYS_VAR) as usize,
            seed: number(SEED_VAR),
            restart_grace: Duration::from_millis(number(GRACE_VAR)),
            detect_clock_jumps: number(DETECT_CLOCK_JUMPS_VAR) == 1,
            ttl: Duration::from_millis(number(TTL_VAR)),
            one_shot: number(ONE_SHOT_VAR) == 1,
            overrun_one_in: number(OVERRUN_VAR) as usize,
            leader: number(LEADER_VAR) as u8,
        })
    }

    /// Passes these settings to a worker process about to be started.
    pub fn apply(&self, command: &mut Command) {
        command
            .env(URLS_VAR, self.urls.join(","))
            .env(RECORDS_VAR, &self.records)
            .env(TASKS_VAR, self.tasks.to_string())
            .env(KEYS_VAR, self.keys.to_string())
            .env(SEED_VAR, self.seed.to_string())
            .env(GRACE_VAR, self.restart_grace.as_millis().to_string())
            .env(
                DETECT_CLOCK_JUMPS_VAR,
                u8::from(self.detect_clock_jumps).to_string(),
            )
            .env(TTL_VAR, self.ttl.as_millis().to_string())
            .env(ONE_SHOT_VAR, u8::from(self.one_shot).to_string())
            .env(OVERRUN_VAR, self.overrun_one_in.to_string())
            .env(LEADER_VAR, self.leader.to_string());
    }
}

/// Counts shared by a worker's tasks.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) acquired: AtomicU64,
    busy: AtomicU64,
    no_quorum: AtomicU64,
    expired: AtomicU64,
    lost: AtomicU64,
    unexpected: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            acquired: get(&self.acquired),
            busy: get(&self.busy),
            no_quorum: get(&self.no_quorum),
            expired: get(&self.expired),
            lost: get(&self.lost),
            unexpected: get(&self.unexpected),
        }
    }
}

pub(super) fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// What every task of a worker shares.
pub(super) struct Shared {
    pub(super) runtime: Runtime,
    records: RecordWriter,
    pub(super) counters: Counters,
    pub(super) stop: AtomicBool,
    keys: usize,
    pub(super) ttl: Duration,
    overrun_one_in: usize,
    pub(super) pid: u32,
    /// When the last no-quorum sample was written, on the records' clock.
    last_no_quorum_sample: AtomicU64,
}

/// Runs the worker until its stdin closes, then lets every task finish its current attempt,
/// writes the final counts and returns.
pub fn run(config: WorkerConfig) {
    let engine = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(TOKIO_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runtime = Config::new(&config.urls)
        .node_timeout(NODE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .max_ttl(TTL)
        .restart_grace(config.restart_grace)
        .detect_clock_jumps(config.detect_clock_jumps)
        .build()
        .expect("a valid configuration");
    let shared = Arc::new(Shared {
        runtime,
        records: RecordWriter::create(&config.records).expect("open the record file"),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        keys: config.keys,
        ttl: config.ttl,
        overrun_one_in: config.overrun_one_in,
        pid: std::process::id(),
        last_no_quorum_sample: AtomicU64::new(0),
    });
    write(&shared, &Record::Ready { pid: shared.pid });

    // The orchestrator asks for counts on stdin, and stops workers by closing it; so does its
    // death.
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(line) if line == COUNTS_REQUEST => write_counts(&shared),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            shared.stop.store(true, Ordering::SeqCst);
        });
    }

    engine.block_on(async {
        if config.leader != 0 {
            let rng = fastrand::Rng::with_seed(config.seed);
            super::leader::lead(shared.clone(), config.leader, rng).await;
            write_counts(&shared);
            return;
        }
        if config.one_shot {
            let calls: Vec<_> = (0..config.tasks)
                .map(|task| {
                    let mut rng = fastrand::Rng::with_seed(config.seed.wrapping_add(task as u64));
                    let shared = shared.clone();
                    tokio::spawn(async move { call(shared, task, &mut rng).await })
                })
                .collect();
            for call in calls {
                call.await.expect("a call does not panic");
            }
            write_counts(&shared);
            // ...and the process exits at once, without `shutdown`.
            return;
        }
        let tasks: Vec<_> = (0..config.tasks)
            .map(|task| {
                let rng = fastrand::Rng::with_seed(config.seed.wrapping_add(task as u64));
                tokio::spawn(contend(shared.clone(), task, rng))
            })
            .collect();
        while !shared.stop.load(Ordering::SeqCst) {
            tokio::time::sleep(COUNTS_EVERY).await;
            write_counts(&shared);
        }
        for task in tasks {
            task.await.expect("a contending task does not panic");
        }
        write_counts(&shared);
    });
}

/// One task's loop: a call on a random key, then a pause.
async fn contend(shared: Arc<Shared>, task: usize, mut rng: fastrand::Rng) {
    while !shared.stop.load(Ordering::SeqCst) {
        call(shared.clone(), task, &mut rng).await;
        tokio::time::sleep(between(&mut rng, PAUSE)).await;
    }
}

/// One call on a random key: a body if it took the lock, its records, and the outcome's count.
async fn call(shared: Arc<Shared>, task: usize, rng: &mut fastrand::Rng) {
    let key = format!("{KEY_PREFIX}{}", rng.usize(..shared.keys));
    let overrun = shared.overrun_one_in > 0 && rng.usize(..shared.overrun_one_in) == 0;
    let length = if rng.usize(..LONG_BODY_ONE_IN) == 0 {
        LONG_BODY
    } else {
        BODY
    };
    let body_time = between(rng, length);
    // Renewal off: the validity recorded at the enter is the lease's whole life. `Continue`:
    // a body that outlives its lease still records its exit.
    let options = Options::new(shared.ttl)
        .renew(false)
        .on_lost(OnLost::Continue);
    let body = {
        let (shared, key) = (shared.clone(), key.clone());
        async move {
            let lease = lease().expect("inside the body");
            // Validity first, then the clock: the recorded end of the lease errs late, so the
            // checker errs towards calling an overlap a lock failure.
            let validity = lease.validity();
            let at = monotonic_now();
            // The random part alone, unique to the acquisition: the holder id after the space
            // would split the record's space-separated fields.
            let token = lease
                .token()
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned();
            write(
                &shared,
                &Record::Enter {
                    at,
                    valid_until: at + nanos(validity),
                    pid: shared.pid,
                    task,
                    key: key.clone(),
                    token: token.clone(),
                },
            );
            if overrun {
                // A body that blocks its thread: nothing can cancel it, and it ends after its
                // lease, which the call must then say.
                std::thread::sleep(shared.ttl + OVERRUN_BEYOND_TTL);
            } else {
                tokio::time::sleep(body_time).await;
            }
            write(
                &shared,
                &Record::Exit {
                    at: monotonic_now(),
                    pid: shared.pid,
                    key,
                    token: token.clone(),
                },
            );
            token
        }
    };
    // The body's token, for the outcome's record: a lost lease's error does not carry it.
    let token = Arc::new(Mutex::new(None::<String>));
    let token_of = token.clone();
    let result = shared
        .runtime
        .run_with(
            &key,
            options,
            async move {
                let token = body.await;
                *token_of.lock().unwrap() = Some(token);
            },
            |_| true,
        )
        .await;
    let token = token.lock().unwrap().take();
    match result {
        Ok(Outcome::Ran(())) => {
            bump(&shared.counters.acquired);
            let token = token.expect("a body that ran has a token");
            write(
                &shared,
                &Record::Outcome {
                    pid: shared.pid,
                    token,
                    ran: true,
                },
            );
        }
        Err(Error::LeaseLost { .. }) => {
            bump(&shared.counters.acquired);
            bump(&shared.counters.lost);
            if let Some(token) = token {
                write(
                    &shared,
                    &Record::Outcome {
                        pid: shared.pid,
                        token,
                        ran: false,
                    },
                );
            }
        }
        Ok(Outcome::Skipped(_)) => {
            bump(&shared.counters.busy);
        }
        Err(Error::NoQuorum(no_quorum)) => {
            bump(&shared.counters.no_quorum);
            let at = monotonic_now();
            let last = shared.last_no_quorum_sample.load(Ordering::Relaxed);
            let due = last == 0 || at >= last + nanos(NO_QUORUM_SAMPLE_EVERY);
            let claimed = due
                && shared
                    .last_no_quorum_sample
                    .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if claimed {
                let message = no_quorum.to_string();
                let pid = shared.pid;
                write(&shared, &Record::NoQuorum { at, pid, message });
            }
        }
        Err(Error::Expired { .. }) => {
            bump(&shared.counters.expired);
        }
        Err(other) => {
            if bump(&shared.counters.unexpected) <= MAX_UNEXPECTED_RECORDS {
                let message = format!("task {task}, key {key}: {other}");
                write(
                    &shared,
                    &Record::Unexpected {
                        pid: shared.pid,
                        message,
                    },
                );
            }
        }
    }
}

fn write_counts(shared: &Shared) {
    write(
        shared,
        &Record::Counts {
            pid: shared.pid,
            counts: shared.counters.snapshot(),
        },
    );
}

/// A record that cannot be written makes the whole run meaningless: stop loudly.
pub(super) fn write(shared: &Shared, record: &Record) {
    shared
        .records
        .write(record)
        .unwrap_or_else(|e| panic!("write a record: {e}"));
}

/// A random duration in `[low, high]`.
pub(super) fn between(rng: &mut fastrand::Rng, (low, high): (Duration, Duration)) -> Duration {
    Duration::from_nanos(rng.u64(nanos(low)..=nanos(high)))
}

pub fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).expect("durations here are short")
}
