//! The Redlock algorithm: one function per step, in the order the algorithm takes them.
//!
//! 1. [`acquire`]: a fresh token, `SET key token NX PX ttl` on every node at once, stop as soon as
//!    the result is decided; after a split vote, give back and try again after a random pause;
//!    with fencing, a second round ([`raise_fence`]) fixes the lease's fencing token;
//! 2. [`validity`]: what is left of the ttl after the time spent and the clock drift;
//! 3. on failure, [`release`] on every node that may hold our token, then tell contention
//!    (a quorum answered) from outage (it did not);
//! 4. [`extend`] while the holder works: owner-checked, on a quorum, with validity left;
//! 5. [`release`] when the holder is done: compare-and-delete (or, for `min_hold`,
//!    compare-and-expire), so it never touches a key whose value is not ours.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use crate::node::NodeError;
use crate::{Error, Lease, NoQuorum, NodeFailure, Runtime};

/// Subtracted from every lock's validity on top of the drift factor's share of the ttl: the
/// Redlock paper's allowance for the granularity of the nodes' expiry clocks.
pub(crate) const CLOCK_DRIFT_FLOOR: Duration = Duration::from_millis(2);

/// Bytes of OS randomness in a lock token: 128 bits, so that no two acquisitions, anywhere,
/// ever share a token.
const TOKEN_BYTES: usize = 16;

/// How many votes decide: a strict majority of the nodes.
pub(crate) fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// What is left of the ttl once the attempt took `elapsed`, minus the allowance for clock drift;
/// `None` when nothing is left and the lock must not be used.
pub(crate) fn validity(ttl: Duration, elapsed: Duration, drift_factor: f64) -> Option<Duration> {
    let drift = ttl.mul_f64(drift_factor) + CLOCK_DRIFT_FLOOR;
    ttl.checked_sub(elapsed)?
        .checked_sub(drift)
        .filter(|left| !left.is_zero())
}

/// How many attempts a caller caught in a split vote makes before it skips.
const SPLIT_VOTE_ATTEMPTS: usize = 4;

/// The first random pause after a split vote is drawn from this window, or from the attempt's own
/// duration when that is longer (slower networks need wider windows to separate contenders); the
/// window doubles after each split.
const SPLIT_VOTE_FIRST_WINDOW: Duration = Duration::from_millis(2);

/// The widest window: all retries end within a few tens of milliseconds of the first attempt, so
/// a retry cannot become a second run of a job that takes longer than that. A job that finishes
/// faster can run twice this way, as it can when one machine's cron fires late; keeping the key
/// for a while after the body closes both gaps.
const SPLIT_VOTE_MAX_WINDOW: Duration = Duration::from_millis(20);

/// A fresh lock token from the OS random source, as 32 hex digits.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Internal(format!("the OS random source failed: {err}")))?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}

/// One node's answer to `SET NX`.
enum Vote {
    /// With fencing, the node's fencing counter as it was when it granted (else 0).
    Granted(u64),
    Busy,
    Failed(NodeError),
}

/// The answers so far to one attempt.
struct Tally {
    quorum: usize,
    nodes: usize,
    granted: usize,
    /// The highest fencing counter among the nodes that granted.
    highest_fence: u64,
    /// Per node: it answered that the key was already set, so our SET did not land there.
    busy: Vec<bool>,
    failures: Vec<NodeFailure>,
}

impl Tally {
    fn new(nodes: usize) -> Self {
        Tally {
            quorum: quorum(nodes),
            nodes,
            granted: 0,
            highest_fence: 0,
            busy: vec![false; nodes],
            failures: Vec::new(),
        }
    }

    fn record(&mut self, node: usize, name: &str, vote: Vote) {
        match vote {
            Vote::Granted(fence) => {
                self.granted += 1;
                self.highest_fence = self.highest_fence.max(fence);
            }
            Vote::Busy => self.busy[node] = true,
            Vote::Failed(err) => self.failures.push(NodeFailure {
                node: name.to_owned(),
                cause: err.to_string(),
            }),
        }
    }

    /// Puts the votes on the call's span (a no-op outside `Runtime::run_with`), so that a
    /// trace shows how close the call came to a quorum.
    fn record_on_span(&self) {
        let span = tracing::Span::current();
        span.record("granted", self.granted);
        span.record("busy", self.busy_count());
        span.record("failed", self.failures.len());
        for failure in &self.failures {
            tracing::debug!(
                node = failure.node,
                cause = failure.cause,
                "a node gave no vote"
            );
        }
    }

    fn busy_count(&self) -> usize {
        self.busy.iter().filter(|busy| **busy).count()
    }

    /// Nodes that gave a definite answer, granted or busy.
    fn answered(&self) -> usize {
        self.granted + self.busy_count()
    }

