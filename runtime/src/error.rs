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
/// use cluster_singleton_runtime::Error;
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
    #[error(transparent)]
    NoQuorum(#[from] NoQuorum),

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
        reason: crate::LostReason,
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
/// Its message names every failed node and why, for example:
///
/// ```text
/// no quorum for `singleton:daily-email`: 1 of 3 Redis nodes answered, 2 needed
/// (redis://10.0.0.2:6379: connection refused; redis://10.0.0.3:6379: timed out after 250ms);
/// check that a majority of the nodes is up and reachable
/// ```
///
/// ```
/// use cluster_singleton_runtime::Error;
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

impl fmt::Display for NoQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no quorum for `{}`: {} of {} Redis nodes answered, {} needed (",
            self.key, self.answered, self.nodes, self.needed
        )?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        f.write_str("); check that a majority of the nodes is up and reachable")
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
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.cause)
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
                },
                NodeFailure {
                    node: "redis://:***@10.0.0.3:6379".into(),
                    cause: "timed out after 250ms".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "no quorum for `singleton:daily-email`: 1 of 3 Redis nodes answered, 2 needed \
             (redis://10.0.0.2:6379: connection refused; redis://:***@10.0.0.3:6379: timed out after 250ms); \
             check that a majority of the nodes is up and reachable",
        );
    }
}
