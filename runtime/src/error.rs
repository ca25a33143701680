//! Everything that can go wrong, worded so that the message says what to do.

use std::fmt;
use std::time::Duration;

/// Why a `#[singleton]` call, [`Runtime::lock`](crate::Runtime::lock) or the runtime's set-up failed.
///
/// "Another machine holds the lock" is never an error: it is
/// [`Outcome::Skipped`](crate::Outcome::Skipped). An error means the crate could not tell, or could
/// not be used; the body did not run. No message contains a password from a Redis URL.
///
/// ```
/// use cluster_singleton::Error;
///
/// let err = Error::NotInitialised;
/// assert!(err.to_string().contains("runtime::init"));
/// ```
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `#[singleton]` function was called before `runtime::init` and outside `Runtime::scope`.
    #[error(
        "cluster-singleton is not initialised; call `cluster_singleton::runtime::init(redis_urls).await` \
         once at start-up, before the first `#[singleton]` call (or run the call inside `Runtime::scope`)"
    )]
    NotInitialised,

    /// `runtime::init` was called a second time in this process.
    #[error(
        "cluster-singleton is already initialised; call `runtime::init` once per process, \
         or build a separate `Runtime` from a `Config` and use `Runtime::scope` for other nodes"
    )]
    AlreadyInitialised,

    /// The configuration cannot work: a bad or repeated URL, no URLs, an out-of-range setting.
    #[error("invalid cluster-singleton configuration: {0}")]
    InvalidConfig(String),

    /// Too few Redis nodes answered to decide: the lock was neither taken nor known to be busy.
    /// An outage (or nodes inside their restart grace): the body did not run anywhere, as far as
    /// this machine knows.
    #[error(transparent)]
    NoQuorum(#[from] NoQuorum),

    /// Nodes answered, but with an error instead of a vote, and too few voted to decide: a key of
    /// another type where the crate keeps its keys, a missing ACL permission, a wrong password, a
    /// script the server refused, or machines using the nodes that lock on different numbers of
    /// them (every machine must list the same nodes). Not an outage: restarting nodes will not
    /// help, fixing what [`NoQuorum::failures`] says will. The body did not run.
    #[error("{}", .0.refusal())]
    Refused(NoQuorum),

    /// The runtime was shut down ([`Runtime::shutdown`](crate::Runtime::shutdown)): it takes no
    /// more locks, and the leases it held were released.
    #[error(
        "the cluster-singleton runtime was shut down; nothing is locked after `shutdown`, \
         so call it only when the program is ending"
    )]
    ShutDown,

    /// A quorum granted the lock, but so slowly that no validity was left of the ttl; the partial
    /// lock was released again.
    #[error(
        "taking the lock `{key}` took {elapsed:?}, leaving no validity of its {ttl:?} ttl; \
         raise the `ttl` or lower the per-node timeout"
    )]
    Expired {
        /// The Redis key, with its prefix.
        key: String,
        /// How long the attempt took.
        elapsed: Duration,
        /// The ttl the attempt asked for.
        ttl: Duration,
    },

    /// The lease was lost while the body ran: renewal could not keep a quorum, the key was taken
    /// over, or `max_hold` ran out. The body may have run alongside another holder's; with
    /// `on_lost = "cancel"` (the default) it was dropped at its next `.await`.
    #[error(
        "the lock `{key}` was lost {after:?} after it was taken, because {reason}; {}",
        if *body_finished {
            "the body ran to its end, but not all of it under the lock"
        } else {
            "the body was cancelled"
        }
    )]
    LeaseLost {
        /// The Redis key, with its prefix.
        key: String,
        /// Why it was lost.
        reason: LostReason,
        /// How long after it was taken.
        after: Duration,
        /// Whether the body ran to its end (`on_lost = "continue"`) or was cancelled.
        body_finished: bool,
    },

    /// Something inside the crate failed that is not the caller's doing: the OS random source or
    /// the background thread. Nothing was locked.
    #[error(
        "cluster-singleton internal failure: {0}; nothing was locked; please report this as a bug"
    )]
    Internal(String),
}