    fn pending(&self) -> usize {
        self.nodes - self.answered() - self.failures.len()
    }

    fn won(&self) -> bool {
        self.granted >= self.quorum
    }

    /// Not won, yet not lost to one holder either as far as we can tell: we won some nodes, and
    /// enough nodes answered to rule out an outage.
    fn split(&self) -> bool {
        !self.won() && self.granted > 0 && self.answered() >= self.quorum
    }

    /// Nodes that may hold our token: all but those that answered that the key was taken (a
    /// failed or unanswered SET may still have landed).
    fn maybe_ours(&self) -> Vec<usize> {
        (0..self.nodes).filter(|&node| !self.busy[node]).collect()
    }

    /// Whether the answers still outstanding can change the result: once the lock is won, or
    /// cannot be won and it is known whether that is contention or an outage, waiting for slow
    /// nodes would only add their latency.
    fn decided(&self) -> bool {
        let cannot_win = self.granted + self.pending() < self.quorum;
        let contention_known = self.answered() >= self.quorum;
        let outage_known = self.answered() + self.pending() < self.quorum;
        self.won() || (cannot_win && (contention_known || outage_known))
    }
}

/// Tries to take `key` for `ttl` on a quorum of the runtime's nodes.
///
/// `Ok(Some(lease))` when taken, `Ok(None)` when another holder has it (a quorum answered), and
/// an error when too few nodes answered to tell or the attempt outlived its ttl.
///
/// One attempt, except after a split vote: callers that fire at the same instant (every
/// machine's cron at 00:00) can each win a minority of the nodes, and if all of them gave up
/// nobody would run the job. A caller that won some nodes but not a quorum gives them back and
/// tries again after a random pause; callers that won no node skip at once, since those that
/// won some will settle it among themselves.
pub(crate) async fn acquire(
    runtime: Runtime,
    key: String,
    ttl: Duration,
    fencing: bool,
) -> Result<Option<Lease>, Error> {
    let fence_key = fencing.then(|| fence_key(&key));
    let mut window = SPLIT_VOTE_FIRST_WINDOW;
    for _ in 0..SPLIT_VOTE_ATTEMPTS {
        let token = new_token()?;
        let started = Instant::now();
        let tally = vote(&runtime, &key, fence_key.as_deref(), &token, ttl).await;
        tally.record_on_span();

        if tally.won() {
            let fence = match &fence_key {
                None => Ok(None),
                Some(fence_key) => {
                    raise_fence(&runtime, &key, fence_key, &token, tally.highest_fence, ttl)
                        .await
                        .map(Some)
                }
            };
            match (
                fence,
                validity(ttl, started.elapsed(), runtime.drift_factor()),
            ) {
                (Ok(fence), Some(left)) => {
                    tracing::Span::current().record("validity_ms", left.as_millis() as u64);
                    let valid_until = Instant::now() + left;
                    return Ok(Some(Lease::new(
                        runtime,
                        key,
                        token,
                        ttl,
                        started,
                        valid_until,
                        fence,
                    )));
                }
                (Err(no_quorum), _) => {
                    spawn_release(&runtime, &key, token, tally.maybe_ours());
                    return Err(Error::NoQuorum(no_quorum));
                }
                (Ok(_), None) => {}
            }
        }
        let took = started.elapsed();

        let maybe_ours = tally.maybe_ours();
        if tally.split() {
            // Given back before the pause, so that our grants don't split the next round too.
            release(&runtime, &key, &token, maybe_ours, Duration::ZERO, None).await;
            window = window.max(took).min(SPLIT_VOTE_MAX_WINDOW);
            tokio::time::sleep(random_below(window)?).await;
            window *= 2;
            continue;
        }
        // The release goes down each node's connection after our SET, so Redis applies it after
        // the SET even when the SET's answer is still on its way; nobody needs to wait for it.
        spawn_release(&runtime, &key, token, maybe_ours);
        return decide_failed(tally, ttl, took, key);
    }
    // Still split after every retry: the contenders that are left are as likely to settle it.
    Ok(None)
}

/// Gives back what a failed attempt may hold, in the background.
fn spawn_release(runtime: &Runtime, key: &str, token: String, maybe_ours: Vec<usize>) {
    if maybe_ours.is_empty() {
        return;
    }
    let (runtime, key) = (runtime.clone(), key.to_owned());
    runtime.engine().clone().spawn(async move {
        release(&runtime, &key, &token, maybe_ours, Duration::ZERO, None).await;
    });
}

/// Where the fencing counter of the lock `key` lives: beside it, and without expiry.
fn fence_key(key: &str) -> String {
    format!("{key}:fence")
}

