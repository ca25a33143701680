//! Once per period (`slot`): a done marker per period, written after a successful run and looked
//! for before the next.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::claim::Claim;
use crate::node::millis;
use crate::nodes::Nodes;
use crate::round::{Round, Tally, Vote};
use crate::{Error, NoQuorum};

/// How far apart the machines' clocks may be, at least, for a marker to be found by every
/// machine that calls for its period (see `Period::marker_expiry`): periods of a second (a cron
/// schedule every second) would otherwise allow only two seconds.
const MARKER_OUTLIVES_CLOCK_SKEW: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// The cron tick a scheduled call runs for (set by `cron` around each job call): the call's
    /// period when its options have no `slot`, so that each tick runs once.
    pub(crate) static TICK: Period;
}

/// The period of the cron tick this task runs for, if any (see [`TICK`]).
pub(crate) fn current_tick() -> Option<Period> {
    TICK.try_with(|tick| *tick).ok()
}

/// The period a call runs for, and the key of the period's done marker.
pub(crate) struct DoneMarker {
    pub(crate) period: Period,
    pub(crate) key: String,
}

/// The period a call runs for: that of its `slot` now, or else the cron tick it was made for
/// (a call that a cron schedule made for one of its ticks runs once per tick); `None` for a call
/// without either.
pub(crate) fn period_of(slot: Option<Duration>) -> Result<Option<Period>, Error> {
    match slot {
        Some(length) => Period::now(length).map(Some),
        None => Ok(current_tick()),
    }
}

/// One period of a `slot`, aligned to the Unix epoch; or one cron tick, from its scheduled time
/// to the next tick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Period {
    index: u64,
    length: Duration,
    start: SystemTime,
}

impl Period {
    /// The period of length `length` that the wall clock is in now.
    pub(crate) fn now(length: Duration) -> Result<Period, Error> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Internal("the system clock is set before 1970".into()))?;
        let length_ms = millis(length).max(1);
        let index = millis(since_epoch) / length_ms;
        let start = UNIX_EPOCH + Duration::from_millis(index.saturating_mul(length_ms));
        Ok(Period {
            index,
            length,
            start,
        })
    }

    /// The cron tick scheduled at `start`, lasting until the next tick at `next`: numbered by
    /// its Unix time in milliseconds, which names it alike on every machine.
    #[cfg(feature = "cron")]
    pub(crate) fn tick(start: SystemTime, next: SystemTime) -> Period {
        let since_epoch = start.duration_since(UNIX_EPOCH).unwrap_or_default();
        Period {
            index: millis(since_epoch),
            length: next
                .duration_since(start)
                .unwrap_or(Duration::from_millis(1)),
            start,
        }
    }

    /// How long until the period ends (zero once it has).
    pub(crate) fn time_left(&self) -> Duration {
        (self.start + self.length)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// When the period began.
    pub(crate) fn start(&self) -> SystemTime {
        self.start
    }

    /// The period's number: periods of its length since the Unix epoch.
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    /// How long a marker written now should live: to the end of the next period, and at least
    /// a period plus [`MARKER_OUTLIVES_CLOCK_SKEW`] from now, so that a machine whose clock
    /// differs by less than that (or than a period, for longer periods) still finds it, and so
    /// does one whose call for the period is late (a run that ended long after its period).
    fn marker_expiry(&self) -> Duration {
        let end_of_next = self.start + self.length * 2;
        end_of_next
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(self.length + MARKER_OUTLIVES_CLOCK_SKEW)
    }
}

/// Whether a run in `period` already succeeded: its done marker `marker` on any node that
/// answers. "No marker" counts only from a node that cannot have forgotten a marker of this
/// period (see `Node::get_marker`), and needs a quorum of them, so that the marker's quorum and
/// these share a node that would have kept it.
pub(crate) async fn done(nodes: &Arc<Nodes>, marker: &str, period: &Period) -> Result<bool, Error> {
    let (marker, start) = (Arc::<str>::from(marker), period.start);
    nodes.open_connections().await;
    let mut round = Round::start(nodes, 0..nodes.len(), |nodes, node| {
        let marker = marker.clone();
        async move { nodes.node(node).get_marker(&marker, start).await }
    });
    let mut tally = Tally::new(nodes);
    let found = |_node, value: Option<String>| value.map_or(Vote::No, |_token| Vote::Yes);
    // Looking on every node that answers, not just a quorum, finds a marker that only some of
    // its nodes kept through a restart; a frozen node costs its timeout, once a period.
    round
        .count(&mut tally, found, |tally| tally.yes() > 0)
        .await;
    round.abandon();
    if tally.yes() > 0 {
        return Ok(true);
    }
    if tally.answered() >= nodes.quorum() {
        return Ok(false);
    }
    Err(tally.no_quorum(&marker, nodes).into_error())
}

/// Why a done marker was not written on a quorum.
pub(crate) enum NotMarked {
    /// A majority of nodes holds another token for the lock (or none): it is no longer ours.
    NotOurs,
    /// Too few nodes answered: the period may run again.
    NoQuorum(NoQuorum),
}

/// Writes the done marker `marker` for `period` (its value: the run's token) on every node where
/// the lock that `claim` names still holds its token, in one step with that check, so that a
/// holder whose lease ran out cannot mark a period it no longer owns. Fails unless a quorum
/// stored it.
pub(crate) async fn mark_done(
    nodes: &Arc<Nodes>,
    marker: &str,
    claim: &Claim,
    period: &Period,
) -> Result<(), NotMarked> {
    let expiry = period.marker_expiry();
    let marker = Arc::<str>::from(marker);
    nodes.open_connections().await;
    let mut round = Round::start(nodes, 0..nodes.len(), |nodes, node| {
        let (claim, marker) = (claim.clone(), marker.clone());
        async move {
            let marking = nodes
                .node(node)
                .mark_done(claim.key(), claim.token(), &marker, expiry);
            marking.await
        }
    });
    let mut tally = Tally::new(nodes);
    let stored = |_node, stored| if stored { Vote::Yes } else { Vote::No };
    // Every node that answers within the timeout has the marker before the call returns.
    round.count(&mut tally, stored, |_| false).await;
    if tally.agreed() {
        return Ok(());
    }
    if tally.refused() {
        return Err(NotMarked::NotOurs);
    }
    Err(NotMarked::NoQuorum(tally.no_quorum(&marker, nodes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_aligned_to_the_epoch() {
        let day = Duration::from_secs(24 * 3600);
        let period = Period::now(day).unwrap();
        let start = period.start().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(start.as_secs() % day.as_secs(), 0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(start <= now && now < start + day);
        assert_eq!(period.index(), now.as_secs() / day.as_secs());
        assert!(period.marker_expiry() > day && period.marker_expiry() <= day * 2);
    }
}
