//! Real `redis-server` nodes on loopback ports, for tests, examples and
//! benchmarks of `cluster-singleton`.
//!
//! A Redlock lock is only as good as its behaviour when nodes die, stall or
//! come back empty, and a mock cannot show that. This crate starts real
//! `redis-server` processes, each on a free `127.0.0.1` port in its own
//! temporary directory, with persistence off, and lets a test kill, freeze,
//! resume and restart them one by one. Everything it starts is stopped when the
//! [`Cluster`] is dropped, and even if the test process itself is killed.
//!
//! `redis-server` is taken from `PATH`, or from the path in the environment
//! variable `CLUSTER_SINGLETON_REDIS_SERVER` (see [`REDIS_SERVER_ENV`]). Each
//! node runs with `--bind 127.0.0.1 --save "" --appendonly no` and its own
//! `--dir` and `--logfile` (see [`Cluster::log`]).
//!
//! # No orphans
//!
//! Nodes are stopped by pid, never by name: [`Cluster`]'s `Drop` sends
//! `SIGKILL` to each process it started and reaps it. Should the test process
//! die without running `Drop` (a panic with `panic = "abort"`, a `SIGKILL`, a
//! `Cluster` kept in a `static`), the kernel kills the nodes too, because each
//! is started with `PR_SET_PDEATHSIG`. Linux only.
//!
//! # Example
//!
//! ```no_run
//! use cluster_singleton_testkit::Cluster;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Three independent Redis nodes, as Redlock wants.
//! let mut cluster = Cluster::start(3)?;
//! let urls: Vec<String> = cluster.urls(); // hand these to the code under test
//! assert_eq!(urls.len(), 3);
//!
//! // Check what the code under test left behind.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("SET").arg("k").arg("v").exec(&mut con)?;
//!
//! // Make node 1 unresponsive (SIGSTOP), then bring it back.
//! cluster.freeze(1)?;
//! cluster.resume(1)?;
//!
//! // Node 2 crashes and comes back without its data.
//! cluster.restart(2)?;
//! # Ok(())
//! # }
//! // Dropping `cluster` kills all three processes and removes their directories.
//! ```
//!
//! # TLS
//!
//! With the `tls` feature, `ClusterBuilder::tls` starts nodes that speak
//! only TLS (`--port 0 --tls-port PORT`), with a CA and a server certificate
//! for `127.0.0.1` made afresh for each cluster: nothing is checked in. The
//! URLs are then `rediss://127.0.0.1:PORT`, and clients must trust
//! `Cluster::tls_ca_pem`. `unrelated_ca_pem` gives a CA that signed
//! nothing, for tests of a client that trusts the wrong one.
//! `ClusterBuilder::tls_auth_clients` makes the nodes require client
//! certificates signed by the cluster's CA (mutual TLS), such as
//! `Cluster::tls_client_certificate`; `unrelated_client_certificate` gives
//! one that another CA signed. (All of these exist only with the feature.)
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cluster_singleton_testkit::Cluster;
//!
//! let cluster = Cluster::builder().nodes(3).tls(true).start()?;
//! assert!(cluster.url(0).starts_with("rediss://127.0.0.1:"));
//! let ca_pem: &str = cluster.tls_ca_pem(); // hand this to the code under test
//!
//! // The test's own connections trust it already.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("PING").exec(&mut con)?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "tls"))]
//! # fn main() {}
//! ```
//!
//! # Network faults
//!
//! A node can also be cut off, slowed down or disconnected while it keeps
//! running, through a [`Proxy`] in front of it. With
//! [`ClusterBuilder::proxied`], every node gets one: [`Cluster::url`] then
//! points at the proxy, which is what the code under test should use, while
//! [`Cluster::direct_url`] and [`Cluster::connection`] go straight to the
//! node, for checks that must work during a partition.
//!
//! ```no_run
//! use std::time::Duration;
//! use cluster_singleton_testkit::Cluster;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::builder().nodes(3).proxied(true).start()?;
//! let urls = cluster.urls(); // through the proxies
//!
//! cluster.proxy(0).partition(); // node 0 is unreachable: timeouts, not errors
//! cluster.proxy(0).heal();
//! cluster.proxy(1).set_latency(Duration::from_millis(80));
//! cluster.proxy(2).reset(); // every connection to node 2 is dropped at once
//!
//! // Checks bypass the proxies.
//! let mut con = cluster.connection(0)?;
//! redis::cmd("PING").exec(&mut con)?;
//! # Ok(())
//! # }
//! ```

// On docs.rs (every feature, `--cfg docsrs`; see Cargo.toml), the items that need `tls` say so.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod clock;
mod cluster;
mod error;
mod faults;
mod launch;
mod process;
mod proxy;
mod resp;
#[cfg(feature = "tls")]
mod tls;

pub use builder::ClusterBuilder;
pub use clock::{FAKETIME_REDIS_SERVER_ENV, LIBFAKETIME_ENV};
pub use cluster::Cluster;
pub use error::Error;
pub use launch::REDIS_SERVER_ENV;
pub use proxy::Proxy;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{unrelated_ca_pem, unrelated_client_certificate, ClientCertificate};
