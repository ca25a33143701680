//! The Redlock algorithm: one function per step, in the order the algorithm takes them.
//!
//! 1. [`acquire`]: a fresh token, `SET key token NX PX ttl` on every node at once, stop as soon as
//!    the result is decided; after a split vote, give back and try again after a random pause;
//!    with fencing, a second round ([`raise_fence`]) fixes the lease's fencing token;
//! 2. [`validity`]: what is left of the ttl after the time spent and the clock drift;
//! 3. on failure, [`give_back`] on every node where our token may have landed (a node that
//!    answered "taken" holds someone else's), before returning, then tell contention (a quorum
//!    answered) from outage (it did not);
//! 4. [`start_extending`] while the holder works, many leases in one round: owner-checked, on a
//!    quorum, with validity left; nodes that lack a key get its token back (repair);
//! 5. [`release`] when the holder is done: compare-and-delete (or, for `min_hold`,
//!    compare-and-expire), so it never touches a key whose value is not ours;
//!    [`release_in_background`] for a lock given up without waiting.
//!
//! Every step is a [`Round`]: one command to every node at once, its answers counted toward a
//! quorum on the caller's own task.

use std::future::Future;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::claim::Claim;
use crate::clock::drift_allowance;
use crate::node::{LeaseToExtend, NodeError, Renewed};
use crate::nodes::Nodes;
use crate::round::{Round, Tally, Vote};
use crate::{driver, random, Error, NoQuorum, NodeFailure};

mod attempt;

use attempt::Attempt;

/// How many attempts a caller caught in a split vote makes before it skips.
const SPLIT_VOTE_ATTEMPTS: usize = 4;

/// The first random pause after a split vote is drawn from this window, or from the attempt's own
/// duration when that is longer (slower networks need wider windows to separate contenders); the
/// window doubles after each split.
const SPLIT_VOTE_FIRST_WINDOW: Duration = Duration::from_millis(2);

/// The widest window for a call without a period: its retries end within a few tens of
/// milliseconds of the first attempt, so a retry cannot become a second run of a job that takes
/// longer than that. A job that finishes faster can run twice this way, as it can when one
/// machine's cron fires late; keeping the key for a while after the body closes both gaps.
const SPLIT_VOTE_MAX_WINDOW: Duration = Duration::from_millis(20);

/// No retry after a split vote starts this long after the first attempt, for a call without a
/// period: an attempt that waited for a slow node's answer before giving back is too late to
/// retry without risking a second run of a job that another caller already finished.
const SPLIT_VOTE_RETRIES_WITHIN: Duration = Duration::from_millis(100);

/// How long a caller caught in a split vote goes on trying (see [`acquire`]).
pub(crate) struct SplitVoteRetries {
    /// When the call's period (its `slot`, or the cron tick it was made for) ends, if it has one.
    period_ends: Option<Instant>,
    /// Turns `true` when the runtime begins to shut down: no retry starts after that.
    shutting_down: watch::Receiver<bool>,
}

impl SplitVoteRetries {
    pub(crate) fn new(period_ends: Option<Instant>, shutting_down: watch::Receiver<bool>) -> Self {
        SplitVoteRetries {
            period_ends,
            shutting_down,
        }
    }
}

/// What an attempt at a lock came to, when it did not fail.
pub(crate) enum Acquired<T = Taken> {
    /// The lock is ours.
    Taken(T),
    /// Another holder has it: a quorum of nodes answered, too few granted.
    Busy,
    /// Every attempt won some nodes and lost others to simultaneous callers; this many attempts
    /// were made, each given back. Possibly nobody holds the lock.
    SplitVote { attempts: usize },
}

