//! The rows of issue 12, "a hundred thousand leases on one machine": many leases held at once
//! by one process while renewal keeps them (`hold`), and many acquisitions started at once
//! (`burst`). Both go through the public API only, `Runtime::run_with`, as an application would.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Options, Runtime};
use cluster_singleton::Outcome;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::drive::Usage;
use super::floor::Floor;
use super::nodes::{self, Admin};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The ttl of every held lease: renewal runs every third of it, so a 10 s window sees about ten
/// renewal rounds of every lease.
pub const HOLD_TTL: Duration = Duration::from_secs(3);

/// Acquisitions started together in the hold row; each wave is awaited before the next starts,
/// so that what the row measures is holding, not an acquisition burst (the burst row's concern).
/// At 1,000 a wave, a quarter of the first wave's acquisitions failed on a 2-core machine (at
/// the time of issue 12: the nodes' answers came later than a 3 s ttl's clock allowance).
pub const HOLD_WAVE: usize = 500;

/// Tries per lease in the hold row: an acquisition that fails anyway (no quorum within the node
/// timeout, on a machine shared with other work) is tried again, so that the row holds all N.
pub const HOLD_ATTEMPTS: usize = 3;

/// Pause before a wave's failed acquisitions are tried again, so that the nodes' backlog drains.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The ttl of each call of the burst row by default, and the longest it takes (the bench
/// runtime's `max_ttl`): long against the burst, so that no lock expires while the calls are
/// still being answered.
pub const BURST_TTL: Duration = Duration::from_secs(10);

/// What the hold row measured for one number of leases.
pub struct Held {
    /// Leases held at once.
    pub leases: usize,
    /// The measuring window, from when every lease was held and had been renewed once.
    pub window: Duration,
    /// CPU time of the whole process over the window.
    pub cpu: Duration,
    /// CPU time of the crate's own runtime thread over the window.
    pub engine_cpu: Duration,
    /// Resident bytes once every lease was held and renewed once, minus before the first was
    /// taken (negative if the allocator gave back more than the leases took).
    pub resident_growth: i64,
    /// Bytes the allocator had handed out and not been given back, at the same two moments:
    /// the live data alone, where the resident size also counts the allocator's free memory and
    /// any other page the process touched meanwhile. `None` where the allocator cannot say
    /// (other than glibc's).
    pub allocated_growth: Option<i64>,
    /// Lock commands the nodes ran over the window, summed over nodes.
    pub commands: u64,
    /// Leases lost before the window ended (from the moment each was taken): the call returned
    /// early, with an error or after its body saw the lease lost.
    pub lost: u64,
    /// Of `lost`, those lost before the window began (while the waves were taken, or while the
    /// first renewal round ran).
    pub lost_before_window: u64,
    /// Calls that did not return `Ok(Ran)` in the end (`Err(LeaseLost)` included, and
    /// acquisitions that failed on every try).
    pub errors: u64,
    /// Leases held once every wave was taken.
    pub holding: usize,
    /// Acquisitions that failed and were tried again (not errors: the lease was then held).
    pub retried: u64,
    /// How long taking every lease took, waves and retries included.
    pub acquiring: Duration,
    /// One error message, for the progress output.
    pub first_error: Option<String>,
}

/// How one call of the hold row ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// `Ok(Ran)`, the body having waited for the end of the window.
    Ran,
    /// `Ok(Skipped)`: another holder had the key (none should).
    Skipped,
    /// `Err(LeaseLost)`.
    LeaseLost,
    /// Any other error.
    Failed,
}

/// How a call of the hold row ended, with its error's message if it had one.
type Ended = (Ending, Option<String>);

/// A call of the hold row, running in a task of its own.
struct Holder {
    index: usize,
    call: JoinHandle<Ended>,
    /// Answered once the body runs; dropped unanswered if the call returns without running it.
    entered: oneshot::Receiver<()>,
}

/// What every holder shares: the end of the window, and the count of leases lost before it.
#[derive(Clone)]
struct Window {
    end: watch::Receiver<bool>,
    over: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
}

