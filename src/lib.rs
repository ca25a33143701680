//! Run a job on only one machine of a fleet at a time.
//!
//! Put `#[singleton]` on an `async fn`; every call first takes a lock in Redis (Redlock: a
//! majority of independent nodes), runs the body only when it got it, and releases it when the
//! body is done:
//!
//! ```no_run
//! use cluster_singleton::{singleton, Outcome};
//!
//! #[singleton(key = "daily-email", ttl = "10m")]
//! async fn send_daily_email() -> Result<usize, std::io::Error> {
//!     Ok(42) // send the emails
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
//!     match send_daily_email().await? {
//!         Outcome::Ran(sent) => println!("sent {}", sent?),
//!         Outcome::Skipped(why) => println!("skipped: {why}"),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The promises:
//!
//! 1. **Mutual exclusion**: while one call's body runs under the lock, no other call with the
//!    same key, on any machine, runs its body.
//! 2. **No deadlock**: a holder that crashes, is killed or is cut off blocks the key for at most
//!    its `ttl`; a body that panics or a call that is cancelled releases the lock at once.
//! 3. **Fault tolerance**: with N independent Redis nodes, locking works while a majority of them
//!    is up; with fewer, calls fail fast with [`Error::NoQuorum`] instead of hanging, and never
//!    run the body unprotected or pretend another machine has the lock.
//!
//! See the [`singleton`] attribute for its arguments and the code it expands to, [`runtime`] for
//! set-up, and the README for deployment notes.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `cron` | off | `cron::Schedule`: cron expressions that fire `#[singleton]` jobs, each tick run once in the fleet |
//! | `metrics` | off | counters, histograms and gauges through the [`metrics`](https://docs.rs/metrics) facade (below) |
//! | `tls` | off | `rediss://` URLs through rustls; `runtime::Config::tls_root_certificate` for a private CA, `runtime::Config::tls_client_certificate` for mutual TLS |
//!
//! # Observability
//!
//! Every `#[singleton]` call (and every [`runtime::Runtime::run_with`]) runs inside a `tracing`
//! span named `singleton`, with the fields `key`, `nodes`, `granted`, `busy` and `failed` (the
//! votes), `validity_ms` (what was left of the ttl when the lock was taken), `held_ms` (how long
//! the body held it), `outcome` (`ran`, `busy`, `already_done`, or the kind of error:
//! `no_quorum`, `lease_lost`, ...) and `elapsed_ms`; the body's own spans and events nest under
//! it. Each call ends with one event: `info` when the body ran, `debug` when it was skipped,
//! `warn` when the nodes could not decide or the lease was lost, `error` only for a program that
//! is wrong (a bad setting, no `init`). A release or a done marker that reached too few nodes,
//! and a node that cannot be reached at start-up, are `warn` events too; each node without a
//! vote, or that failed a release, is a `debug` event naming the node (password hidden).
//!
//! With the `metrics` feature, every metric is described, with its unit, to the recorder that is
//! installed when the first runtime is built (`# HELP` lines in a Prometheus scrape): **install
//! the recorder (your exporter) before `runtime::init`** or `Config::build`, or the metrics reach
//! it without descriptions. The units are in the names already (`_seconds`, `_total`), so an
//! exporter that adds unit suffixes (Prometheus's recommended naming) adds nothing.
//!
//! Per call, labelled with `key`:
//!
//! | name | kind | extra labels | counts |
//! | --- | --- | --- | --- |
//! | `cluster_singleton_acquired_total` | counter | | locks taken |
//! | `cluster_singleton_skipped_total` | counter | `reason`: `busy`, `already_done`, `split_vote` | calls that did not run their body |
//! | `cluster_singleton_errors_total` | counter | `kind`: `no_quorum`, `lease_lost`, ... | calls that failed |
//! | `cluster_singleton_leases_lost_total` | counter | | leases lost while a body ran |
//! | `cluster_singleton_releases_failed_total` | counter | | releases that reached too few nodes |
//! | `cluster_singleton_acquire_seconds` | histogram | | time to take the lock, granted or not |
//! | `cluster_singleton_hold_seconds` | histogram | | from taking the lock to releasing it |
//!
//! Per Redis node, labelled with `node`, its URL with the password hidden
//! (`redis://:***@10.0.0.1:6379`):
//!
//! | name | kind | extra labels | counts |
//! | --- | --- | --- | --- |
//! | `cluster_singleton_node_votes_refused_total` | counter | `reason`: `young` (inside its restart grace), `lost_data`, `clock_jumped`, `clock_unverified`, `started_in_period`, `node_lists_differ` (machines using the node lock on different numbers of nodes), `node_lists_unread` (not read yet since this runtime began to lock), `refused` (ACL, password), `unreachable` | answers of the node that did not count: votes, and its part of renewals, releases and done markers |
//! | `cluster_singleton_node_timeouts_total` | counter | | commands the node did not answer within the node timeout |
//! | `cluster_singleton_node_reconnects_total` | counter | | connections given up for a new one (broken, or silent on the once-a-second check) |
//! | `cluster_singleton_clock_jumps_total` | counter | `direction`: `forward`, `back`, `ahead` | steps of the node's clock (see `runtime::Config::detect_clock_jumps`) |
//! | `cluster_singleton_node_in_grace` | gauge | | 1 while the node's vote does not count yet because of its restart grace, else 0 (also 0 for a node that is down) |
//! | `cluster_singleton_node_grace_remaining_seconds` | gauge | | how long until its vote counts again, 0 when it counts |
//!
//! The gauges are set by the runtime's once-a-second check of every node; the per-node counters,
//! as the calls meet the failures (a node nobody sends a command to counts nothing).
//!
//! **Cardinality.** A key with `{param}` placeholders, `key = "invoice:{customer_id}"`, makes
//! one series per value by default: per customer here, which the metrics backend pays for in
//! memory. `runtime::Config::metrics_key_label(runtime::KeyLabel::Template)` labels such calls
//! with the key as written instead, `key="invoice:{customer_id}"`: one series for all of them,
//! which no longer tells the customers apart (the `tracing` span still names the key). Keys
//! without placeholders are labelled the same either way; `runtime::Runtime::run_with` callers
//! give a template with `runtime::Options::key_template`. The `node` label has one value per
//! node.
//!
//! ```no_run
//! use cluster_singleton::runtime::{Config, KeyLabel};
//!
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! // First the recorder (here `metrics-exporter-prometheus`'s, which serves `/metrics`), then
//! // the runtime, which describes its metrics to it.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! Config::new(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
//!     .metrics_key_label(KeyLabel::Template)
//!     .init()
//!     .await?;
//! # Ok(())
//! # }
//! ```