/// The second round of a fenced acquisition: picks a fencing token above every counter the
/// granting nodes had, and above the wall clock in microseconds, and raises the counter to it on
/// every node that still holds our lock. The token counts only once a quorum raised it.
///
/// Why it increases: a later acquisition is granted on a node only after our key there is gone,
/// so after our raise there; any two quorums share a node, so the later one reads a counter at
/// least ours and picks a higher token. The clock floor covers nodes that lost their counter in
/// a restart without persistence (see `Options::fencing`).
async fn raise_fence(
    runtime: &Runtime,
    key: &str,
    fence_key: &str,
    token: &str,
    highest: u64,
    ttl: Duration,
) -> Result<u64, NoQuorum> {
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let fence = highest.saturating_add(1).max(now_micros);
    let (mut raised, mut failures) = (0, Vec::new());
    let mut answers: FuturesUnordered<_> = (0..runtime.node_count())
        .map(|node| async move {
            (
                node,
                runtime
                    .node(node)
                    .raise_fence(key, fence_key, token, fence, ttl)
                    .await,
            )
        })
        .collect();
    while let Some((node, answer)) = answers.next().await {
        match answer {
            Ok(true) => raised += 1,
            Ok(false) => {}
            Err(err) => failures.push(NodeFailure {
                node: runtime.node(node).name().to_owned(),
                cause: err.to_string(),
            }),
        }
        if raised >= runtime.quorum() {
            return Ok(fence);
        }
    }
    Err(NoQuorum {
        key: fence_key.to_owned(),
        nodes: runtime.node_count(),
        answered: raised,
        needed: runtime.quorum(),
        failures,
    })
}

/// A random pause in `[0, window)`, from the OS random source.
pub(crate) fn random_below(window: Duration) -> Result<Duration, Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Internal(format!("the OS random source failed: {err}")))?;
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
    Ok(Duration::from_nanos(u64::from_le_bytes(bytes) % nanos))
}

/// The result of an attempt that did not take the lock: busy when a quorum answered, otherwise
/// an outage.
fn decide_failed(
    tally: Tally,
    ttl: Duration,
    elapsed: Duration,
    key: String,
) -> Result<Option<Lease>, Error> {
    if tally.won() {
        return Err(Error::Expired { key, elapsed, ttl });
    }
    if tally.answered() >= tally.quorum {
        return Ok(None);
    }
    Err(Error::NoQuorum(NoQuorum {
        key,
        nodes: tally.nodes,
        answered: tally.answered(),
        needed: tally.quorum,
        failures: tally.failures,
    }))
}

/// Sends `SET key token NX PX ttl` to every node at once and collects answers until the result
/// is decided.
async fn vote(
    runtime: &Runtime,
    key: &str,
    fence_key: Option<&str>,
    token: &str,
    ttl: Duration,
) -> Tally {
    let mut tally = Tally::new(runtime.node_count());
    let mut answers: FuturesUnordered<_> = (0..tally.nodes)
        .map(|node| async move {
            let node_of = runtime.node(node);
            let vote = match fence_key {
                None => node_of
                    .set_nx(key, token, ttl)
                    .await
                    .map(|granted| granted.then_some(0)),
                Some(fence_key) => {
                    node_of
                        .set_nx_reading_fence(key, fence_key, token, ttl)
                        .await
                }
            };
            let vote = match vote {
                Ok(Some(fence)) => Vote::Granted(fence),
                Ok(None) => Vote::Busy,
                Err(err) => Vote::Failed(err),
            };
            (node, vote)
        })
        .collect();
    while let Some((node, vote)) = answers.next().await {
        tally.record(node, runtime.node(node).name(), vote);
        if tally.decided() {
            break;
        }
    }
    tally
}

/// Runs the compare-and-delete script on `nodes` at once (or, with a non-zero `keep`, lets our
/// key expire that long from now instead: `min_hold`). A node that fails keeps our key until
/// its ttl runs out; that is logged, never retried past the per-node timeout.
///
/// `settled`, when given, hears as soon as a quorum answered (the lock is then free for others
/// whatever the rest say) or, failing that, once every node answered or failed: a frozen node
/// then delays the caller by nothing, and only this task by at most the per-node timeout.
pub(crate) async fn release(
    runtime: &Runtime,
    key: &str,
    token: &str,
    nodes: Vec<usize>,
    keep: Duration,
    mut settled: Option<oneshot::Sender<Result<(), NoQuorum>>>,
) {
    let mut answered = 0;
    let mut failures = Vec::new();
    let mut answers: FuturesUnordered<_> = nodes
        .into_iter()
        .map(|node| async move { (node, runtime.node(node).release(key, token, keep).await) })
        .collect();
    while let Some((node, answer)) = answers.next().await {
        match answer {
            Ok(_deleted) => answered += 1,
            Err(err) => {
                let name = runtime.node(node).name();
                tracing::warn!(key, node = name, error = %err, "releasing the lock failed on a node; its copy expires with the ttl");
                failures.push(NodeFailure {
                    node: name.to_owned(),
                    cause: err.to_string(),
                });
            }
        }
        if answered >= runtime.quorum() {
            if let Some(settled) = settled.take() {
                // The caller may have stopped waiting; the release goes on regardless.
                let _ = settled.send(Ok(()));
            }
        }
    }
    if let Some(settled) = settled {
        let _ = settled.send(Err(NoQuorum {
            key: key.to_owned(),
            nodes: runtime.node_count(),
            answered,
            needed: runtime.quorum(),
            failures,
        }));
    }
}

