//! Drives concurrent tasks through lock attempts for a fixed time and records what it cost.
//!
//! Shared, through `#[path]`, by the harness (`benches/lock.rs`) and by the rslock contender
//! (`benches/rslock`), so that every contender is driven and measured by the same code.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name of the cluster-singleton runtime's own thread, as the kernel keeps it: thread names
/// are cut to 15 bytes. Its CPU time is what bounds the crate's throughput when every lock of the
/// process goes through that one thread.
const ENGINE_THREAD: &str = "cluster-singlet";

/// Room reserved per task for latencies, so that growing the vector does not show up as a
/// latency spike in the first measurements.
const LATENCIES_PER_TASK: usize = 4_096;

/// How one attempt at a lock ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Took the lock, and released it.
    Locked,
    /// Another holder has it.
    Busy,
    /// An error: no quorum, a timeout, a failed release.
    Failed,
}

/// What one measurement window saw.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub locked: u64,
    pub busy: u64,
    pub failed: u64,
    /// Attempts made while warming up, before the window: they reach Redis too, so the
    /// commands-per-attempt figure divides by them as well.
    pub warm_up_attempts: u64,
    /// From the start of the window until the last task finished its last attempt.
    pub elapsed: Duration,
    /// The latency of every attempt in the window, in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// CPU time (user + system) of the whole process during the window.
    pub cpu: Duration,
    /// Context switches (voluntary + involuntary) of the whole process during the window.
    pub context_switches: u64,
    /// CPU time of the cluster-singleton runtime's own thread during the window (zero in a
    /// process without it).
    pub engine_cpu: Duration,
}

impl Sample {
    /// Attempts in the window, whatever their outcome.
    pub fn attempts(&self) -> u64 {
        self.locked + self.busy + self.failed
    }

    /// `count` per second of the window.
    pub fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The `quantile` (0.5 for the median) of the latencies, by nearest rank; `None` when the
    /// window saw no attempt.
    pub fn latency(&self, quantile: f64) -> Option<Duration> {
        let rank = (quantile * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len().max(1)) - 1;
        self.latencies
            .get(index)
            .map(|nanos| Duration::from_nanos(*nanos))
    }

    /// One line of text, for the rslock contender to hand its sample to the harness.
    #[allow(dead_code)] // the harness only reads these lines
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "sample {} {} {} {} {} {} {} {} {}",
            self.locked,
            self.busy,
            self.failed,
            self.warm_up_attempts,
            self.elapsed.as_nanos(),
            self.cpu.as_nanos(),
            self.context_switches,
            self.engine_cpu.as_nanos(),
            self.latencies.len()
        );
        for nanos in &self.latencies {
            line.push(' ');
            line.push_str(&nanos.to_string());
        }
        line
    }

    /// The inverse of [`Sample::to_line`].
    pub fn from_line(line: &str) -> Result<Sample, String> {
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("sample") {
            return Err(format!("expected a sample, got {line:?}"));
        }
        let mut numbers = words.map(|word| {
            word.parse::<u64>()
                .map_err(|err| format!("bad number {word:?} in a sample: {err}"))
        });
        let mut next = || {
            numbers
                .next()
                .unwrap_or_else(|| Err("a sample line ended early".to_owned()))
        };
        let (locked, busy, failed, warm_up_attempts) = (next()?, next()?, next()?, next()?);
        let elapsed = Duration::from_nanos(next()?);
        let cpu = Duration::from_nanos(next()?);
        let context_switches = next()?;
        let engine_cpu = Duration::from_nanos(next()?);
        let count = next()?;
        let latencies = (0..count).map(|_| next()).collect::<Result<_, _>>()?;
        Ok(Sample {
            locked,
            busy,
            failed,
            warm_up_attempts,
            elapsed,
            latencies,
            cpu,
            context_switches,
            engine_cpu,
        })
    }
}

/// What one task saw.
#[derive(Default)]
struct Tally {
    locked: u64,
    busy: u64,
    failed: u64,
    latencies: Vec<u64>,
}