/// Too few Redis nodes gave an answer (granted or busy) to decide the attempt.
///
/// Its message names every node that gave no answer and why, those still silent when the call
/// gave up included, for example:
///
/// ```text
/// no quorum for `singleton:lock:daily-email`: 1 of 3 Redis nodes answered, 2 needed
/// (redis://10.0.0.2:6379: cannot connect: connection refused; redis://10.0.0.3:6379: no answer
/// within 250ms); check that a majority of the nodes is up and reachable
/// ```
///
/// ```
/// use cluster_singleton::Error;
///
/// fn alert(err: &Error) -> Option<String> {
///     match err {
///         Error::NoQuorum(q) => Some(format!("{} of {} Redis nodes down", q.nodes - q.answered, q.nodes)),
///         _ => None,
///     }
/// }
/// assert_eq!(alert(&Error::NotInitialised), None);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoQuorum {
    /// The Redis key, with its prefix.
    pub key: String,
    /// How many nodes the runtime has.
    pub nodes: usize,
    /// How many nodes answered, either granting the lock or saying it is held.
    pub answered: usize,
    /// How many answers a decision needs: a majority of `nodes`.
    pub needed: usize,
    /// Each node that did not answer, and why.
    pub failures: Vec<NodeFailure>,
}

impl NoQuorum {
    /// How many nodes answered with an error rather than a vote.
    fn refused(&self) -> usize {
        self.failures
            .iter()
            .filter(|failure| failure.kind == FailureKind::Refused)
            .count()
    }

    /// The error a caller gets: [`Error::Refused`] when the nodes that refused would have made a
    /// quorum with those that answered (so the refusals, not an outage, decided it), else
    /// [`Error::NoQuorum`].
    pub(crate) fn into_error(self) -> Error {
        if self.refused() > 0 && self.answered + self.refused() >= self.needed {
            Error::Refused(self)
        } else {
            Error::NoQuorum(self)
        }
    }

    fn write_failures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(" (")?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        f.write_str(")")
    }

    /// The message of [`Error::Refused`].
    fn refusal(&self) -> impl fmt::Display + '_ {
        struct Refusal<'a>(&'a NoQuorum);
        impl fmt::Display for Refusal<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let it = self.0;
                write!(
                    f,
                    "Redis refused the command for `{}`: {} of {} nodes answered with an error \
                     instead of a vote, {} voted, {} needed",
                    it.key,
                    it.refused(),
                    it.nodes,
                    it.answered,
                    it.needed
                )?;
                it.write_failures(f)?;
                f.write_str(
                    "; this is not an outage: fix what the nodes said (a missing ACL permission, \
                     a wrong password, a key of another type under the key prefix, machines that \
                     list different nodes)",
                )
            }
        }
        Refusal(self)
    }
}

impl fmt::Display for NoQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no quorum for `{}`: {} of {} Redis nodes answered, {} needed",
            self.key, self.answered, self.nodes, self.needed
        )?;
        self.write_failures(f)?;
        let young = self
            .failures
            .iter()
            .filter(|failure| failure.kind == FailureKind::Restarted)
            .count();
        if young > 0 && self.answered + young >= self.needed {
            f.write_str(
                "; nodes inside their restart grace give no vote yet: locking resumes once \
                 enough of them have been up for the grace (see `Config::restart_grace`)",
            )
        } else {
            f.write_str("; check that a majority of the nodes is up and reachable")
        }
    }
}

impl std::error::Error for NoQuorum {}

/// One Redis node that failed to answer, named by its URL with any password replaced by `***`.
///
/// Displayed as `node: cause`, for example `redis://:***@10.0.0.1:6379: timed out after 250ms`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node's URL, password redacted.
    pub node: String,
    /// What went wrong.
    pub cause: String,
    /// What kind of failure it is.
    pub kind: FailureKind,
}