// On docs.rs (every feature, `--cfg docsrs`; see Cargo.toml), the items that need a feature,
// re-exported ones included, say which.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use cluster_singleton_macros::singleton;
pub use cluster_singleton_runtime::{
    lease, Error, FailureKind, Lease, LeaseInfo, LostReason, NoQuorum, NodeFailure, Outcome, Skip,
};

/// Setting up the Redis nodes: [`init`](runtime::init) once at start-up, or a
/// [`Config`](runtime::Config) for other settings, or a [`Runtime`](runtime::Runtime) scoped to
/// a future.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn start() -> Result<(), cluster_singleton::Error> {
/// cluster_singleton::runtime::Config::new(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
///     .node_timeout(Duration::from_millis(100))
///     .init()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub mod runtime {
    pub use cluster_singleton_runtime::{
        campaign, init, lock, shutdown, Config, KeyLabel, LeaderEvent, Leadership, LockCopy,
        LockState, NodeHealth, OnLost, Options, Runtime, DEFAULT_CLOCK_DRIFT_FACTOR,
        DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_TTL, DEFAULT_NODE_TIMEOUT,
    };
}

#[cfg(feature = "cron")]
#[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
pub use cluster_singleton_runtime::cron;

/// What the code generated by `#[singleton]` uses. Not a public API: it may change in any
/// release, and only the generated code may name it.
#[doc(hidden)]
pub mod __private {
    pub use cluster_singleton_runtime::__private::*;
}

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The attribute's documentation lives in the macro crate, which cannot name this facade in its
/// examples; they are compiled here instead (only under `cfg(doctest)`, so the path outside this
/// package does not matter when it is packaged).
#[cfg(doctest)]
#[doc = include_str!("../macros/src/singleton.md")]
pub struct SingletonDoctests;
