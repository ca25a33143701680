//! The Redlock algorithm: one function per step, in the order the algorithm takes them.
//!
//! 1. [`acquire`]: a fresh token, `SET key token NX PX ttl` on every node at once, stop as soon as
//!    the result is decided; after a split vote, give back and try again after a random pause;
//!    with fencing, a second round ([`raise_fence`]) fixes the lease's fencing token;
//! 2. [`validity`]: what is left of the ttl after the time spent and the clock drift;
//! 3. on failure, [`give_back`] on every node where our token may have landed (a node that
//!    answered "taken" holds someone else's), before returning, then tell contention (a quorum
//!    answered) from outage (it did not);
//! 4. [`extend`] while the holder works: owner-checked, on a quorum, with validity left; nodes
//!    that lack the key get our token back (repair);
//! 5. [`release`] when the holder is done: compare-and-delete (or, for `min_hold`,
//!    compare-and-expire), so it never touches a key whose value is not ours.
//!
//! Every step is a [`Round`]: one command to several nodes at once, awaited on the caller's own
//! task, so that a lock costs its two round trips and no hand-off to another thread.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::clock::drift_allowance;
use crate::driver;
use crate::lease::{Held, Taken};
use crate::node::{NodeError, Renewed};
use crate::{Error, Lease, NoQuorum, NodeFailure, Runtime};

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
    ttl.checked_sub(elapsed)?
        .checked_sub(drift_allowance(ttl, drift_factor))
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

/// No retry after a split vote starts this long after the first attempt: an attempt that waited
/// for a slow node's answer before giving back is too late to retry without risking a second
/// run of a job that another caller already finished.
const SPLIT_VOTE_RETRIES_WITHIN: Duration = Duration::from_millis(100);

/// One node's command in a round, boxed so that the round can outlive its caller.
type Call<T> = Pin<Box<dyn Future<Output = Result<T, NodeError>> + Send>>;

/// One node's answer in a round.
type Answer<T> = (usize, Result<T, NodeError>);

/// One command sent to several nodes at once, and its answers as they come, all within one
/// deadline (the node timeout).
///
/// The commands are polled by whoever awaits [`Round::next`]: no task of their own, no thread
/// hand-off. A command still unanswered when the caller is done with the round is not dropped,
/// since redis-rs skips a command whose caller has gone before it was written, and the node would
/// then miss it: [`Round::detach_with`] (or dropping the round) finishes such commands in the
/// background, so that every node that is reachable within the round's deadline (and a few node
/// timeouts more, in the background) gets every command. A command still waiting for its
/// connection to open when that has passed is dropped, unsent.
pub(crate) struct Round<T: Send + 'static> {
    runtime: Runtime,
    calls: Vec<(usize, Call<T>)>,
    /// Answers already in, not yet handed out.
    ready: Vec<Answer<T>>,
    deadline: Instant,
    /// Set at the first wait, so that a round answered at once (`memory://`) sets no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the commands were polled, and so went out; until then, dropping them is safe.
    sent: bool,
}

