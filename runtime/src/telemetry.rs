//! What the runtime tells the outside: a `tracing` span per call and, behind the `metrics`
//! feature, counters, histograms and gauges through the `metrics` facade.
//!
//! The facade's crate docs ("Observability") list the span's fields and the metrics; every
//! metric is also described here, in [`describe`], with its unit, for exporters that show them
//! (Prometheus's `# HELP`).
//!
//! Every function is a one-line call for the code that reports, and costs nothing without the
//! feature.

use std::time::Duration;

use crate::{Error, Options, Outcome, Skip};

/// What the `key` label of the metrics holds: the key itself, or its template (see
/// [`Config::metrics_key_label`](crate::Config::metrics_key_label)). Only matters with the
/// `metrics` feature.
///
/// ```
/// use cluster_singleton::runtime::{Config, KeyLabel};
///
/// // `key = "invoice:{customer_id}"` is one series, labelled `key="invoice:{customer_id}"`.
/// let config = Config::new(["redis://127.0.0.1"]).metrics_key_label(KeyLabel::Template);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyLabel {
    /// The key as locked, placeholders filled in: `key="invoice:42"`. One series per value, so
    /// per customer for `key = "invoice:{customer_id}"`; the default, and right for keys without
    /// placeholders or with few values.
    #[default]
    Key,
    /// The key as written in `#[singleton(key = "...")]`, placeholders and all:
    /// `key="invoice:{customer_id}"`, one series for every value. A call without a template
    /// (a key without placeholders, or `Runtime::run_with` without
    /// [`Options::key_template`]) is labelled with its key.
    Template,
}

/// Describes every metric, with its unit, to the recorder installed now: once per process, when
/// the first runtime is built. The recorder must therefore be installed before `init` (or
/// `Config::build`): descriptions given to no recorder are lost, and the metrics then reach a
/// later one undescribed.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        static DESCRIBED: std::sync::Once = std::sync::Once::new();
        DESCRIBED.call_once(describe_every_metric);
    }
}

#[cfg(feature = "metrics")]
fn describe_every_metric() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

    describe_counter!(
        "cluster_singleton_acquired_total",
        Unit::Count,
        "Locks taken by calls of a key (label `key`)"
    );
    describe_counter!(
        "cluster_singleton_skipped_total",
        Unit::Count,
        "Calls that did not run their body, by `reason`: `busy` (another holder has the lock), \
         `already_done` (the period's run is done), `split_vote` (simultaneous callers split the \
         nodes)"
    );
    describe_counter!(
        "cluster_singleton_errors_total",
        Unit::Count,
        "Calls that failed, by `kind`: `no_quorum` (too few nodes answered), `lease_lost`, \
         `expired`, `refused`, `invalid_config`, `shut_down`, ..."
    );
    describe_counter!(
        "cluster_singleton_leases_lost_total",
        Unit::Count,
        "Leases lost while their body ran (also counted in errors_total as `lease_lost`)"
    );
    describe_counter!(
        "cluster_singleton_releases_failed_total",
        Unit::Count,
        "Releases that reached too few nodes: the key stays blocked until its ttl"
    );
    describe_histogram!(
        "cluster_singleton_acquire_seconds",
        Unit::Seconds,
        "Time to take the lock, granted or not, retries under `wait` included"
    );
    describe_histogram!(
        "cluster_singleton_hold_seconds",
        Unit::Seconds,
        "Time from taking the lock to releasing it, for calls whose body ran"
    );
    describe_counter!(
        "cluster_singleton_clock_jumps_total",
        Unit::Count,
        "Steps of a Redis node's clock, by `direction`: `forward`, `ahead` and `unknown` (the \
         node's votes wait out the restart grace), `back` (keys live longer than asked)"
    );
    describe_counter!(
        "cluster_singleton_node_votes_refused_total",
        Unit::Count,
        "Answers of a Redis node that did not count (a vote, or its part of a renewal, release \
         or done marker), by `reason`: `young` (inside its restart grace), `lost_data`, \
         `clock_jumped`, `clock_unverified`, `started_in_period`, `node_lists_differ` (machines \
         using the node lock on different numbers of nodes), `node_lists_unread` (not read yet \
         since this runtime began to lock), `refused` (the server refused the \
         command: ACL, password), `unreachable`; timeouts are counted apart"
    );
    describe_counter!(
        "cluster_singleton_node_timeouts_total",
        Unit::Count,
        "Commands a Redis node did not answer within the node timeout"
    );
    describe_counter!(
        "cluster_singleton_node_reconnects_total",
        Unit::Count,
        "Connections to a Redis node given up for a new one: broken (an I/O error, closed by \
         a restart) or silent on the once-a-second check while a new connection answered"
    );
    describe_gauge!(
        "cluster_singleton_node_in_grace",
        Unit::Count,
        "1 while a Redis node's vote does not count yet because it restarted, lost its data or \
         stepped its clock within the restart grace, else 0 (updated every second)"
    );
    describe_gauge!(
        "cluster_singleton_node_grace_remaining_seconds",
        Unit::Seconds,
        "Time until a Redis node's vote counts again after a restart, 0 when it counts \
         (updated every second)"
    );
}

/// The `key` label of a call's metrics under `label` (see [`KeyLabel`]).
pub(crate) fn key_label<'a>(label: KeyLabel, key: &'a str, options: &Options) -> &'a str {
    match (label, options.key_template) {
        (KeyLabel::Template, Some(template)) => template,
        _ => key,
    }
}

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

/// A node's clock was seen to step, `direction` "forward", "back", "ahead" (of the other nodes'
/// clocks) or "unknown" (forward or back: a reading handled out of order; see
/// `Config::detect_clock_jumps`).
pub(crate) fn clock_jumped(node: &str, direction: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cluster_singleton_clock_jumps_total", "node" => node.to_owned(), "direction" => direction)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (node, direction);
}

/// A node gave no usable answer, counted as `counted` says (see `NodeError::counted_as`):
/// `Some("timeout")` in the node's timeouts, another reason in its refused votes, `None` not at
/// all.
pub(crate) fn node_failed(node: &str, counted: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    match counted {
        Some("timeout") => {
            metrics::counter!("cluster_singleton_node_timeouts_total", "node" => node.to_owned())
                .increment(1);
        }
        Some(reason) => {
            metrics::counter!("cluster_singleton_node_votes_refused_total", "node" => node.to_owned(), "reason" => reason)
                .increment(1);
        }
        None => {}
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (node, counted);
}

/// A node's connection is given up for a new one: it broke, or it went silent while a new one
/// answers. (A connection opened again because the runtime that drove it shut down is not
/// counted: nothing was wrong with the node.)
pub(crate) fn node_reconnecting(node: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cluster_singleton_node_reconnects_total", "node" => node.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = node;
}

/// Sets a node's grace gauges: whether its vote waits for its restart grace, and how long
/// still (`left`). A node without an open connection is not in grace as far as these say (its
/// votes are missing for another reason, which `node_votes_refused_total` counts).
pub(crate) fn node_grace(node: &str, left: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("cluster_singleton_node_in_grace", "node" => node.to_owned())
            .set(if left.is_zero() { 0.0 } else { 1.0 });
        metrics::gauge!("cluster_singleton_node_grace_remaining_seconds", "node" => node.to_owned())
            .set(left.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (node, left);
}
