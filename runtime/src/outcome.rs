//! What a `#[singleton]` call did: ran its body, or skipped it and why.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a `#[singleton]` function did when it was called.
///
/// `Ran` carries the body's own return value; `Skipped` says why the body did not run. Failing to
/// reach Redis is neither: it is an [`Error`](crate::Error), so an outage is never mistaken for
/// "another machine is doing it".
///
/// ```
/// use cluster_singleton::{Outcome, Skip};
///
/// fn report(outcome: Outcome<usize>) -> String {
///     match outcome {
///         Outcome::Ran(sent) => format!("sent {sent} emails"),
///         Outcome::Skipped(why) => format!("skipped: {why}"),
///     }
/// }
/// assert_eq!(report(Outcome::Ran(3)), "sent 3 emails");
/// assert_eq!(report(Outcome::Skipped(Skip::Busy)), "skipped: another holder has the lock");
/// ```
#[must_use = "a skipped call did not run its body; match on the outcome to tell"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome<T> {
    /// The body ran while this call held the lock; this is its return value.
    Ran(T),
    /// The body did not run.
    Skipped(Skip),
}

impl<T> Outcome<T> {
    /// Whether the body ran.
    ///
    /// ```
    /// # use cluster_singleton::{Outcome, Skip};
    /// assert!(Outcome::Ran(()).ran());
    /// assert!(!Outcome::<()>::Skipped(Skip::Busy).ran());
    /// ```
    pub fn ran(&self) -> bool {
        matches!(self, Outcome::Ran(_))
    }

    /// The body's value if it ran, `None` if it was skipped.
    ///
    /// ```
    /// # use cluster_singleton::{Outcome, Skip};
    /// assert_eq!(Outcome::Ran(7).ran_value(), Some(7));
    /// assert_eq!(Outcome::<i32>::Skipped(Skip::Busy).ran_value(), None);
    /// ```
    pub fn ran_value(self) -> Option<T> {
        match self {
            Outcome::Ran(value) => Some(value),
            Outcome::Skipped(_) => None,
        }
    }

    /// Why the body was skipped, `None` if it ran.
    ///
    /// ```
    /// # use cluster_singleton::{Outcome, Skip};
    /// assert_eq!(Outcome::<()>::Skipped(Skip::Busy).skipped(), Some(Skip::Busy));
    /// assert_eq!(Outcome::Ran(()).skipped(), None);
    /// ```
    pub fn skipped(&self) -> Option<Skip> {
        match self {
            Outcome::Ran(_) => None,
            Outcome::Skipped(why) => Some(*why),
        }
    }

    /// Maps the body's value, keeping a skip as it is.
    ///
    /// ```
    /// # use cluster_singleton::Outcome;
    /// assert_eq!(Outcome::Ran(2).map(|n| n * 10), Outcome::Ran(20));
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ran(value) => Outcome::Ran(f(value)),
            Outcome::Skipped(why) => Outcome::Skipped(why),
        }
    }
}

/// Why a `#[singleton]` call skipped its body.
///
/// ```
/// use cluster_singleton::Skip;
/// assert_eq!(Skip::Busy.to_string(), "another holder has the lock");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Another call, on this machine or another, holds the lock: a quorum of Redis nodes answered
    /// and too few of them let this call take it.
    Busy,
    /// With `slot`: a run in the current period already succeeded, on this machine or another.
    AlreadyDone {
        /// When the current period began (periods are aligned to the Unix epoch, in UTC).
        period_start: SystemTime,
    },
    /// Callers that started at the same instant split the nodes' votes among them, each winning
    /// some but none a quorum, on every one of this many attempts (each given back before the
    /// next). Nobody may have run the job: alert on it if it happens often, or give the calls a
    /// `wait`.
    SplitVote {
        /// How many attempts were made.
        attempts: usize,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Busy => f.write_str("another holder has the lock"),
            Skip::AlreadyDone { period_start } => {
                let since = period_start.duration_since(UNIX_EPOCH).unwrap_or_default();
                write!(
                    f,
                    "already done in the period that began {}s after the Unix epoch",
                    since.as_secs()
                )
            }
            Skip::SplitVote { attempts } => write!(
                f,
                "the vote split among simultaneous callers on all {attempts} attempts; \
                 possibly nobody ran the job"
            ),
        }
    }
}