/// Holds `leases` leases at once on `runtime`, each a `run_with` call of its own task whose body
/// waits for the end of the window, and measures what holding them costs over `window`.
///
/// `nodes` are the nodes whose commands are counted (all of the runtime's).
pub fn hold(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    admin: &mut Admin,
    nodes: &[usize],
    leases: usize,
    window: Duration,
) -> Result<Held> {
    for &node in nodes {
        admin.wait_quiet(node)?;
    }
    // Freed memory of an earlier row goes back to the system, so that it does not hide this
    // row's growth.
    return_free_memory();
    let resident_before = nodes::resident_bytes()?;
    let allocated_before = allocated_bytes();

    let (end, end_rx) = watch::channel(false);
    let shared = Window {
        end: end_rx,
        over: Arc::new(AtomicBool::new(false)),
        lost: Arc::new(AtomicU64::new(0)),
    };
    let acquiring = Instant::now();
    let (calls, mut endings, retried) = tokio.block_on(take_in_waves(runtime, &shared, leases));
    let acquiring = acquiring.elapsed();
    let holding = calls.len();

    // Every lease renewed once since the last wave was taken: renewal's own state is in place.
    std::thread::sleep(HOLD_TTL / 2);
    let resident_after = nodes::resident_bytes()?;
    let allocated_after = allocated_bytes();

    let lost_before_window = shared.lost.load(Ordering::SeqCst);
    let Measured {
        usage,
        elapsed,
        commands,
    } = measure(admin, nodes, window)?;
    shared.over.store(true, Ordering::SeqCst);
    let lost = shared.lost.load(Ordering::SeqCst);

    end.send_replace(true);
    tokio.block_on(async {
        for call in calls {
            endings.push(call.await.expect("a holder task panicked"));
        }
    });
    // `Ok(Ran)` is the only success.
    let errors = endings
        .iter()
        .filter(|(ending, _)| *ending != Ending::Ran)
        .count() as u64;
    let first_error = endings.into_iter().find_map(|(_, message)| message);
    Ok(Held {
        leases,
        window: elapsed,
        cpu: usage.cpu,
        engine_cpu: usage.engine_cpu,
        resident_growth: resident_after as i64 - resident_before as i64,
        allocated_growth: allocated_before
            .zip(allocated_after)
            .map(|(before, after)| after as i64 - before as i64),
        commands,
        lost,
        lost_before_window,
        errors,
        holding,
        retried,
        acquiring,
        first_error,
    })
}

/// What the process and the nodes did over one measuring window.
struct Measured {
    usage: Usage,
    elapsed: Duration,
    /// Lock commands the nodes ran, summed over nodes.
    commands: u64,
}

/// Sleeps through `window` while leases or keys are renewed in the background: the process's
/// resource usage and the lock commands `nodes` ran meanwhile. The hold row and its floor are
/// measured by this one function, so that their figures compare.
fn measure(admin: &mut Admin, nodes: &[usize], window: Duration) -> Result<Measured> {
    let commands_before = admin.lock_commands(nodes)?;
    let usage_before = Usage::now();
    let started = Instant::now();
    std::thread::sleep(window);
    let usage = Usage::now().since(&usage_before);
    let elapsed = started.elapsed();
    let commands = admin.lock_commands(nodes)? - commands_before;
    Ok(Measured {
        usage,
        elapsed,
        commands,
    })
}

/// What the hold row's floor measured for one number of leases.
pub struct FloorHeld {
    pub leases: usize,
    pub window: Duration,
    /// CPU time of the whole process over the window.
    pub cpu: Duration,
    /// Lock commands the nodes ran over the window, summed over nodes.
    pub commands: u64,
    /// Keys that a node did not renew, over every round of the window (none should).
    pub not_renewed: u64,
}