/// What an attempt to extend a lease found.
pub(crate) enum Extension {
    /// A quorum still held our token and now holds it until `valid_until`.
    Extended { valid_until: Instant },
    /// So many nodes hold another token (or none) that a quorum can no longer be ours: the lock
    /// was taken over, or expired.
    Gone,
    /// Too few nodes answered to tell; the lease stands until its validity runs out.
    Undecided(NoQuorum),
}

/// Extends our lock on `key` to expire `keep` from now on every node where it is still ours, and
/// says whether a quorum confirmed it in time to count.
pub(crate) async fn extend(
    runtime: &Runtime,
    key: &str,
    token: &str,
    keep: Duration,
    ttl: Duration,
) -> Extension {
    let started = Instant::now();
    let nodes = runtime.node_count();
    let quorum = runtime.quorum();
    let (mut ours, mut not_ours) = (0, 0);
    let mut failures = Vec::new();
    let mut answers: FuturesUnordered<_> = (0..nodes)
        .map(|node| async move { (node, runtime.node(node).extend(key, token, keep, ttl).await) })
        .collect();
    while let Some((node, answer)) = answers.next().await {
        match answer {
            Ok(true) => ours += 1,
            Ok(false) => not_ours += 1,
            Err(err) => failures.push(NodeFailure {
                node: runtime.node(node).name().to_owned(),
                cause: err.to_string(),
            }),
        }
        if ours >= quorum || not_ours > nodes - quorum {
            break;
        }
    }
    if not_ours > nodes - quorum {
        return Extension::Gone;
    }
    match validity(keep, started.elapsed(), runtime.drift_factor()) {
        Some(left) if ours >= quorum => Extension::Extended {
            valid_until: Instant::now() + left,
        },
        _ => Extension::Undecided(NoQuorum {
            key: key.to_owned(),
            nodes,
            answered: ours + not_ours,
            needed: quorum,
            failures,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(quorum), [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn validity_subtracts_elapsed_and_drift() {
        let ttl = Duration::from_secs(10);
        // drift = 10 s * 0.01 + 2 ms = 102 ms
        assert_eq!(
            validity(ttl, Duration::from_millis(98), 0.01),
            Some(Duration::from_millis(9_800))
        );
        assert_eq!(validity(ttl, Duration::from_millis(9_898), 0.01), None);
        assert_eq!(validity(ttl, Duration::from_secs(11), 0.01), None);
        assert_eq!(
            validity(Duration::from_millis(1), Duration::ZERO, 0.0),
            None
        );
    }

    /// Feeds answers in order and reports after how many the attempt was decided.
    fn decided_after(nodes: usize, votes: &[&str]) -> Option<usize> {
        let mut tally = Tally::new(nodes);
        for (node, vote) in votes.iter().enumerate() {
            let vote = match *vote {
                "ok" => Vote::Granted(0),
                "busy" => Vote::Busy,
                _ => Vote::Failed(NodeError::Timeout(Duration::from_millis(1))),
            };
            tally.record(node, "node", vote);
            if tally.decided() {
                return Some(node + 1);
            }
        }
        None
    }

    #[test]
    fn attempts_stop_as_soon_as_the_result_is_known() {
        // Won on the third grant of five: the two slow nodes are not waited for.
        assert_eq!(decided_after(5, &["ok", "ok", "ok", "ok", "ok"]), Some(3));
        // Three busy answers of five: contention, known without the last two.
        assert_eq!(
            decided_after(5, &["busy", "busy", "busy", "ok", "ok"]),
            Some(3)
        );
        // Three failures of five: an outage, whatever the others say.
        assert_eq!(
            decided_after(5, &["fail", "fail", "fail", "ok", "ok"]),
            Some(3)
        );
        // Two failures and two busy: cannot win, but busy-or-outage depends on the last node.
        assert_eq!(decided_after(5, &["fail", "fail", "busy", "busy"]), None);
        assert_eq!(
            decided_after(5, &["fail", "fail", "busy", "busy", "busy"]),
            Some(5)
        );
        assert_eq!(decided_after(1, &["busy"]), Some(1));
    }

    #[test]
    fn tokens_are_fresh_128_bit_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