/// What an acquisition that took the lock knows of it.
pub(crate) struct Taken {
    pub(crate) claim: Claim,
    pub(crate) ttl: Duration,
    pub(crate) acquired_at: Instant,
    pub(crate) valid_until: Instant,
    pub(crate) fencing_token: Option<NonZeroU64>,
    /// Steps of the nodes' clocks, watched from before the first vote: a step seen once a node
    /// granted us counts.
    pub(crate) clock_jumps: Option<watch::Receiver<u64>>,
    /// How many steps had been seen by then: the lock's votes came from nodes not stepped by
    /// any of them.
    pub(crate) steps_seen: u64,
}

/// Tries to take `key` for `ttl` on a quorum of the nodes; with `fence_key`, also fixes the
/// lease's fencing token with the counter there.
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
///
/// A call without a period retries only within [`SPLIT_VOTE_RETRIES_WITHIN`] of its first
/// attempt, with pauses of at most [`SPLIT_VOTE_MAX_WINDOW`]. A call for a period retries until
/// the period ends: the period's done marker, looked for once the lock is taken, keeps a late
/// retry from running a job that another caller finished. Its pauses grow with its attempts,
/// without that bound: callers whose answers come back at different times (each closer to other
/// nodes, or waiting for a frozen one) separate only with pauses as long as their attempts.
pub(crate) async fn acquire(
    nodes: &Arc<Nodes>,
    key: &str,
    fence_key: Option<&str>,
    ttl: Duration,
    retries: &SplitVoteRetries,
) -> Result<Acquired, Error> {
    let fence_key = fence_key.map(Arc::<str>::from);
    nodes.begin_locking().await;
    let mut window = SPLIT_VOTE_FIRST_WINDOW;
    let first_started = Instant::now();
    let (retry_until, widest_window) = match retries.period_ends {
        None => (
            first_started + SPLIT_VOTE_RETRIES_WITHIN,
            SPLIT_VOTE_MAX_WINDOW,
        ),
        Some(ends) => (
            ends.max(first_started + SPLIT_VOTE_RETRIES_WITHIN),
            Duration::MAX,
        ),
    };
    for attempt_number in 1..=SPLIT_VOTE_ATTEMPTS {
        let claim = Claim::new(key, &random::token(nodes.holder_id())?);
        // Before the clock starts: a burst of calls waits here, not on the nodes.
        let turn = nodes.turn().await;
        nodes.open_connections().await;
        let started = Instant::now();
        let clock_jumps = nodes.clock_jumps();
        let steps_seen = clock_jumps.as_ref().map_or(0, |jumps| *jumps.borrow());
        let mut attempt = Attempt::start(nodes, &claim, fence_key.as_ref(), ttl);
        let (mut tally, highest_fence) = attempt.vote().await;

        if tally.agreed() {
            tally.record_on_span();
            let fence = match &fence_key {
                None => Ok(None),
                Some(fence_key) => raise_fence(nodes, &claim, fence_key, highest_fence)
                    .await
                    .map(Some),
            };
            let took = started.elapsed();
            let (fencing_token, left) = match (fence, validity(ttl, took, nodes.drift_factor())) {
                (Ok(fence), Some(left)) => (fence, left),
                (fence, _) => {
                    attempt.give_back(&tally).await;
                    return Err(fence.err().unwrap_or(Error::Expired {
                        key: key.to_owned(),
                        elapsed: took,
                        ttl,
                    }));
                }
            };
            attempt.keep();
            tracing::Span::current().record("validity_ms", left.as_millis() as u64);
            return Ok(Acquired::Taken(Taken {
                claim,
                ttl,
                acquired_at: started,
                valid_until: started + took + left,
                fencing_token,
                clock_jumps,
                steps_seen,
            }));
        }

        // Not won. A split is told from the answers that decided it (a grant that arrives later
        // is given back like any other); then the slower nodes' answers too (within the round's
        // deadline), so that what is given back is exactly where ours may have landed.
        let split = tally.yes() > 0 && tally.answered() >= nodes.quorum();
        attempt.finish(&mut tally).await;
        tally.record_on_span();
        // Given back before any pause, so that our grants don't split the next round too. A
        // busy attempt whose every node said "taken" sends nothing more: one round trip.
        attempt.give_back(&tally).await;
        if !split {
            if tally.answered() >= nodes.quorum() {
                return Ok(Acquired::Busy);
            }
            return Err(tally.no_quorum(key, nodes).into_error());
        }
        drop(turn);
        window = window.max(started.elapsed()).min(widest_window);
        let pause = random::pause_below(window)?;
        let retry_at = Instant::now() + pause;
        if retry_at >= retry_until {
            return Ok(Acquired::SplitVote {
                attempts: attempt_number,
            });
        }
        // No retry once `shutdown` has begun (the runtime takes no more locks), and no pause
        // for `shutdown` to wait out.
        let mut shutting_down = retries.shutting_down.clone();
        tokio::select! {
            () = driver::sleep_until(nodes.crate_thread(), retry_at) => {}
            _ = shutting_down.wait_for(|down| *down) => return Err(Error::ShutDown),
        }
        window = window.saturating_mul(2);
    }
    // Still split after every retry: the contenders that are left are as likely to settle it.
    Ok(Acquired::SplitVote {
        attempts: SPLIT_VOTE_ATTEMPTS,
    })
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
    nodes: &Arc<Nodes>,
    claim: &Claim,
    fence_key: &Arc<str>,
    highest: u64,
) -> Result<NonZeroU64, Error> {
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let Some(next) = highest.checked_add(1).and_then(NonZeroU64::new) else {
        return Err(Error::Internal(format!(
            "the fencing counter `{fence_key}` is at the largest 64-bit number; no larger token \
             exists. Delete the counter only once every store that checks the tokens has been \
             reset too"
        )));
    };
    let fence = NonZeroU64::new(now_micros).map_or(next, |now| next.max(now));
    let mut round = Round::start(nodes, 0..nodes.len(), |nodes, node| {
        let (claim, fence_key) = (claim.clone(), fence_key.clone());
        async move {
            let raised =
                nodes
                    .node(node)
                    .raise_fence(claim.key(), &fence_key, claim.token(), fence.get());
            raised.await
        }
    });
    let mut tally = Tally::new(nodes);
    round.count(&mut tally, yes_if, Tally::decided).await;
    // The slower nodes get the counter too.
    round.detach();
    if tally.agreed() {
        return Ok(fence);
    }
    Err(tally.no_quorum(fence_key, nodes).into_error())
}

