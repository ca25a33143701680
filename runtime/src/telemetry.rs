//! What the runtime tells the outside: a `tracing` span per call and, behind the `metrics`
//! feature, counters and histograms through the `metrics` facade.
//!
//! The facade's crate docs ("Observability") list the span's fields and the metrics.

use std::time::Duration;

use crate::{Error, Outcome, Skip};

/// The name of a call's outcome, as the span's `outcome` field and the metrics' labels say it.
pub(crate) fn outcome_name<T>(result: &Result<Outcome<T>, Error>) -> &'static str {
    match result {
        Ok(Outcome::Ran(_)) => "ran",
        Ok(Outcome::Skipped(Skip::Busy)) => "busy",
        Ok(Outcome::Skipped(Skip::AlreadyDone { .. })) => "already_done",
        Ok(Outcome::Skipped(Skip::SplitVote { .. })) => "split_vote",
        // `Skip` is non-exhaustive only to its users.
        #[allow(unreachable_patterns)]
        Ok(Outcome::Skipped(_)) => "skipped",
        Err(err) => error_kind(err),
    }
}

/// A short, stable name for each kind of error.
pub(crate) fn error_kind(err: &Error) -> &'static str {
    match err {
        Error::NotInitialised => "not_initialised",
        Error::AlreadyInitialised => "already_initialised",
        Error::InvalidConfig(_) => "invalid_config",
        Error::NoQuorum(_) => "no_quorum",
        Error::Refused(_) => "refused",
        Error::ShutDown => "shut_down",
        Error::Expired { .. } => "expired",
        Error::LeaseLost { .. } => "lease_lost",
        Error::Internal(_) => "internal",
    }
}

/// A lock attempt ended: taken or not, after `took`.
pub(crate) fn attempted(key: &str, took: Duration, acquired: bool) {
    #[cfg(feature = "metrics")]
    {
        let key = key.to_owned();
        metrics::histogram!("cluster_singleton_acquire_seconds", "key" => key.clone())
            .record(took.as_secs_f64());
        if acquired {
            metrics::counter!("cluster_singleton_acquired_total", "key" => key).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (key, took, acquired);
}

/// A call ended with `outcome` (see [`outcome_name`]).
pub(crate) fn finished(key: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let key = key.to_owned();
        match outcome {
            "ran" => {}
            "busy" | "already_done" | "split_vote" => {
                metrics::counter!("cluster_singleton_skipped_total", "key" => key, "reason" => outcome).increment(1);
            }
            kind => {
                if kind == "lease_lost" {
                    metrics::counter!("cluster_singleton_leases_lost_total", "key" => key.clone())
                        .increment(1);
                }
                metrics::counter!("cluster_singleton_errors_total", "key" => key, "kind" => kind)
                    .increment(1);
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (key, outcome);
}

/// A lock was given back after being held for `held`; `reached_quorum` is false when too few
/// nodes confirmed it.
pub(crate) fn released(key: &str, held: Duration, reached_quorum: bool) {
    #[cfg(feature = "metrics")]
    {
        let key = key.to_owned();
        metrics::histogram!("cluster_singleton_hold_seconds", "key" => key.clone())
            .record(held.as_secs_f64());
        if !reached_quorum {
            metrics::counter!("cluster_singleton_releases_failed_total", "key" => key).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (key, held, reached_quorum);
}

/// A node's clock was seen to step, `direction` "forward" or "back" (see
/// `Config::detect_clock_jumps`).
pub(crate) fn clock_jumped(node: &str, direction: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cluster_singleton_clock_jumps_total", "node" => node.to_owned(), "direction" => direction)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (node, direction);
}
