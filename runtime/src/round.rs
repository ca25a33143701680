//! One command sent to several nodes at once, and its answers counted toward a quorum: the
//! primitive under every step of the algorithm (see [`crate::redlock`]), of the done markers and
//! of `inspect`.
//!
//! A round's commands are polled by whoever awaits the round: no task of their own, no thread
//! hand-off, so that a lock costs its two round trips. The commands that put our token on a node
//! (a vote, an extension) never wait for a connection to open (a node without an open connection
//! fails at once, see `Nodes::open_a_quorum`): each is queued on its node's connection at its
//! first poll, ahead of anything sent to that node later, so that a release never overtakes
//! one.
//!
//! A command still unanswered when its caller is done with the round is not dropped, since
//! redis-rs skips a command whose caller has gone before it was written, and the node would then
//! miss it: [`Round::detach`] (or dropping the round) leaves such commands to the backlog (see
//! [`crate::backlog`]), which keeps them until answered or a few node timeouts have passed.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::driver;
use crate::node::{Node, NodeError};
use crate::nodes::Nodes;
use crate::{NoQuorum, NodeFailure};

/// One node's command in a round, boxed so that the round can outlive its caller.
type Call<T> = Pin<Box<dyn Future<Output = Result<T, NodeError>> + Send>>;

/// One node's answer in a round.
pub(crate) type Answer<T> = (usize, Result<T, NodeError>);

/// A node's answer as a quorum counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vote {
    /// The node did what was asked (granted the lock, extended it, stored the marker).
    Yes,
    /// The node answered, and refused (the key holds another token).
    No,
    /// The node gave no answer, or an error: it may or may not have done it.
    Failed,
}

/// The votes of one round so far.
pub(crate) struct Tally {
    quorum: usize,
    yes: usize,
    no: usize,
    /// Per node: its vote, once it gave one.
    votes: Vec<Option<Vote>>,
    failures: Vec<NodeFailure>,
}

impl Tally {
    pub(crate) fn new(nodes: &Nodes) -> Tally {
        Tally {
            quorum: nodes.quorum(),
            yes: 0,
            no: 0,
            votes: vec![None; nodes.len()],
            failures: Vec::new(),
        }
    }

    /// Records `node`'s vote (a failure without its cause: see [`Tally::failed`]).
    pub(crate) fn record(&mut self, node: usize, vote: Vote) {
        match vote {
            Vote::Yes => self.yes += 1,
            Vote::No => self.no += 1,
            Vote::Failed => {}
        }
        self.votes[node] = Some(vote);
    }

    /// Records that `node` failed, and why.
    pub(crate) fn failed(&mut self, node: usize, failure: NodeFailure) {
        self.failures.push(failure);
        self.record(node, Vote::Failed);
    }

    pub(crate) fn yes(&self) -> usize {
        self.yes
    }

    /// The nodes' failures, each named and counted in the node's metrics.
    pub(crate) fn failures(&self) -> &[NodeFailure] {
        &self.failures
    }

    /// Nodes that gave a definite answer, yes or no.
    pub(crate) fn answered(&self) -> usize {
        self.yes + self.no
    }

    fn pending(&self) -> usize {
        self.votes.iter().filter(|vote| vote.is_none()).count()
    }

    /// A quorum said yes.
    pub(crate) fn agreed(&self) -> bool {
        self.yes >= self.quorum
    }

    /// So many nodes said no that a quorum can never say yes, whatever the others did.
    pub(crate) fn refused(&self) -> bool {
        self.no > self.votes.len() - self.quorum
    }

    /// Whether the answers still outstanding can change the result: once a quorum agreed, or it
    /// cannot, and it is known whether that is a refusal by a quorum that answered, or an outage
    /// (too few can still answer); waiting for slow nodes would only add their latency.
    pub(crate) fn decided(&self) -> bool {
        let pending = self.pending();
        let cannot_agree = self.yes + pending < self.quorum;
        let refusal_known = self.answered() >= self.quorum;
        let outage_known = self.answered() + pending < self.quorum;
        self.agreed() || (cannot_agree && (refusal_known || outage_known))
    }

