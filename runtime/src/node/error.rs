//! Why a node gave no vote, or could not be connected to.

use std::fmt;
use std::time::Duration;

use redis::RedisError;

use crate::FailureKind;
#[cfg(doc)]
use crate::NodeFailure;

/// Why a connection could not be opened, and whether the server refused it (a wrong password,
/// a missing permission) rather than being out of reach.
#[derive(Clone, Debug)]
pub(crate) struct ConnectFailure {
    pub(super) cause: String,
    pub(super) refused: bool,
}

/// Why one node gave no vote.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// No reply within the per-node timeout; the command may still have been applied.
    Timeout(Duration),
    /// Not connected: the last attempt failed for this reason.
    Down(ConnectFailure),
    /// The connection failed or the server answered with an error.
    Redis(RedisError),
    /// The server restarted too recently for its vote to count.
    Restarted { up: Duration, grace: Duration },
    /// The server started after the period began (`slot`), so its "no marker" may be a marker
    /// it forgot.
    StartedInPeriod,
    /// No answer yet when the round's outcome was decided without it.
    Unanswered,
    /// The node no longer has the epoch read when it was last checked: it lost its data.
    LostData,
    /// Too few other nodes' clocks were read yet to compare the node's clock with.
    ClockNotCompared,
    /// The readings of the node's clock were too slow to rule out a step of more than
    /// `allowance`, the lock's allowance for clocks: one of up to `blind_spot` (and the
    /// tolerances) could be unseen.
    ClockUncertain {
        blind_spot: Duration,
        allowance: Duration,
    },
    /// The node's clock stepped forward `ago`, by `by`: keys on it may have expired early.
    ClockJumped {
        by: Duration,
        ago: Duration,
        grace: Duration,
    },
    /// Machines using the nodes announced lists of `fewest` to `most` nodes (this one's
    /// included); this one locks on `ours` (`None`: it only looks).
    NodeListsDiffer {
        ours: Option<u64>,
        fewest: u64,
        most: u64,
    },
    /// The node has not been read since this runtime began to lock, in the script that announces
    /// its node count.
    NodeListsUnread,
}

impl NodeError {
    /// How the node's metrics count this failure: `"timeout"`, a reason its vote was refused, or
    /// `None` when it is not the node's failure (the call was decided without waiting for it).
    pub(crate) fn counted_as(&self) -> Option<&'static str> {
        Some(match self {
            NodeError::Timeout(_) => "timeout",
            NodeError::Unanswered => return None,
            NodeError::Restarted { .. } => "young",
            NodeError::LostData => "lost_data",
            NodeError::ClockJumped { .. } => "clock_jumped",
            NodeError::ClockNotCompared | NodeError::ClockUncertain { .. } => "clock_unverified",
            NodeError::StartedInPeriod => "started_in_period",
            NodeError::NodeListsDiffer { .. } => "node_lists_differ",
            NodeError::NodeListsUnread => "node_lists_unread",
            NodeError::Down(_) | NodeError::Redis(_) if self.kind() == FailureKind::Refused => {
                "refused"
            }
            NodeError::Down(_) | NodeError::Redis(_) => "unreachable",
        })
    }

    /// The kind of failure, as [`NodeFailure`] reports it.
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            NodeError::Timeout(_) => FailureKind::Timeout,
            NodeError::Down(failure) if failure.refused => FailureKind::Refused,
            NodeError::Down(_) => FailureKind::Unreachable,
            NodeError::Redis(err) if is_refusal(err) => FailureKind::Refused,
            NodeError::Redis(_) => FailureKind::Unreachable,
            NodeError::Restarted { .. }
            | NodeError::StartedInPeriod
            | NodeError::LostData
            | NodeError::ClockJumped { .. } => FailureKind::Restarted,
            NodeError::ClockNotCompared | NodeError::ClockUncertain { .. } => {
                FailureKind::Unverified
            }
            NodeError::Unanswered => FailureKind::Unanswered,
            NodeError::NodeListsDiffer { .. } => FailureKind::Refused,
            NodeError::NodeListsUnread => FailureKind::Unverified,
        }
    }
}

/// Whether `err` says the node lacks the script that was called (`NOSCRIPT`).
pub(super) fn is_no_script(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Whether the server answered `err` (it is up, and refused the command), rather than the
/// connection failing or the server being busy loading its data or failing over.
pub(super) fn is_refusal(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown,
        ) => false,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::AuthenticationFailed
        | ErrorKind::UnexpectedReturnType => true,
        _ => false,
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Timeout(after) => write!(f, "no answer within {after:?}"),
            NodeError::Down(failure) => write!(f, "cannot connect: {}", failure.cause),
            NodeError::Redis(err) => write!(f, "{err}"),
            NodeError::Restarted { up, grace } => write!(
                f,
                "the server has been up (and held its data) for {}s only; its vote counts once it \
                 has been up for {grace:?}, so that it cannot grant a lock it forgot when it \
                 restarted (see `Config::restart_grace`)",
                up.as_secs()
            ),
            NodeError::StartedInPeriod => f.write_str(
                "the server started after the period began, so it may have forgotten the period's \
                 done marker; its \"not done\" counts from the next period on",
            ),
            NodeError::Unanswered => {
                f.write_str("no answer yet when the call's outcome was decided without it")
            }
            NodeError::LostData => f.write_str(
                "the node has lost its data since it was last checked (a restart, or a flush): it \
                 may have forgotten a lock, so its vote counts again once the restart grace has \
                 passed from now (see `Config::restart_grace`)",
            ),
            NodeError::ClockNotCompared => f.write_str(
                "the node's clock could not be compared with the other nodes' clocks yet (their \
                 connections are still opening), so its vote cannot be trusted yet: a clock \
                 stepped forward would have let a lock expire early; it counts once they answer \
                 (see `Config::detect_clock_jumps`)",
            ),
            NodeError::ClockUncertain {
                blind_spot,
                allowance,
            } => write!(
                f,
                "the node answered too slowly to tell whether its clock stepped: a step of up to \
                 {blind_spot:?} could have gone unseen, more than the lock's allowance for clocks \
                 ({allowance:?}, `ttl × drift_factor + 2 ms`); a lock with a longer ttl allows \
                 more (see `Config::detect_clock_jumps`)"
            ),
            NodeError::NodeListsDiffer { ours, fewest, most } => {
                write!(
                    f,
                    "the machines using these nodes lock on different numbers of them ({fewest} \
                     to {most}, as announced on them; "
                )?;
                match ours {
                    Some(ours) => write!(f, "this one on {ours}")?,
                    None => f.write_str("this one only looks")?,
                }
                f.write_str(
                    "), so their majorities need not overlap and two of them could hold one key: \
                     give every machine the same nodes; the nodes vote again once the other \
                     machines' announcements have expired, a minute after their `max_ttl` (see \
                     docs/deployment.md, \"Changing the nodes\")",
                )
            }
            NodeError::NodeListsUnread => f.write_str(
                "this runtime has not read the node since it began to lock (the check that tells \
                 whether the machines using it list as many nodes did not answer in time), so its \
                 vote cannot count yet; it counts once the node's next check, within a second, \
                 has answered",
            ),
            NodeError::ClockJumped { by, ago, grace } => write!(
                f,
                "the node's clock stepped forward (or was seen ahead of the other nodes', or \
                 differed by a step of unknown direction from a reading handled out of order) by \
                 {by:?} {}s ago, so keys on it may have expired early; its vote counts once the \
                 restart grace ({grace:?}) has passed since (see `Config::detect_clock_jumps`)",
                ago.as_secs()
            ),
        }
    }
}
