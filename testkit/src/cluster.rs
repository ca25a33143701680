//! [`Cluster`]: its nodes, their URLs, ports and pids, connections to them and
//! their logs, and stopping everything on drop. The faults it can inject are in
//! `faults.rs`, the launch of one node in `launch.rs`.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::launch::{percent_encode, read_lossy, Node};
use crate::{clock, ClusterBuilder, Error, Proxy};
#[cfg(feature = "tls")]
use crate::{tls, ClientCertificate};

/// Connect timeout of [`Cluster::connection`], so asking for a connection to a
/// frozen node fails instead of hanging the test.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Several independent `redis-server` processes ("nodes") on loopback ports.
///
/// Node `i` keeps its port for the life of the `Cluster`, across
/// [`kill`](Cluster::kill), [`start_node`](Cluster::start_node) and
/// [`restart`](Cluster::restart), so URLs handed to the code under test stay
/// valid.
///
/// Dropping the `Cluster` kills every process it started (frozen ones too),
/// reaps them and removes their temporary directories. A `Cluster` kept in a
/// `static` is never dropped: its processes still die with the test process
/// (see [the crate docs](crate#no-orphans)), but its temporary directories
/// stay behind.
///
/// # Panics
///
/// Every method that takes a node index `i` panics if `i >= self.len()`.
///
/// # Example
///
/// ```no_run
/// use cluster_singleton_testkit::Cluster;
///
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// let mut cluster = Cluster::builder().nodes(5).password("s3cret").start()?;
/// assert_eq!(cluster.len(), 5);
/// cluster.kill(4)?;
/// assert_eq!(cluster.pid(4), None);
/// cluster.start_node(4)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Cluster {
    pub(crate) program: PathBuf,
    pub(crate) password: Option<String>,
    pub(crate) args: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    /// How nodes are run when their clocks can be stepped.
    pub(crate) faketime: Option<clock::Faketime>,
    /// One per node when the cluster is proxied, else empty.
    pub(crate) proxies: Vec<Proxy>,
    /// The nodes' certificates, when they speak TLS (boxed: they would double the size of
    /// every `Cluster`, TLS or not).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Box<tls::Certificates>>,
}