    /// The nodes that voted `vote`.
    pub(crate) fn voted(&self, vote: Vote) -> impl Iterator<Item = usize> + '_ {
        (0..self.votes.len()).filter(move |&node| self.votes[node] == Some(vote))
    }

    /// The nodes that may have done what was asked: all but those that said no (a command that
    /// failed, or is still unanswered, may have landed).
    pub(crate) fn maybe_yes(&self) -> Vec<usize> {
        (0..self.votes.len())
            .filter(|&node| self.votes[node] != Some(Vote::No))
            .collect()
    }

    /// Why a quorum did not agree about `what`, naming every node that gave no vote: those that
    /// failed, and those that had not answered when the round ended without them.
    pub(crate) fn no_quorum(mut self, what: &str, nodes: &Nodes) -> NoQuorum {
        for (node, vote) in self.votes.iter().enumerate() {
            if vote.is_none() {
                self.failures
                    .push(nodes.node(node).failure(&NodeError::Unanswered));
            }
        }
        NoQuorum {
            key: what.to_owned(),
            nodes: self.votes.len(),
            answered: self.answered(),
            needed: self.quorum,
            failures: self.failures,
        }
    }

    /// Puts the votes on the call's span (a no-op outside `Runtime::run_with`), so that a
    /// trace shows how close the call came to a quorum.
    pub(crate) fn record_on_span(&self) {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return;
        }
        span.record("granted", self.yes);
        span.record("busy", self.no);
        span.record("failed", self.failures.len());
        for failure in &self.failures {
            tracing::debug!(
                node = failure.node,
                cause = failure.cause,
                "a node gave no vote"
            );
        }
    }
}

/// One command sent to several nodes at once, and its answers as they come, all within one
/// deadline (the node timeout).
pub(crate) struct Round<T: Send + 'static> {
    nodes: Arc<Nodes>,
    calls: Vec<(usize, Call<T>)>,
    /// Answers already in, not yet handed out.
    ready: Vec<Answer<T>>,
    deadline: Instant,
    /// How long each node had to answer: what a node that did not is told it missed.
    wait: Duration,
    /// Set at the first wait, so that a round answered at once (`memory://`) sets no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the commands were polled, and so went out; until then, dropping them is safe.
    sent: bool,
}