impl<T: Send + 'static> Round<T> {
    /// Starts `command(runtime, node)` for each of `nodes`; the commands go out when the round is
    /// first polled.
    fn new<C, F>(runtime: &Runtime, nodes: impl IntoIterator<Item = usize>, mut command: C) -> Self
    where
        C: FnMut(Runtime, usize) -> F,
        F: Future<Output = Result<T, NodeError>> + Send + 'static,
    {
        let calls: Vec<_> = nodes
            .into_iter()
            .map(|node| (node, Box::pin(command(runtime.clone(), node)) as Call<T>))
            .collect();
        Round {
            runtime: runtime.clone(),
            ready: Vec::with_capacity(calls.len()),
            calls,
            deadline: Instant::now() + runtime.node_timeout(),
            timer: None,
            sent: false,
        }
    }

    /// The next answer; a node that has not answered by the deadline answers
    /// [`NodeError::Timeout`]. `None` once every node has answered.
    async fn next(&mut self) -> Option<Answer<T>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer<T>>> {
        if self.ready.is_empty() && !self.calls.is_empty() {
            self.sent = true;
            // Every command is polled every time, so that all of them go out together.
            let mut index = 0;
            while index < self.calls.len() {
                match self.calls[index].1.as_mut().poll(cx) {
                    Poll::Ready(answer) => {
                        let (node, _call) = self.calls.swap_remove(index);
                        self.ready.push((node, answer));
                    }
                    Poll::Pending => index += 1,
                }
            }
            if self.ready.is_empty() {
                let (runtime, deadline) = (&self.runtime, self.deadline);
                let timer = self.timer.get_or_insert_with(|| {
                    Box::pin(driver::sleep_until(runtime.engine(), deadline))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    let timeout = self.runtime.node_timeout();
                    self.ready.extend(
                        self.calls
                            .drain(..)
                            .map(|(node, _call)| (node, Err(NodeError::Timeout(timeout)))),
                    );
                }
            }
        }
        match self.ready.pop() {
            Some(answer) => Poll::Ready(Some(answer)),
            None if self.calls.is_empty() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// The answers that are in but were not handed out yet.
    fn take_ready(&mut self) -> Vec<Answer<T>> {
        std::mem::take(&mut self.ready)
    }

    /// Lets the commands still unanswered finish in the background (see [`crate::backlog`]),
    /// then hands every answer not handed out yet to `then`.
    fn detach_with<F, Fut>(mut self, then: F)
    where
        F: FnOnce(Vec<Answer<T>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.calls.is_empty() && self.ready.is_empty() {
            return;
        }
        self.park(then);
    }

    /// [`Round::detach_with`], for answers nobody needs.
    fn detach(self) {
        self.detach_with(|_late| async {});
    }

    /// Drops the commands still unanswered instead of finishing them: one not yet written to
    /// its connection is then never sent (redis-rs skips a command nobody waits for), and one
    /// already written is followed, on the same connection, by whatever is sent to the node next.
    /// For the SETs of an attempt that lost: the give-back that follows finds whatever of them
    /// landed, and nothing is left to land after it.
    fn abandon(mut self) {
        self.calls.clear();
    }

    /// Moves what is left of this round to the backlog, with `then` to run on its answers.
    fn park<F, Fut>(&mut self, then: F)
    where
        F: FnOnce(Vec<Answer<T>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rest = self.split_off();
        // Its own deadline ends the round; `then` may start a round of its own after that.
        let until = rest.deadline + 3 * rest.runtime.node_timeout();
        let backlog = rest.runtime.backlog().clone();
        backlog.park(until, async move {
            let mut late = Vec::new();
            while let Some(answer) = rest.next().await {
                late.push(answer);
            }
            then(late).await;
        });
    }

    /// A round of this one's commands and answers, leaving this one empty.
    fn split_off(&mut self) -> Round<T> {
        Round {
            runtime: self.runtime.clone(),
            calls: std::mem::take(&mut self.calls),
            ready: std::mem::take(&mut self.ready),
            deadline: self.deadline,
            timer: self.timer.take(),
            sent: self.sent,
        }
    }
}

impl<T: Send + 'static> Drop for Round<T> {
    /// A round dropped with commands out (its caller was cancelled) leaves them to the backlog,
    /// which outlives whichever runtime or task is dropping it.
    fn drop(&mut self) {
        if self.calls.is_empty() || !self.sent {
            return;
        }
        self.park(|_late| async {});
    }
}

/// A fresh lock token: 32 hex digits from the OS random source, a space, and `holder_id`, so
/// that whoever reads the key can tell who holds it (the random part alone makes it unique).
/// One system call per token: a pool of random bytes kept in the process would be copied by a
/// `fork`, and two processes would then hand out the same tokens.
fn new_token(holder_id: &str) -> Result<Arc<str>, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Internal(format!("the OS random source failed: {err}")))?;
    Ok(Arc::from(format!(
        "{:032x} {holder_id}",
        u128::from_be_bytes(bytes)
    )))
}