/// The hold row's floor: `leases` keys set on every node and renewed every third of
/// [`HOLD_TTL`] by [`Floor::renew`], nothing but redis-rs on the benchmark's runtime. No lease
/// state, no validity, no loss detection, no task per lease: what renewing that many keys costs
/// the client at least, measured over `window` as the hold row is.
pub fn hold_floor(
    tokio: &tokio::runtime::Runtime,
    floor: &Arc<Floor>,
    admin: &mut Admin,
    nodes: &[usize],
    leases: usize,
    window: Duration,
) -> Result<FloorHeld> {
    for &node in nodes {
        admin.wait_quiet(node)?;
    }
    // Tokens as long as the runtime's (32 hex digits, a space, a holder id).
    let keys: Arc<Vec<(String, String)>> = Arc::new(
        (0..leases)
            .map(|index| {
                let token = format!("{:032x} bench-floor:{index}", fastrand::u128(..));
                (format!("singleton:lock:hold-floor:{index}"), token)
            })
            .collect(),
    );
    tokio.block_on(floor.put(&keys, HOLD_TTL))?;
    let (stop, mut stopped) = watch::channel(false);
    let renewing = {
        let (floor, keys) = (floor.clone(), keys.clone());
        tokio.spawn(async move {
            let mut not_renewed = 0;
            let mut rounds = tokio::time::interval(HOLD_TTL / 3);
            loop {
                tokio::select! {
                    _ = rounds.tick() => not_renewed += floor.renew(&keys, HOLD_TTL).await?,
                    _ = stopped.changed() => return Ok::<u64, redis::RedisError>(not_renewed),
                }
            }
        })
    };
    std::thread::sleep(HOLD_TTL / 2);
    let Measured {
        usage,
        elapsed,
        commands,
    } = measure(admin, nodes, window)?;
    stop.send_replace(true);
    let not_renewed = tokio.block_on(renewing)??;
    tokio.block_on(floor.delete(&keys))?;
    Ok(FloorHeld {
        leases,
        window: elapsed,
        cpu: usage.cpu,
        commands,
        not_renewed,
    })
}