/// What is left of the ttl once the attempt took `elapsed`, minus the allowance for clock drift;
/// `None` when nothing is left and the lock must not be used.
pub(crate) fn validity(ttl: Duration, elapsed: Duration, drift_factor: f64) -> Option<Duration> {
    ttl.checked_sub(elapsed)?
        .checked_sub(drift_allowance(ttl, drift_factor))
        .filter(|left| !left.is_zero())
}

/// Gives back our lock where an attempt that did not take it may have landed: every node but
/// those that answered "taken". It waits, within the node timeout, for the answers of the nodes
/// that granted, so that a program that returns right after a failed attempt leaves nothing
/// behind that would make the next caller skip for a ttl; a node that failed or gave no answer
/// gets the release too, queued on its connection after our `SET`, without the wait (it would
/// only add a node timeout: such a node answers nothing now, and runs both in order later).
async fn give_back(nodes: &Arc<Nodes>, claim: &Claim, tally: &Tally) {
    let maybe_ours = tally.maybe_yes();
    if maybe_ours.is_empty() {
        return;
    }
    let mut granted: Vec<usize> = tally.voted(Vote::Yes).collect();
    let mut round = release_round(nodes, claim, maybe_ours, Duration::ZERO);
    while !granted.is_empty() {
        let Some((node, answer)) = round.next().await else {
            break;
        };
        granted.retain(|&waiting| waiting != node);
        if let Err(err) = answer {
            release_failed(claim.key(), &nodes.node(node).failure(&err));
        }
    }
    detach_release(round, nodes, claim);
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

/// Extends each of `leases` to expire its `keep` from now on every node where its key still
/// holds its token, and puts the token back (with that expiry) on nodes where the key is absent,
/// in one round (one script call per node; see [`Extending::next_decided`] for what it found).
/// The round's commands are queued before this returns (see [`Round::send`]): a release sent
/// after this reaches each node after the extension, which could otherwise put a released key
/// back.
///
/// Each validity counts from `started`, which must be no later than when each lease's `keep`
/// was worked out: a `keep` that ends at `max_hold` then yields a validity that does too.
pub(crate) fn start_extending(
    nodes: &Arc<Nodes>,
    leases: &[LeaseToExtend<'_>],
    started: Instant,
) -> Extending {
    let mut round = Round::start(nodes, 0..nodes.len(), |nodes, node| {
        let call = nodes.node(node).extension_call(leases);
        async move { nodes.node(node).extend_each(call?).await }
    });
    round.send();
    Extending {
        nodes: nodes.clone(),
        round,
        started,
        answers: vec![None; nodes.len()],
        counts: vec![YesNo::default(); leases.len()],
        undecided: leases.len(),
    }
}

/// Extensions sent (see [`start_extending`]), their answers still to count.
pub(crate) struct Extending {
    nodes: Arc<Nodes>,
    round: Round<Vec<Renewed>>,
    started: Instant,
    /// Per node, its answer once in.
    answers: Vec<Option<Result<Vec<Renewed>, NodeFailure>>>,
    /// Per lease, how many nodes hold its token and how many another: a lease's votes without
    /// an allocation of its own.
    counts: Vec<YesNo>,
    /// Leases whose answers do not decide them yet.
    undecided: usize,
}

impl Extending {
    /// When the round began: each extension's validity counts from then.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the next node's answer, and returns the leases it decided, by their index in
    /// `leases` (those the round was started with): each extended (a quorum holds its token, in
    /// time for some validity to be left) or gone (so many nodes hold another token that a
    /// quorum can no longer be ours). `None` once every lease is decided or no more answers can
    /// come; [`Extending::rest`] then says what became of the others.
    ///
    /// A lease is handed out as soon as it is decided, so that one left undecided (a node that
    /// holds another token, another that gives no answer) holds up no other's deadline until the
    /// node timeout. Each validity counts from the start of the round; whether it still counts
    /// when the answers arrive is the lease's to say (see `lease::Held`).
    pub(crate) async fn next_decided(
        &mut self,
        leases: &[LeaseToExtend<'_>],
    ) -> Option<Vec<(usize, Extension)>> {
        if self.undecided == 0 {
            return None;
        }
        let (node, answer) = self.round.next().await?;
        let nodes = &self.nodes;
        let (quorum, node_count) = (nodes.quorum(), nodes.len());
        let answer = answer.map_err(|err| nodes.node(node).failure(&err));
        let mut decided = Vec::new();
        if let Ok(renewed) = &answer {
            let took = self.started.elapsed();
            let each = self.counts.iter_mut().zip(renewed).zip(leases);
            for (index, ((count, &renewed), lease)) in each.enumerate() {
                let was_decided = count.decided(quorum, node_count);
                match ours(renewed) {
                    Vote::Yes => count.yes += 1,
                    _ => count.no += 1,
                }
                if was_decided || !count.decided(quorum, node_count) {
                    continue;
                }
                self.undecided -= 1;
                let extension = if count.refused(quorum, node_count) {
                    Extension::Gone
                } else if let Some(left) = validity(lease.keep, took, nodes.drift_factor()) {
                    Extension::Extended {
                        valid_until: self.started + took + left,
                    }
                } else {
                    // Agreed too late for any validity to be left: undecided, for `rest` to say.
                    continue;
                };
                count.handed_out = true;
                decided.push((index, extension));
            }
        }
        self.answers[node] = Some(answer);
        Some(decided)
    }

    /// What became of the leases that [`Extending::next_decided`] did not hand out: each
    /// undecided, with the answers of every node that gave one. The slower nodes get the
    /// extension in the background, so that the keys live as long on all of them.
    pub(crate) fn rest(self, leases: &[LeaseToExtend<'_>]) -> Vec<(usize, Extension)> {
        let Extending {
            nodes,
            round,
            answers,
            counts,
            ..
        } = self;
        round.detach();
        let tally_of = |lease: usize| {
            let mut tally = Tally::new(&nodes);
            for (node, answer) in answers.iter().enumerate() {
                match answer {
                    Some(Ok(renewed)) => tally.record(node, ours(renewed[lease])),
                    Some(Err(failure)) => tally.failed(node, failure.clone()),
                    None => {}
                }
            }
            tally
        };
        leases
            .iter()
            .zip(&counts)
            .enumerate()
            .filter(|(_, (_, count))| !count.handed_out)
            .map(|(index, (lease, _))| {
                let no_quorum = tally_of(index).no_quorum(lease.key, &nodes);
                (index, Extension::Undecided(no_quorum))
            })
            .collect()
    }

    /// What each lease's extension found, in the order of `leases`: [`Extending::next_decided`]
    /// until no more answers can come, then [`Extending::rest`].
    pub(crate) async fn finish(mut self, leases: &[LeaseToExtend<'_>]) -> Vec<Extension> {
        let mut found = Vec::with_capacity(leases.len());
        while let Some(decided) = self.next_decided(leases).await {
            found.extend(decided);
        }
        found.extend(self.rest(leases));
        found.sort_unstable_by_key(|(index, _)| *index);
        found.into_iter().map(|(_, extension)| extension).collect()
    }
}

/// One lease's answers in a renewal: the nodes where the key holds its token, and those where it
/// holds another (as [`Tally`] counts them); and whether its extension was handed out (see
/// [`Extending::next_decided`]).
#[derive(Clone, Copy, Default)]
struct YesNo {
    yes: u32,
    no: u32,
    handed_out: bool,
}

impl YesNo {
    fn agreed(self, quorum: usize) -> bool {
        self.yes as usize >= quorum
    }

    fn refused(self, quorum: usize, nodes: usize) -> bool {
        self.no as usize > nodes - quorum
    }

    fn decided(self, quorum: usize, nodes: usize) -> bool {
        self.agreed(quorum) || self.refused(quorum, nodes)
    }
}

/// A node's answer to an extension as a vote: the key holds our token there now.
fn ours(renewed: Renewed) -> Vote {
    match renewed {
        Renewed::Kept | Renewed::Repaired => Vote::Yes,
        Renewed::NotOurs => Vote::No,
    }
}

/// Runs the compare-and-delete script on every node at once (or, with a non-zero `keep`, lets
/// our key expire that long from now instead: `min_hold`), and returns once a quorum answered:
/// the lock is then free for others, whatever the rest say. The rest finish in the background; a
/// node that fails keeps our key until its ttl runs out, which is logged, never retried.
pub(crate) async fn release(
    nodes: &Arc<Nodes>,
    claim: &Claim,
    keep: Duration,
) -> Result<(), NoQuorum> {
    start_release(nodes, claim, keep).await.finish().await
}

/// The first half of [`release`]: waits for a turn (see `Nodes::turn`), then queues the release
/// on every node's connection before it returns, so that a caller cancelled after this still
/// releases (the round finishes in the background).
pub(crate) async fn start_release(nodes: &Arc<Nodes>, claim: &Claim, keep: Duration) -> Releasing {
    let turn = nodes.turn().await;
    let mut round = release_round(nodes, claim, 0..nodes.len(), keep);
    round.send();
    Releasing {
        nodes: nodes.clone(),
        claim: claim.clone(),
        round,
        _turn: turn,
    }
}

/// A release sent (see [`start_release`]), its answers still to count.
pub(crate) struct Releasing {
    nodes: Arc<Nodes>,
    claim: Claim,
    round: Round<bool>,
    _turn: OwnedSemaphorePermit,
}

impl Releasing {
    /// Waits until a quorum answered (the lock is free), or no more answers can come.
    pub(crate) async fn finish(mut self) -> Result<(), NoQuorum> {
        let (nodes, claim) = (&self.nodes, &self.claim);
        let mut tally = Tally::new(nodes);
        self.round
            .count(&mut tally, yes_if_answered, Tally::decided)
            .await;
        for failure in tally.failures() {
            release_failed(claim.key(), failure);
        }
        detach_release(self.round, nodes, claim);
        if tally.agreed() {
            return Ok(());
        }
        Err(tally.no_quorum(claim.key(), nodes))
    }
}

/// [`release`] for a lock given up without waiting (a dropped lease, a cancelled attempt): on
/// the crate's own runtime, which outlives whichever runtime, task or panic is giving the lock
/// up, once `first` is done (renewal stopped), waiting for every node's answer.
///
/// A program that shuts its runtime down drops the tasks that hold leases, and may drop the
/// connection tasks it drove while this runs: a node whose connection broke that way gets one
/// more try, on a fresh connection (driven by the crate's own runtime).
pub(crate) fn release_in_background(
    nodes: &Arc<Nodes>,
    claim: Claim,
    first: impl Future<Output = ()> + Send + 'static,
) {
    let nodes_of = nodes.clone();
    nodes.spawn_background(async move {
        let nodes = nodes_of;
        first.await;
        let mut broken = Vec::new();
        let mut round = release_round(&nodes, &claim, 0..nodes.len(), Duration::ZERO);
        while let Some((node, answer)) = round.next().await {
            match answer {
                Ok(_) => {}
                Err(NodeError::Redis(err)) if err.is_connection_dropped() || err.is_io_error() => {
                    broken.push(node);
                }
                Err(err) => release_failed(claim.key(), &nodes.node(node).failure(&err)),
            }
        }
        if !broken.is_empty() {
            let mut retry = release_round(&nodes, &claim, broken, Duration::ZERO);
            while let Some((node, answer)) = retry.next().await {
                if let Err(err) = answer {
                    release_failed(claim.key(), &nodes.node(node).failure(&err));
                }
            }
        }
    });
}

/// The compare-and-expire script for each of `which`.
fn release_round(
    nodes: &Arc<Nodes>,
    claim: &Claim,
    which: impl IntoIterator<Item = usize>,
    keep: Duration,
) -> Round<bool> {
    Round::start(nodes, which, |nodes, node| {
        let claim = claim.clone();
        async move {
            let released = nodes.node(node).release(claim.key(), claim.token(), keep);
            released.await
        }
    })
}

/// Leaves a release's slower nodes to the background, logging those that fail.
fn detach_release(round: Round<bool>, nodes: &Arc<Nodes>, claim: &Claim) {
    let (nodes, claim) = (nodes.clone(), claim.clone());
    round.detach_with(move |late| async move {
        for (node, answer) in late {
            if let Err(err) = answer {
                release_failed(claim.key(), &nodes.node(node).failure(&err));
            }
        }
    });
}

/// Logs a node's failed release. Only at `DEBUG`: the node may never have granted the lock (it
/// was down then too), and a copy on fewer than a quorum of nodes blocks nobody; a release that
/// misses a quorum is what its caller warns about.
fn release_failed(key: &str, failure: &NodeFailure) {
    tracing::debug!(
        key,
        node = failure.node,
        error = failure.cause,
        "releasing the lock failed on a node; its copy expires with the ttl"
    );
}

/// A vote for an answer that says whether the node did it.
fn yes_if(_node: usize, done: bool) -> Vote {
    if done {
        Vote::Yes
    } else {
        Vote::No
    }
}

/// A vote for an answer that only says the node answered (a release: gone, or not ours, the key
/// no longer holds our token there).
fn yes_if_answered<T>(_node: usize, _answer: T) -> Vote {
    Vote::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