impl Cluster {
    /// Starts `nodes` nodes; the same as `Cluster::builder().nodes(nodes).start()`.
    ///
    /// # Errors
    ///
    /// See [`ClusterBuilder::start`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(nodes: usize) -> Result<Cluster, Error> {
        Cluster::builder().nodes(nodes).start()
    }

    /// Returns a builder for a cluster with options (password, extra
    /// arguments).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(2).start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Returns the number of nodes, running or not.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert_eq!(cluster_singleton_testkit::Cluster::start(3)?.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Returns whether the cluster has no nodes at all.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(cluster_singleton_testkit::Cluster::start(0)?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Returns node `i`'s URL: `redis://127.0.0.1:PORT`, or
    /// `redis://:PASSWORD@127.0.0.1:PORT` when a password is set (with the
    /// password percent-encoded). In a [proxied](ClusterBuilder::proxied)
    /// cluster, `PORT` is that of the node's [`Proxy`]; the node's own is in
    /// [`direct_url`](Cluster::direct_url).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert_eq!(cluster.url(0), format!("redis://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self, i: usize) -> String {
        match self.proxies.get(i) {
            Some(proxy) => self.url_for_port(proxy.port()),
            None => self.url_for_port(self.node(i).port),
        }
    }

    /// Returns node `i`'s own URL, which bypasses its [`Proxy`] in a
    /// [proxied](ClusterBuilder::proxied) cluster: for checks that must see
    /// the node while its proxy is partitioned or slow. The same as
    /// [`url`](Cluster::url) when the cluster is not proxied.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().proxied(true).start()?;
    /// assert_ne!(cluster.url(0), cluster.direct_url(0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn direct_url(&self, i: usize) -> String {
        self.url_for_port(self.node(i).port)
    }

    /// Returns the [`Proxy`] in front of node `i`, to partition, delay or
    /// reset its traffic.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`, or if the cluster was not built with
    /// [`proxied(true)`](ClusterBuilder::proxied).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).proxied(true).start()?;
    /// cluster.proxy(2).partition();
    /// // ... the code under test now sees node 2 time out ...
    /// cluster.proxy(2).heal();
    /// # Ok(())
    /// # }
    /// ```
    pub fn proxy(&self, i: usize) -> &Proxy {
        let len = self.nodes.len();
        if i >= len {
            out_of_range(i, len);
        }
        self.proxies.get(i).unwrap_or_else(|| {
            panic!(
                "node {i} has no proxy: build the cluster with `Cluster::builder().proxied(true)`"
            )
        })
    }

    /// Returns whether every node has a [`Proxy`] in front of it (see
    /// [`ClusterBuilder::proxied`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(!cluster_singleton_testkit::Cluster::start(1)?.is_proxied());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_proxied(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Returns whether the nodes speak TLS (see `ClusterBuilder::tls`;
    /// always `false` without the `tls` feature).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// assert!(!cluster_singleton_testkit::Cluster::start(1)?.is_tls());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_tls(&self) -> bool {
        self.ca_pem().is_some()
    }

    /// Returns the PEM of the CA that signed the nodes' certificates: what a
    /// client of the `rediss://` URLs must trust. Made afresh for each
    /// cluster. Only with the `tls` feature.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`tls(true)`](ClusterBuilder::tls).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls(true).start()?;
    /// assert!(cluster.tls_ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_pem(&self) -> &str {
        self.ca_pem().unwrap_or_else(|| {
            panic!("this cluster does not use TLS: build it with `Cluster::builder().tls(true)`")
        })
    }

    /// Returns a client certificate (and its key) that the cluster's CA
    /// signed: what a client of nodes built with
    /// [`tls_auth_clients(true)`](ClusterBuilder::tls_auth_clients) must show.
    /// Made afresh for each TLS cluster. Only with the `tls` feature.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`tls(true)`](ClusterBuilder::tls)
    /// or `tls_auth_clients(true)`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls_auth_clients(true).start()?;
    /// let client = cluster.tls_client_certificate();
    /// assert!(client.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_certificate(&self) -> &ClientCertificate {
        match &self.tls {
            Some(certificates) => certificates.client(),
            None => panic!(
                "this cluster does not use TLS: build it with `Cluster::builder().tls(true)`"
            ),
        }
    }

    /// Returns every node's URL, in index order.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// assert_eq!(cluster.urls().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// Returns node `i`'s port on `127.0.0.1`. It does not change when the
    /// node is killed, started again or restarted. In a
    /// [proxied](ClusterBuilder::proxied) cluster it is the node's own port;
    /// clients use the proxy's, [`proxy(i).port()`](Proxy::port).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let port = cluster.port(0);
    /// cluster.restart(0)?;
    /// assert_eq!(cluster.port(0), port);
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// Returns the pid of node `i`'s `redis-server`, or `None` while the node
    /// is killed. A frozen node still has its pid.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert!(cluster.pid(0).is_some());
    /// cluster.kill(0)?;
    /// assert_eq!(cluster.pid(0), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Opens a synchronous redis-rs connection to node `i` (authenticated if a
    /// password is set, over TLS trusting `Cluster::tls_ca_pem` and showing
    /// `Cluster::tls_client_certificate` if the nodes speak TLS), for setting up and checking state in tests. It goes
    /// to the node's [`direct_url`](Cluster::direct_url), bypassing any
    /// [`Proxy`]. It has no read timeout; set one with
    /// [`set_read_timeout`](redis::Connection::set_read_timeout) when talking
    /// to a node that may be frozen.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Connect`] if
    /// connecting fails, e.g. within 5 seconds to a frozen node.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let mut con = cluster.connection(0)?;
    /// let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con)?;
    /// assert!(keys.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn connection(&self, i: usize) -> Result<redis::Connection, Error> {
        if self.node(i).child.is_none() {
            return Err(Error::NotRunning { node: i });
        }
        let url = self.direct_url(i);
        let connect_error = |source| Error::Connect {
            node: i,
            url: url.clone(),
            source,
        };
        self.client(&url)
            .map_err(connect_error)?
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(connect_error)
    }

    /// Returns the contents of node `i`'s log file, which also collects the
    /// process's stdout and stderr, over all of its starts (each start begins
    /// with a line from the testkit). Empty if it cannot be read.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// assert!(cluster.log(0).contains("Ready to accept connections"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.node(i).log_path(), 0)
    }

    /// The CA's PEM when the nodes speak TLS.
    fn ca_pem(&self) -> Option<&str> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            return Some(certificates.ca_pem());
        }
        None
    }

    /// A redis-rs client for one of this cluster's URLs, trusting the
    /// cluster's CA and showing its client certificate when the nodes speak
    /// TLS.
    pub(crate) fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            return tls::client(url, certificates);
        }
        redis::Client::open(url)
    }

    pub(crate) fn node(&self, i: usize) -> &Node {
        let len = self.nodes.len();
        self.nodes.get(i).unwrap_or_else(|| out_of_range(i, len))
    }

    pub(crate) fn node_mut(&mut self, i: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| out_of_range(i, len))
    }

    pub(crate) fn running_pid(&self, i: usize) -> Result<u32, Error> {
        self.pid(i).ok_or(Error::NotRunning { node: i })
    }

    pub(crate) fn url_for_port(&self, port: u16) -> String {
        let scheme = if self.is_tls() { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{}@127.0.0.1:{port}", percent_encode(p)),
            None => format!("{scheme}://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // Nothing better to do with an error in drop; SIGKILL of our own
            // unreaped child does not fail in practice.
            let _ = self.kill(i);
        }
        // The nodes' TempDirs are removed as the fields drop, after the
        // processes writing into them are gone.
    }
}

#[cold]
fn out_of_range(i: usize, len: usize) -> ! {
    panic!("node index {i} is out of range: this cluster has {len} node(s)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "node index 3 is out of range")]
    fn out_of_range_index_panics_clearly() {
        let cluster = Cluster::start(0).unwrap();
        let _ = cluster.port(3);
    }
}
