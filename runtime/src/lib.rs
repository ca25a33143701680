//! The Redlock engine behind [`cluster-singleton`](https://docs.rs/cluster-singleton).
//!
//! Use it through the `cluster-singleton` crate, which re-exports everything here together with
//! the `#[singleton]` attribute. This crate's version is pinned exactly by the facade.

// On docs.rs (which builds with every feature and `--cfg docsrs`, see Cargo.toml), items behind
// a feature say which.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backlog;
mod checks;
mod claim;
mod clock;
mod config;
#[cfg(feature = "cron")]
#[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
pub mod cron;
mod driver;
mod error;
mod inspect;
mod keys;
mod leader;
mod lease;
mod node;
mod nodes;
mod options;
mod outcome;
mod random;
mod redlock;
mod round;
mod run;
mod runtime;
mod slot;
mod telemetry;
#[cfg(feature = "tls")]
mod tls;

#[doc(hidden)]
pub mod __private;

pub use config::{
    Config, DEFAULT_CLOCK_DRIFT_FACTOR, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_TTL, DEFAULT_NODE_TIMEOUT,
};
pub use error::{Error, FailureKind, LostReason, NoQuorum, NodeFailure};
pub use inspect::{LockCopy, LockState, NodeHealth};
pub use leader::{campaign, LeaderEvent, Leadership};
pub use lease::{lease, Lease, LeaseInfo};
pub use options::{OnLost, Options};
pub use outcome::{Outcome, Skip};
pub use runtime::{init, lock, shutdown, Runtime};
pub use telemetry::KeyLabel;