/// Runs `tasks` tasks, each calling `attempt(task)` again and again: for `warm_up` unrecorded,
/// then for `window` recorded. A task finishes the attempt it is in when the time is up (cutting
/// it short would leave locks behind), so the window can run a little over; the rates divide by
/// the time actually taken.
///
/// Must be called inside a tokio runtime; the tasks are spawned on it, so that a multi-threaded
/// runtime spreads them over its workers as an application's would.
pub async fn drive<C, F>(tasks: usize, warm_up: Duration, window: Duration, attempt: C) -> Sample
where
    C: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Attempt> + Send + 'static,
{
    let attempt = Arc::new(attempt);
    let warmed = run_tasks(tasks, warm_up, &attempt).await;
    let before = Usage::now();
    let started = Instant::now();
    let tallies = run_tasks(tasks, window, &attempt).await;
    let elapsed = started.elapsed();
    let used = Usage::now().since(&before);

    let mut sample = Sample {
        warm_up_attempts: warmed
            .iter()
            .map(|tally| tally.locked + tally.busy + tally.failed)
            .sum(),
        elapsed,
        cpu: used.cpu,
        context_switches: used.context_switches,
        engine_cpu: used.engine_cpu,
        ..Sample::default()
    };
    for tally in tallies {
        sample.locked += tally.locked;
        sample.busy += tally.busy;
        sample.failed += tally.failed;
        sample.latencies.extend(tally.latencies);
    }
    sample.latencies.sort_unstable();
    sample
}

async fn run_tasks<C, F>(tasks: usize, period: Duration, attempt: &Arc<C>) -> Vec<Tally>
where
    C: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Attempt> + Send + 'static,
{
    let until = Instant::now() + period;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let attempt = attempt.clone();
            tokio::spawn(async move {
                let mut tally = Tally {
                    latencies: Vec::with_capacity(LATENCIES_PER_TASK),
                    ..Tally::default()
                };
                while Instant::now() < until {
                    let started = Instant::now();
                    let outcome = attempt(task).await;
                    let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    tally.latencies.push(took);
                    match outcome {
                        Attempt::Locked => tally.locked += 1,
                        Attempt::Busy => tally.busy += 1,
                        Attempt::Failed => tally.failed += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut tallies = Vec::with_capacity(tasks);
    for handle in handles {
        // A task panics only on a bug in the contender's code: stop the benchmark loudly.
        tallies.push(handle.await.expect("a benchmark task panicked"));
    }
    tallies
}

/// The process's resource usage so far, from `getrusage`, and the crate's own thread's.
pub struct Usage {
    /// User and system CPU time of every thread of the process.
    pub cpu: Duration,
    /// Voluntary and involuntary context switches of every thread of the process.
    pub context_switches: u64,
    /// CPU time of the cluster-singleton runtime's own thread (zero in a process without it).
    pub engine_cpu: Duration,
}

impl Usage {
    /// The usage so far.
    pub fn now() -> Usage {
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct, and getrusage
        // only writes into the one we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF cannot fail.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let time = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Usage {
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            context_switches: u64::try_from(usage.ru_nvcsw + usage.ru_nivcsw).unwrap_or(0),
            engine_cpu: engine_cpu(),
        }
    }

    /// What was used between `earlier` and this reading.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
            engine_cpu: self.engine_cpu.saturating_sub(earlier.engine_cpu),
        }
    }
}

/// CPU time so far of this process's threads named [`ENGINE_THREAD`], from the scheduler's
/// own nanosecond count (`/proc/self/task/<tid>/schedstat`; `stat` counts in 10 ms ticks, too
/// coarse for a window). Threads that go away while we look are not counted.
fn engine_cpu() -> Duration {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut nanos = 0;
    for thread in threads.flatten() {
        let path = thread.path();
        let named = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.trim_end() == ENGINE_THREAD);
        if !named {
            continue;
        }
        // `<time on the CPU, ns> <time waiting for it, ns> <time slices>`
        nanos += std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|stat| stat.split_ascii_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(nanos)
}