/// The holder id in a lock's value written by [`new_token`]; `None` for a value that is not a
/// token of ours (an older version's, or another program's).
pub(crate) fn holder_of(value: &str) -> Option<&str> {
    let (random, holder) = value.split_once(' ')?;
    (random.len() == TOKEN_BYTES * 2 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(holder)
}

/// One node's answer to `SET NX`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vote {
    Granted,
    Busy,
    Failed,
}

impl Vote {
    /// Whether our token may be on the node: it granted, or it failed after the SET may have
    /// landed.
    fn maybe_ours(self) -> bool {
        self != Vote::Busy
    }
}

/// The answers so far to one attempt.
struct Tally {
    quorum: usize,
    nodes: usize,
    granted: usize,
    busy: usize,
    /// The highest fencing counter among the nodes that granted.
    highest_fence: u64,
    /// Per node: its answer, if it answered.
    votes: Vec<Option<Vote>>,
    failures: Vec<NodeFailure>,
}

impl Tally {
    fn new(nodes: usize) -> Self {
        Tally {
            quorum: quorum(nodes),
            nodes,
            granted: 0,
            busy: 0,
            highest_fence: 0,
            votes: vec![None; nodes],
            failures: Vec::new(),
        }
    }

    fn record(&mut self, node: usize, answer: Result<Option<u64>, NodeFailure>) {
        let vote = match answer {
            Ok(Some(fence)) => {
                self.granted += 1;
                self.highest_fence = self.highest_fence.max(fence);
                Vote::Granted
            }
            Ok(None) => {
                self.busy += 1;
                Vote::Busy
            }
            Err(failure) => {
                self.failures.push(failure);
                Vote::Failed
            }
        };
        self.votes[node] = Some(vote);
    }

    /// Why the attempt was not decided, naming every node that gave no vote: those that
    /// failed, and those that had not answered when the outcome was decided without them.
    fn no_quorum(self, key: &str, runtime: &Runtime) -> NoQuorum {
        let mut failures = self.failures;
        for (node, vote) in self.votes.iter().enumerate() {
            if vote.is_none() {
                failures.push(runtime.node(node).failure(&NodeError::Unanswered));
            }
        }
        NoQuorum {
            key: key.to_owned(),
            nodes: self.nodes,
            answered: self.granted + self.busy,
            needed: self.quorum,
            failures,
        }
    }