impl<T: Send + 'static> Round<T> {
    /// Starts `command` for each of `which`; the commands go out when the round is first polled.
    pub(crate) fn start<C, F>(
        nodes: &Arc<Nodes>,
        which: impl IntoIterator<Item = usize>,
        command: C,
    ) -> Self
    where
        C: FnMut(Arc<Nodes>, usize) -> F,
        F: Future<Output = Result<T, NodeError>> + Send + 'static,
    {
        Self::start_within(nodes, which, nodes.timeout(), command)
    }

    /// [`Round::start`], for commands that take longer than a node timeout (`SCAN`): every node
    /// has `wait` to answer.
    pub(crate) fn start_within<C, F>(
        nodes: &Arc<Nodes>,
        which: impl IntoIterator<Item = usize>,
        wait: Duration,
        mut command: C,
    ) -> Self
    where
        C: FnMut(Arc<Nodes>, usize) -> F,
        F: Future<Output = Result<T, NodeError>> + Send + 'static,
    {
        let deadline = Instant::now() + wait;
        let calls: Vec<_> = which
            .into_iter()
            .map(|node| (node, Box::pin(command(nodes.clone(), node)) as Call<T>))
            .collect();
        Round {
            nodes: nodes.clone(),
            ready: Vec::with_capacity(calls.len()),
            calls,
            deadline,
            wait,
            timer: None,
            sent: false,
        }
    }

    /// The next answer; a node that has not answered by the deadline answers
    /// [`NodeError::Timeout`]. `None` once every node has answered.
    pub(crate) async fn next(&mut self) -> Option<Answer<T>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Counts the answers into `tally` as `vote` judges them, until `until` says the result is
    /// decided or every node has answered; answers that came in with the deciding one count too
    /// (they cannot change the result, and make what the caller knows exact). The commands still
    /// out stay in the round.
    pub(crate) async fn count(
        &mut self,
        tally: &mut Tally,
        mut vote: impl FnMut(usize, T) -> Vote,
        until: impl Fn(&Tally) -> bool,
    ) {
        while !until(tally) {
            let Some((node, answer)) = self.next().await else {
                return;
            };
            self.record(tally, &mut vote, node, answer);
        }
        for (node, answer) in std::mem::take(&mut self.ready) {
            self.record(tally, &mut vote, node, answer);
        }
    }

    fn record(
        &self,
        tally: &mut Tally,
        vote: &mut impl FnMut(usize, T) -> Vote,
        node: usize,
        answer: Result<T, NodeError>,
    ) {
        match answer {
            Ok(answer) => tally.record(node, vote(node, answer)),
            Err(err) => tally.failed(node, self.node(node).failure(&err)),
        }
    }

    /// Queues every command on its connection now, rather than at the round's first wait: what
    /// is sent to a node after this returns reaches it after them. (The answers are awaited
    /// later; an answer already in is kept for [`Round::next`].)
    pub(crate) fn send(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Some(answer)) = self.poll_next(&mut cx) {
            self.ready.push(answer);
        }
    }

    pub(crate) fn node(&self, index: usize) -> &Node {
        self.nodes.node(index)
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
                let (crate_thread, deadline) = (self.nodes.crate_thread(), self.deadline);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(driver::sleep_until(crate_thread, deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    let timeout = self.wait;
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

    /// Lets the commands still unanswered finish in the background, then hands every answer not
    /// handed out yet to `then` (which may start a round of its own).
    pub(crate) fn detach_with<F, Fut>(mut self, then: F)
    where
        F: FnOnce(Vec<Answer<T>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.calls.is_empty() && self.ready.is_empty() {
            return;
        }
        self.park(then);
    }

    /// [`Round::detach_with`], for answers nobody needs: the slower nodes still get the command.
    pub(crate) fn detach(self) {
        self.detach_with(|_late| async {});
    }

    /// Drops the commands still unanswered instead of finishing them: one not yet written to
    /// its connection is then never sent (redis-rs skips a command nobody waits for), and one
    /// already written is followed, on the same connection, by whatever is sent to the node next.
    /// For the SETs of an attempt that lost: the give-back that follows finds whatever of them
    /// landed, and nothing is left to land after it.
    pub(crate) fn abandon(mut self) {
        self.calls.clear();
    }

    /// Moves what is left of this round to the backlog, with `then` to run on its answers.
    fn park<F, Fut>(&mut self, then: F)
    where
        F: FnOnce(Vec<Answer<T>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rest = Round {
            nodes: self.nodes.clone(),
            calls: std::mem::take(&mut self.calls),
            ready: std::mem::take(&mut self.ready),
            deadline: self.deadline,
            wait: self.wait,
            timer: self.timer.take(),
            sent: self.sent,
        };
        // Its own deadline ends the round; `then` may start a round of its own after that.
        let until = rest.deadline + 3 * rest.nodes.timeout();
        let backlog = rest.nodes.backlog().clone();
        backlog.park(until, async move {
            let mut late = Vec::new();
            while let Some(answer) = rest.next().await {
                late.push(answer);
            }
            then(late).await;
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds votes in order to a tally of `nodes` and reports after how many it was decided.
    fn decided_after(nodes: usize, votes: &[Vote]) -> Option<usize> {
        let mut tally = Tally {
            quorum: crate::nodes::quorum(nodes),
            yes: 0,
            no: 0,
            votes: vec![None; nodes],
            failures: Vec::new(),
        };
        for (node, vote) in votes.iter().enumerate() {
            tally.record(node, *vote);
            if tally.decided() {
                return Some(node + 1);
            }
        }
        None
    }

    #[test]
    fn a_round_stops_as_soon_as_the_result_is_known() {
        use Vote::{Failed as F, No as N, Yes as Y};
        // Agreed on the third yes of five: the two slow nodes are not waited for.
        assert_eq!(decided_after(5, &[Y, Y, Y, Y, Y]), Some(3));
        // Three refusals of five: contention, known without the last two.
        assert_eq!(decided_after(5, &[N, N, N, Y, Y]), Some(3));
        // Three failures of five: an outage, whatever the others say.
        assert_eq!(decided_after(5, &[F, F, F, Y, Y]), Some(3));
        // Two failures and two refusals: cannot agree, but refusal-or-outage depends on the last.
        assert_eq!(decided_after(5, &[F, F, N, N]), None);
        assert_eq!(decided_after(5, &[F, F, N, N, N]), Some(5));
        assert_eq!(decided_after(1, &[N]), Some(1));
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(crate::nodes::quorum),
            [1, 2, 2, 3, 3, 4, 4]
        );
    }
}