/// What kind of failure kept a node from voting.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The node could not be reached: refused connection, broken connection, DNS, TLS.
    Unreachable,
    /// The node did not answer within the node timeout (it may have applied the command).
    Timeout,
    /// The node had not answered yet when the call's outcome was decided without it.
    Unanswered,
    /// The node answered with an error instead of a vote: a missing ACL permission, a wrong
    /// password, a key of another type, a script error. Or the machines using it announced
    /// there that they lock on different numbers of nodes, so that their majorities need not
    /// overlap (every machine must list the same nodes).
    Refused,
    /// The node restarted too recently for its vote to count (see `Config::restart_grace`), or
    /// for a "no done marker" answer to count (`slot`); or it lost its data, or its clock
    /// stepped forward (see `Config::detect_clock_jumps`), as recently.
    Restarted,
    /// The node's clock could not be compared with the other nodes' clocks yet (a process that
    /// just started, whose connections to them are still opening), so its vote could not be
    /// trusted yet (see `Config::detect_clock_jumps`); or its answers came too late for that
    /// check; or the node has not been read since this runtime began to lock, which tells
    /// whether the machines using it list as many nodes (README, "Safety" 11).
    Unverified,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.cause)
    }
}

/// Why a lease was lost before its holder was done with it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// Renewal could not reach a quorum of nodes before the lease ran out.
    NoQuorum,
    /// A majority of nodes no longer holds our token: the key expired there, or another holder
    /// has it now.
    TakenOver,
    /// The body ran longer than `max_hold`.
    MaxHold,
    /// The lease's validity ran out before an extension moved it: renewal is off, or came too
    /// late (a body that blocked the thread before renewal began, a paused process).
    Expired,
    /// The runtime was shut down ([`Runtime::shutdown`](crate::Runtime::shutdown)), which
    /// released the lock.
    Shutdown,
    /// A Redis node's clock stepped forward, so our key may have expired early there, and
    /// renewal, run at once, could not confirm the lease on a quorum of the other nodes, or
    /// nothing renews the lease to confirm it (see `Config::detect_clock_jumps`).
    ClockJumped,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::NoQuorum => "renewing it could not reach a quorum of Redis nodes",
            LostReason::TakenOver => "a majority of Redis nodes no longer holds it",
            LostReason::MaxHold => "the body ran longer than `max_hold`",
            LostReason::Expired => {
                "its validity ran out before it was extended (renewal off, or too late)"
            }
            LostReason::Shutdown => "the runtime was shut down",
            LostReason::ClockJumped => {
                "a Redis node's clock stepped forward, and a quorum of the other nodes did not \
                 confirm it (or nothing renews it to ask them)"
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_quorum_names_every_failed_node() {
        let err = NoQuorum {
            key: "singleton:daily-email".into(),
            nodes: 3,
            answered: 1,
            needed: 2,
            failures: vec![
                NodeFailure {
                    node: "redis://10.0.0.2:6379".into(),
                    cause: "connection refused".into(),
                    kind: FailureKind::Unreachable,
                },
                NodeFailure {
                    node: "redis://:***@10.0.0.3:6379".into(),
                    cause: "timed out after 250ms".into(),
                    kind: FailureKind::Timeout,
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "no quorum for `singleton:daily-email`: 1 of 3 Redis nodes answered, 2 needed \
             (redis://10.0.0.2:6379: connection refused; redis://:***@10.0.0.3:6379: timed out after 250ms); \
             check that a majority of the nodes is up and reachable",
        );
        assert!(matches!(err.into_error(), Error::NoQuorum(_)));
    }

    #[test]
    fn refusals_that_decide_are_not_an_outage() {
        let refused = |node: &str| NodeFailure {
            node: node.into(),
            cause: "NoPerm: this user has no permissions to run the 'set' command".into(),
            kind: FailureKind::Refused,
        };
        let err = NoQuorum {
            key: "singleton:lock:job".into(),
            nodes: 3,
            answered: 1,
            needed: 2,
            failures: vec![refused("redis://a"), refused("redis://b")],
        }
        .into_error();
        let message = err.to_string();
        assert!(matches!(err, Error::Refused(_)), "{message}");
        assert!(
            message.contains("2 of 3 nodes answered with an error"),
            "{message}"
        );
        assert!(message.contains("not an outage"), "{message}");
    }
}
