//! One attempt at a lock: its `SET`s, and what becomes of them however the attempt ends.

use std::sync::Arc;
use std::time::Duration;

use super::{give_back, release_in_background};
use crate::claim::Claim;
use crate::nodes::Nodes;
use crate::round::{Round, Tally, Vote};

/// One attempt's SETs: dropped before it kept its lock or gave it back (the caller gave up
/// mid-attempt), it gives back whatever the attempt may hold, in the background, since a lock
/// it took must not wait for its ttl.
pub(super) struct Attempt {
    nodes: Arc<Nodes>,
    claim: Claim,
    round: Option<Round<Option<u64>>>,
}

impl Attempt {
    /// `SET key token NX PX ttl` on every node (with fencing, the script that also reads the
    /// fencing counter).
    pub(super) fn start(
        nodes: &Arc<Nodes>,
        claim: &Claim,
        fence_key: Option<&Arc<str>>,
        ttl: Duration,
    ) -> Attempt {
        let round = Round::start(nodes, 0..nodes.len(), |nodes, node| {
            let (claim, fence_key) = (claim.clone(), fence_key.cloned());
            async move {
                let node = nodes.node(node);
                let (key, token) = (claim.key(), claim.token());
                match fence_key {
                    None => node
                        .set_nx(key, token, ttl)
                        .await
                        .map(|granted| granted.then_some(0)),
                    Some(fence_key) => node.set_nx_reading_fence(key, &fence_key, token, ttl).await,
                }
            }
        });
        Attempt {
            nodes: nodes.clone(),
            claim: claim.clone(),
            round: Some(round),
        }
    }

    /// Counts the answers until the result is decided, and the highest fencing counter among the
    /// nodes that granted.
    pub(super) async fn vote(&mut self) -> (Tally, u64) {
        let mut tally = Tally::new(&self.nodes);
        let mut highest = 0;
        if let Some(round) = self.round.as_mut() {
            let granted = |_node, fence: Option<u64>| match fence {
                Some(fence) => {
                    highest = highest.max(fence);
                    Vote::Yes
                }
                None => Vote::No,
            };
            round.count(&mut tally, granted, Tally::decided).await;
        }
        (tally, highest)
    }

    /// For an attempt that won: the SETs still out go on in the background, so that the lock
    /// reaches the slower nodes too (every one was queued on its connection at its first poll,
    /// ahead of the release that will follow it); dropping the attempt does nothing any more.
    pub(super) fn keep(mut self) {
        if let Some(round) = self.round.take() {
            round.detach();
        }
    }

    /// For an attempt that did not win: records the answers still to come in `tally`, until the
    /// round's deadline (a node that gives none by then counts as failed: ours may have landed
    /// there).
    pub(super) async fn finish(&mut self, tally: &mut Tally) {
        if let Some(round) = self.round.as_mut() {
            let granted = |_node, fence: Option<u64>| fence.map_or(Vote::No, |_| Vote::Yes);
            round.count(tally, granted, |_| false).await;
        }
    }

    /// For an attempt that did not win: drops the SETs still out (see [`Round::abandon`]), then
    /// gives back whatever of ours may have landed (see [`give_back`]).
    pub(super) async fn give_back(mut self, tally: &Tally) {
        if let Some(round) = self.round.take() {
            round.abandon();
        }
        give_back(&self.nodes, &self.claim, tally).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        round.abandon();
        // Every node: which SETs landed is unknown.
        release_in_background(&self.nodes, self.claim.clone(), async {});
    }
}