/// Takes `leases` leases, [`HOLD_WAVE`] at a time: the calls that hold theirs, the endings of
/// those that failed on every try, and how many acquisitions were tried again.
async fn take_in_waves(
    runtime: &Runtime,
    shared: &Window,
    leases: usize,
) -> (Vec<JoinHandle<Ended>>, Vec<Ended>, u64) {
    let mut holding = Vec::with_capacity(leases);
    let mut gave_up = Vec::new();
    let mut retried = 0;
    for first in (0..leases).step_by(HOLD_WAVE) {
        let mut wave: Vec<usize> = (first..leases.min(first + HOLD_WAVE)).collect();
        for attempt in 1..=HOLD_ATTEMPTS {
            let started: Vec<Holder> = wave
                .drain(..)
                .map(|index| start_holder(runtime, shared, index, attempt))
                .collect();
            for holder in started {
                if holder.entered.await.is_ok() {
                    holding.push(holder.call);
                    continue;
                }
                // The call returned without running its body: it has ended.
                let ending = holder.call.await.expect("a holder task panicked");
                if attempt < HOLD_ATTEMPTS {
                    wave.push(holder.index);
                    retried += 1;
                } else {
                    gave_up.push(ending);
                }
            }
            if wave.is_empty() {
                break;
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
    (holding, gave_up, retried)
}

/// Starts the call that holds `hold:{index}` (`hold:{index}:try{attempt}` after the first try)
/// until the window ends.
///
/// A try again goes to a key of its own: a failed try's `SET`s may still land on the nodes
/// after it gave up, and hold its key for a ttl, so that a try on the same key would be skipped.
fn start_holder(runtime: &Runtime, shared: &Window, index: usize, attempt: usize) -> Holder {
    let (entered_tx, entered) = oneshot::channel();
    let (runtime, shared) = (runtime.clone(), shared.clone());
    let call = tokio::spawn(async move {
        let key = match attempt {
            1 => format!("hold:{index}"),
            _ => format!("hold:{index}:try{attempt}"),
        };
        let mut end = shared.end.clone();
        let entered = AtomicBool::new(false);
        let result = runtime
            .run_with(
                &key,
                Options::new(HOLD_TTL),
                async {
                    entered.store(true, Ordering::SeqCst);
                    let _ = entered_tx.send(());
                    // A lost lease ends the body before this: the call cancels it
                    // (`OnLost::Cancel`, the default) and returns `Err(LeaseLost)`.
                    let _ = end.wait_for(|over| *over).await;
                },
                |_| true,
            )
            .await;
        // A call that took its lease returns before the window is over only if the lease was
        // lost (or the call dropped it). One that never ran its body is not counted here: the
        // waves try it again.
        if entered.load(Ordering::SeqCst) && !shared.over.load(Ordering::SeqCst) {
            shared.lost.fetch_add(1, Ordering::SeqCst);
        }
        match result {
            Ok(Outcome::Ran(())) => (Ending::Ran, None),
            Ok(Outcome::Skipped(why)) => (Ending::Skipped, Some(format!("skipped: {why}"))),
            Err(err @ cluster_singleton::Error::LeaseLost { .. }) => {
                (Ending::LeaseLost, Some(err.to_string()))
            }
            Err(err) => (Ending::Failed, Some(err.to_string())),
        }
    });
    Holder {
        index,
        call,
        entered,
    }
}

/// What the burst row saw.
pub struct Burst {
    /// Calls started at once.
    pub calls: usize,
    pub ran: u64,
    pub skipped: u64,
    /// `Err(NoQuorum)`: too few nodes answered in time.
    pub no_quorum: u64,
    /// Any other error.
    pub failed: u64,
    /// From the first call's start to the last call's return.
    pub elapsed: Duration,
    /// Why nodes gave no vote, over every `NoQuorum`: each failure kind (`FailureKind`, as
    /// `Debug` names it) and how many node failures were of that kind. Says which bound the
    /// burst runs into: the node timeout (`Timeout`), or the clock check's allowance
    /// (`Unverified`: the answer came too late to tell whether the node's clock stepped).
    pub node_failures: BTreeMap<String, u64>,
    /// One message of each kind of failure, for the progress output.
    pub first_no_quorum: Option<String>,
    pub first_failure: Option<String>,
}

/// Starts `calls` `run_with` calls at once, each on a key of its own with an empty body, and
/// waits for all of them.
pub fn burst(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    admin: &mut Admin,
    nodes: &[usize],
    calls: usize,
    ttl: Duration,
) -> Result<Burst> {
    for &node in nodes {
        admin.wait_quiet(node)?;
    }
    let mut burst = Burst {
        calls,
        ran: 0,
        skipped: 0,
        no_quorum: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        node_failures: BTreeMap::new(),
        first_no_quorum: None,
        first_failure: None,
    };
    tokio.block_on(async {
        let started = Instant::now();
        let handles: Vec<_> = (0..calls)
            .map(|index| {
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    let key = format!("burst:{index}");
                    runtime
                        .run_with(&key, Options::new(ttl), async {}, |_| true)
                        .await
                })
            })
            .collect();
        for handle in handles {
            match handle.await.expect("a burst task panicked") {
                Ok(Outcome::Ran(())) => burst.ran += 1,
                Ok(Outcome::Skipped(_)) => burst.skipped += 1,
                Err(cluster_singleton::Error::NoQuorum(err)) => {
                    burst.no_quorum += 1;
                    for failure in &err.failures {
                        *burst
                            .node_failures
                            .entry(format!("{:?}", failure.kind))
                            .or_default() += 1;
                    }
                    burst.first_no_quorum.get_or_insert(err.to_string());
                }
                Err(err) => {
                    burst.failed += 1;
                    burst.first_failure.get_or_insert(err.to_string());
                }
            }
        }
        burst.elapsed = started.elapsed();
    });
    // The releases of the last calls, and the clean-up of failed attempts, finish before the
    // next row.
    for &node in nodes {
        admin.wait_quiet(node)?;
    }
    Ok(burst)
}

/// Hands the allocator's free pages back to the system (glibc keeps them otherwise), so that
/// the resident size says what is in use.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator has handed out and not been given back, over all its arenas.
fn allocated_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters; it has no preconditions.
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