    /// Puts the votes on the call's span (a no-op outside `Runtime::run_with`), so that a
    /// trace shows how close the call came to a quorum.
    fn record_on_span(&self) {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return;
        }
        span.record("granted", self.granted);
        span.record("busy", self.busy);
        span.record("failed", self.failures.len());
        for failure in &self.failures {
            tracing::debug!(
                node = failure.node,
                cause = failure.cause,
                "a node gave no vote"
            );
        }
    }

    /// Nodes that gave a definite answer, granted or busy.
    fn answered(&self) -> usize {
        self.granted + self.busy
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

    /// Nodes that granted.
    fn granted_nodes(&self) -> Vec<usize> {
        (0..self.nodes)
            .filter(|&node| self.votes[node] == Some(Vote::Granted))
            .collect()
    }

    /// Nodes that may hold our token: all but those that answered that the key was taken (a
    /// failed or unanswered SET may still have landed).
    fn maybe_ours(&self) -> Vec<usize> {
        (0..self.nodes)
            .filter(|&node| self.votes[node].is_none_or(Vote::maybe_ours))
            .collect()
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

/// SETs of an attempt still unanswered that a release to their node must wait for, by node
/// (empty when there is none). A SET on an open connection was queued there at its first poll,
/// ahead of anything sent later on it, the release among them; but one still waiting for its
/// connection is not queued yet (nor is a fencing SET's second send, see `Attempt`), and a
/// release that overtook it would leave the key behind. Such a SET also waits in the backlog,
/// which drives it on (through the connection still opening) while the lease is held; the
/// release awaits the same, shared, future.
///
/// (A connection's queue holds 4,096 commands. On a node so stalled that its queue is full, a
/// release can overtake a SET after all: that node's copy then lasts until the ttl, as when a
/// release does not reach a node.)
pub(crate) type Outstanding = Vec<Option<Shared<BoxFuture<'static, ()>>>>;

/// One attempt's SETs and what to do with them: dropped before it is settled or abandoned (the
/// caller gave up mid-attempt), it gives back whatever the attempt may hold, in the background,
/// since a lock it took must not wait for its ttl.
struct Attempt {
    runtime: Runtime,
    key: Arc<str>,
    token: Arc<str>,
    round: Option<Round<Option<u64>>>,
    /// Whether a SET is one command, so that once queued it stays ahead of a release. The
    /// fencing SET is a script, which redis-rs sends again (after loading it) on a node that
    /// lacks it: the second send could come after the release.
    one_command: bool,
}

impl Attempt {
    /// For an attempt that won: hands the SETs still out to the backlog, which keeps them until
    /// answered, so that the lock reaches the slower nodes too; dropping the attempt does
    /// nothing any more. Returns those that were not queued on an open connection yet (see
    /// [`Outstanding`]).
    fn settle(&mut self) -> Outstanding {
        let mut outstanding = Outstanding::new();
        let Some(mut round) = self.round.take() else {
            return outstanding;
        };
        let until = round.deadline + 3 * self.runtime.node_timeout();
        for (node, mut call) in std::mem::take(&mut round.calls) {
            // Polled once more first: a SET whose connection opened since its last poll goes out
            // now. Its answer no longer matters, only that it is sent.
            let mut cx = Context::from_waker(Waker::noop());
            if call.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            if self.one_command && self.runtime.node(node).is_connected() {
                // Queued: it only has to be kept until it is written (the usual straggler).
                self.runtime.backlog().park(until, call.map(drop));
                continue;
            }
            // Sized only when needed: most locks allocate nothing here.
            if outstanding.is_empty() {
                outstanding.resize_with(self.runtime.node_count(), || None);
            }
            let set = call.map(drop).boxed().shared();
            self.runtime.backlog().park(until, set.clone());
            outstanding[node] = Some(set);
        }
        outstanding
    }

    /// For an attempt that did not win: records the answers still to come in `tally`, until the
    /// round's deadline (a node that gives none by then counts as failed: ours may have landed
    /// there).
    async fn finish(&mut self, tally: &mut Tally) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        while let Some((node, answer)) = round.next().await {
            tally.record(
                node,
                answer.map_err(|err| self.runtime.node(node).failure(&err)),
            );
        }
    }

    /// For an attempt that did not win: drops the SETs still out (see [`Round::abandon`]), then
    /// gives back whatever of ours may have landed (see [`give_back`]).
    async fn give_back(mut self, tally: &Tally) {
        if let Some(round) = self.round.take() {
            round.abandon();
        }
        give_back(&self.runtime, &self.key, &self.token, tally).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        round.abandon();
        // Every node: which SETs landed is unknown.
        let (runtime, key, token) = (self.runtime.clone(), self.key.clone(), self.token.clone());
        self.runtime.spawn_background(async move {
            release_everywhere(&runtime, &key, &token, Outstanding::new()).await;
        });
    }
}

/// What an attempt at a lock came to, when it did not fail.
pub(crate) enum Acquired {
    /// The lock is ours.
    Taken(Lease),
    /// Another holder has it: a quorum of nodes answered, too few granted.
    Busy,
    /// Every attempt won some nodes and lost others to simultaneous callers; this many attempts
    /// were made, each given back. Possibly nobody holds the lock.
    SplitVote { attempts: usize },
}

/// Tries to take `key` for `ttl` on a quorum of the runtime's nodes; with `fence_key`, also
/// fixes the lease's fencing token with the counter there.
///
/// [`Acquired::Taken`] when taken, [`Acquired::Busy`] when another holder has it (a quorum
/// answered), and an error when too few nodes answered to tell or the attempt outlived its ttl.
/// An attempt that does not take the lock gives back what it may hold before it returns;
/// dropped before it is done, it gives it back in the background.
///
/// One attempt, except after a split vote: callers that fire at the same instant (every
/// machine's cron at 00:00) can each win a minority of the nodes, and if all of them gave up
/// nobody would run the job. A caller that won some nodes but not a quorum gives them back and
/// tries again after a random pause; callers that won no node skip at once, since those that
/// won some will settle it among themselves.
pub(crate) async fn acquire(
    runtime: &Runtime,
    key: &str,
    fence_key: Option<&str>,
    ttl: Duration,
) -> Result<Acquired, Error> {
    let key: Arc<str> = Arc::from(key);
    let fence_key = fence_key.map(Arc::<str>::from);
    let mut window = SPLIT_VOTE_FIRST_WINDOW;
    let first_started = Instant::now();
    for attempt_number in 1..=SPLIT_VOTE_ATTEMPTS {
        let token = new_token(runtime.holder_id())?;
        let started = Instant::now();
        // Watched from before the first vote: a step seen once a node granted us counts.
        let clock_jumps = runtime.clock_jumps();
        let mut attempt = Attempt {
            runtime: runtime.clone(),
            round: Some(set_round(runtime, &key, fence_key.as_ref(), &token, ttl)),
            key: key.clone(),
            token: token.clone(),
            one_command: fence_key.is_none(),
        };
        let mut tally = vote(runtime, attempt.round.as_mut().expect("not settled yet")).await;

        if tally.won() {
            tally.record_on_span();
            let fence = match &fence_key {
                None => Ok(None),
                Some(fence_key) => {
                    raise_fence(runtime, &key, fence_key, &token, tally.highest_fence)
                        .await
                        .map(Some)
                }
            };
            let took = started.elapsed();
            let left = validity(ttl, took, runtime.drift_factor());
            let (fence, left) = match (fence, left) {
                (Ok(fence), Some(left)) => (fence, left),
                (fence, _) => {
                    attempt.give_back(&tally).await;
                    return Err(match fence {
                        Err(err) => err,
                        Ok(_) => Error::Expired {
                            key: key.to_string(),
                            elapsed: took,
                            ttl,
                        },
                    });
                }
            };
            // The slower nodes' SETs go to the backlog; those not queued yet go with the lease
            // too, whose release follows them.
            let outstanding = attempt.settle();
            tracing::Span::current().record("validity_ms", left.as_millis() as u64);
            let taken = Taken {
                key,
                token,
                ttl,
                acquired_at: started,
                valid_until: started + took + left,
                fencing_token: fence,
                outstanding,
                clock_jumps,
            };
            let lease = Lease::new(runtime.clone(), taken);
            if !lease.is_registered() {
                // `shutdown` began while this attempt was in flight: nothing is held after it.
                let _ = lease.release().await;
                return Err(Error::ShutDown);
            }
            return Ok(Acquired::Taken(lease));
        }

        // Not won. A split is told from the answers that decided it (a grant that arrives later
        // is given back like any other); then the slower nodes' answers too (within the round's
        // deadline), so that what is given back is exactly where ours may have landed.
        let split = tally.split();
        attempt.finish(&mut tally).await;
        tally.record_on_span();
        if split {
            // Given back before the pause, so that our grants don't split the next round too.
            attempt.give_back(&tally).await;
            if first_started.elapsed() >= SPLIT_VOTE_RETRIES_WITHIN {
                return Ok(Acquired::SplitVote {
                    attempts: attempt_number,
                });
            }
            window = window.max(started.elapsed()).min(SPLIT_VOTE_MAX_WINDOW);
            let pause = random_below(window)?;
            driver::sleep_until(runtime.engine(), Instant::now() + pause).await;
            window *= 2;
            continue;
        }

        // Lost, to a holder or to an outage. A busy attempt whose every node said "taken" sends
        // nothing more: one round trip (the slower nodes' answers come with it).
        attempt.give_back(&tally).await;
        return decide_failed(tally, &key, runtime);
    }
    // Still split after every retry: the contenders that are left are as likely to settle it.
    Ok(Acquired::SplitVote {
        attempts: SPLIT_VOTE_ATTEMPTS,
    })
}

/// Gives back our lock where an attempt that did not take it may have landed: every node but
/// those that answered "taken". It waits, within the node timeout, for the answers of the nodes
/// that granted, so that a program that returns right after a failed attempt leaves nothing
/// behind that would make the next caller skip for a ttl; a node that failed or gave no answer
/// gets the release too, queued on its connection after our `SET`, without the wait (it would
/// only add a node timeout: such a node answers nothing now, and runs both in order later).
async fn give_back(runtime: &Runtime, key: &Arc<str>, token: &Arc<str>, tally: &Tally) {
    let nodes = tally.maybe_ours();
    if nodes.is_empty() {
        return;
    }
    let mut granted: Vec<usize> = tally.granted_nodes();
    let mut round = release_round(runtime, key, token, nodes, Duration::ZERO, Vec::new());
    while !granted.is_empty() {
        let Some((node, answer)) = round.next().await else {
            break;
        };
        granted.retain(|&waiting| waiting != node);
        if let Err(err) = answer {
            release_failed(runtime, key, node, &err);
        }
    }
    // The others finish in the background (see `Round::detach_with`).
    let key = key.clone();
    let runtime_of = runtime.clone();
    round.detach_with(move |late| async move {
        for (node, answer) in late {
            if let Err(err) = answer {
                release_failed(&runtime_of, &key, node, &err);
            }
        }
    });
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
    key: &Arc<str>,
    fence_key: &Arc<str>,
    token: &Arc<str>,
    highest: u64,
) -> Result<u64, Error> {
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let Some(next) = highest.checked_add(1) else {
        return Err(Error::Internal(format!(
            "the fencing counter `{fence_key}` is at the largest 64-bit number; no larger token \
             exists. Delete the counter only once every store that checks the tokens has been \
             reset too"
        )));
    };
    let fence = next.max(now_micros);
    let (mut raised, mut failures) = (0, Vec::new());
    let mut round = Round::new(runtime, 0..runtime.node_count(), |runtime, node| {
        let (key, fence_key, token) = (key.clone(), fence_key.clone(), token.clone());
        async move {
            runtime
                .node(node)
                .raise_fence(&key, &fence_key, &token, fence)
                .await
        }
    });
    while let Some((node, answer)) = round.next().await {
        match answer {
            Ok(true) => raised += 1,
            Ok(false) => {}
            Err(err) => failures.push(runtime.node(node).failure(&err)),
        }
        if raised >= runtime.quorum() {
            round.detach();
            return Ok(fence);
        }
    }
    Err(NoQuorum {
        key: fence_key.to_string(),
        nodes: runtime.node_count(),
        answered: raised,
        needed: runtime.quorum(),
        failures,
    }
    .into_error())
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
/// an outage (or nodes that refused).
fn decide_failed(tally: Tally, key: &str, runtime: &Runtime) -> Result<Acquired, Error> {
    if tally.answered() >= tally.quorum {
        return Ok(Acquired::Busy);
    }
    Err(tally.no_quorum(key, runtime).into_error())
}

/// `SET key token NX PX ttl` for every node (with fencing, the script that also reads the
/// fencing counter); the commands go out when the round is first polled.
fn set_round(
    runtime: &Runtime,
    key: &Arc<str>,
    fence_key: Option<&Arc<str>>,
    token: &Arc<str>,
    ttl: Duration,
) -> Round<Option<u64>> {
    Round::new(runtime, 0..runtime.node_count(), |runtime, node| {
        let (key, token, fence_key) = (key.clone(), token.clone(), fence_key.cloned());
        async move {
            let node = runtime.node(node);
            match fence_key {
                None => node
                    .set_nx(&key, &token, ttl)
                    .await
                    .map(|granted| granted.then_some(0)),
                Some(fence_key) => {
                    node.set_nx_reading_fence(&key, &fence_key, &token, ttl)
                        .await
                }
            }
        }
    })
}

/// Collects the answers to the SETs until the result is decided; the round keeps the answers
/// still out.
async fn vote(runtime: &Runtime, round: &mut Round<Option<u64>>) -> Tally {
    let mut tally = Tally::new(runtime.node_count());
    let failure = |node: usize, err: NodeError| runtime.node(node).failure(&err);
    while !tally.decided() {
        let Some((node, answer)) = round.next().await else {
            break;
        };
        tally.record(node, answer.map_err(|err| failure(node, err)));
    }
    // Answers that came in together with the deciding one count too (they cannot change the
    // result), so that what is given back is exact.
    for (node, answer) in round.take_ready() {
        tally.record(node, answer.map_err(|err| failure(node, err)));
    }
    tally
}

/// Runs the compare-and-delete script on `nodes` at once (or, with a non-zero `keep`, lets our
/// key expire that long from now instead: `min_hold`), and returns once a quorum answered: the
/// lock is then free for others, whatever the rest say. The rest finish in the background; a
/// node that fails keeps our key until its ttl runs out, which is logged, never retried. On a
/// node with a SET in `outstanding`, the release waits for that SET's answer.
pub(crate) async fn release(
    runtime: &Runtime,
    key: &Arc<str>,
    token: &Arc<str>,
    nodes: Vec<usize>,
    keep: Duration,
    outstanding: Outstanding,
) -> Result<(), NoQuorum> {
    let mut answered = 0;
    let mut failures = Vec::new();
    let mut round = release_round(runtime, key, token, nodes, keep, outstanding);
    while let Some((node, answer)) = round.next().await {
        match answer {
            Ok(_deleted) => answered += 1,
            Err(err) => failures.push(release_failed(runtime, key, node, &err)),
        }
        if answered >= runtime.quorum() {
            let (runtime, key) = (runtime.clone(), key.clone());
            round.detach_with(move |late| async move {
                for (node, answer) in late {
                    if let Err(err) = answer {
                        release_failed(&runtime, &key, node, &err);
                    }
                }
            });
            return Ok(());
        }
    }
    Err(NoQuorum {
        key: key.to_string(),
        nodes: runtime.node_count(),
        answered,
        needed: runtime.quorum(),
        failures,
    })
}

/// Releases our lock on every node, on the crate's own runtime, which outlives whichever
/// runtime, task or panic is giving the lock up; for locks given up by dropping them.
///
/// A program that shuts its runtime down drops the tasks that hold leases, and may have dropped
/// the connection tasks it drove a moment earlier: a node whose connection broke that way gets
/// one more try, on a fresh connection (driven by the crate's own runtime).
pub(crate) fn spawn_release_everywhere(
    runtime: &Runtime,
    held: &Arc<Held>,
    outstanding: Outstanding,
) {
    let (runtime_of, held) = (runtime.clone(), held.clone());
    runtime.spawn_background(async move {
        let runtime = runtime_of;
        held.stop_renewal().await;
        let (key, token): (Arc<str>, Arc<str>) = (held.key().into(), held.token().into());
        release_everywhere(&runtime, &key, &token, outstanding).await;
    });
}

/// Releases our lock on every node; a node whose connection broke gets one more try, on a fresh
/// connection.
async fn release_everywhere(
    runtime: &Runtime,
    key: &Arc<str>,
    token: &Arc<str>,
    outstanding: Outstanding,
) {
    let mut broken = Vec::new();
    let all = 0..runtime.node_count();
    let mut round = release_round(runtime, key, token, all, Duration::ZERO, outstanding);
    while let Some((node, answer)) = round.next().await {
        match answer {
            Ok(_) => {}
            Err(NodeError::Redis(err)) if err.is_connection_dropped() || err.is_io_error() => {
                broken.push(node);
            }
            Err(err) => drop(release_failed(runtime, key, node, &err)),
        }
    }
    if !broken.is_empty() {
        let _ = release(runtime, key, token, broken, Duration::ZERO, Vec::new()).await;
    }
}

/// The compare-and-expire script for each of `nodes`; on a node with a SET in `outstanding`, it
/// goes after that SET's answer.
fn release_round(
    runtime: &Runtime,
    key: &Arc<str>,
    token: &Arc<str>,
    nodes: impl IntoIterator<Item = usize>,
    keep: Duration,
    mut outstanding: Outstanding,
) -> Round<bool> {
    Round::new(runtime, nodes, |runtime, node| {
        let (key, token) = (key.clone(), token.clone());
        let set = outstanding.get_mut(node).and_then(Option::take);
        async move {
            if let Some(set) = set {
                set.await;
            }
            runtime.node(node).release(&key, &token, keep).await
        }
    })
}

/// Logs a node's failed release, and says what failed. Only at `DEBUG`: the node may never have
/// granted the lock (it was down then too), and a copy on fewer than a quorum of nodes blocks
/// nobody; a release that misses a quorum is what its caller warns about.
fn release_failed(runtime: &Runtime, key: &str, node: usize, err: &NodeError) -> NodeFailure {
    let node = runtime.node(node);
    tracing::debug!(key, node = node.name(), error = %err, "releasing the lock failed on a node; its copy expires with the ttl");
    node.failure(err)
}

/// What an attempt to extend a lease found.
pub(crate) enum Extension {
    /// A quorum holds our token (some of them, perhaps, because the extension put it back), until
    /// `valid_until` at least.
    Extended { valid_until: Instant },
    /// So many nodes hold another token that a quorum can no longer be ours: the lock was taken
    /// over.
    Gone,
    /// Too few nodes answered to tell; the lease stands until its validity runs out.
    Undecided(NoQuorum),
}

/// Extends our lock on `key` to expire `keep` from now on every node where it is still ours,
/// puts our token back (with that expiry) on nodes where the key is absent, and says whether a
/// quorum confirmed it in time to count. The validity counts from the start of this round;
/// whether it still counts when the answers arrive is the lease's to say (see `lease::Held`).
pub(crate) async fn extend(
    runtime: &Runtime,
    key: &Arc<str>,
    token: &Arc<str>,
    keep: Duration,
) -> Extension {
    let started = Instant::now();
    let nodes = runtime.node_count();
    let quorum = runtime.quorum();
    let (mut ours, mut not_ours) = (0, 0);
    let mut failures = Vec::new();
    let mut round = Round::new(runtime, 0..nodes, |runtime, node| {
        let (key, token) = (key.clone(), token.clone());
        async move { runtime.node(node).extend(&key, &token, keep).await }
    });
    while let Some((node, answer)) = round.next().await {
        match answer {
            Ok(Renewed::Kept | Renewed::Repaired) => ours += 1,
            Ok(Renewed::NotOurs) => not_ours += 1,
            Err(err) => failures.push(runtime.node(node).failure(&err)),
        }
        if ours >= quorum || not_ours > nodes - quorum {
            break;
        }
    }
    // The slower nodes get the extension too, so that the key lives as long on all of them.
    round.detach();
    if not_ours > nodes - quorum {
        return Extension::Gone;
    }
    let took = started.elapsed();
    match validity(keep, took, runtime.drift_factor()) {
        Some(left) if ours >= quorum => Extension::Extended {
            valid_until: started + took + left,
        },
        _ => Extension::Undecided(NoQuorum {
            key: key.to_string(),
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
                "ok" => Ok(Some(0)),
                "busy" => Ok(None),
                _ => Err(NodeFailure {
                    node: "node".into(),
                    cause: "no answer".into(),
                    kind: crate::FailureKind::Timeout,
                }),
            };
            tally.record(node, vote);
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
    fn tokens_are_fresh_128_bit_hex_then_the_holder() {
        let a = new_token("web-3:42").unwrap();
        let b = new_token("web-3:42").unwrap();
        let (random, holder) = a.split_once(' ').unwrap();
        assert_eq!(random.len(), 32);
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(holder, "web-3:42");
        assert_eq!(holder_of(&a), Some("web-3:42"));
        assert_ne!(a, b);
        assert_eq!(holder_of("not ours"), None);
        assert_eq!(holder_of("0123456789abcdef0123456789abcdef"), None);
    }
}
