//! [`ClusterBuilder`]: the options of a [`Cluster`], and starting it.

use crate::launch::{find_redis_server, Node, PortChoice};
#[cfg(feature = "tls")]
use crate::tls;
#[cfg(all(doc, feature = "tls"))]
use crate::unrelated_client_certificate;
use crate::{clock, Cluster, Error, Proxy};
#[cfg(doc)]
use crate::{FAKETIME_REDIS_SERVER_ENV, LIBFAKETIME_ENV};

/// The only address nodes and proxies listen on.
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// Prefix of temporary directory names, so leftovers are easy to recognise.
const TEMP_DIR_PREFIX: &str = "cluster-singleton-redis-";

/// Options for a [`Cluster`]; made by [`Cluster::builder`].
///
/// # Example
///
/// ```no_run
/// use cluster_singleton_testkit::Cluster;
///
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// let cluster = Cluster::builder()
///     .nodes(3)
///     .password("s3cret")
///     .arg("--maxmemory")
///     .arg("64mb")
///     .start()?;
/// assert!(cluster.url(0).starts_with("redis://:s3cret@127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a ClusterBuilder does nothing until `.start()` is called"]
pub struct ClusterBuilder {
    nodes: usize,
    password: Option<String>,
    args: Vec<String>,
    proxied: bool,
    steppable_clocks: bool,
    #[cfg(feature = "tls")]
    tls: bool,
    #[cfg(feature = "tls")]
    tls_auth_clients: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 1,
            password: None,
            args: Vec::new(),
            proxied: false,
            steppable_clocks: false,
            #[cfg(feature = "tls")]
            tls: false,
            #[cfg(feature = "tls")]
            tls_auth_clients: false,
        }
    }
}

impl ClusterBuilder {
    /// Sets how many nodes to start (default 1). Zero is allowed and starts
    /// nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).start()?;
    /// assert_eq!(cluster.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Makes every node require this password (`requirepass`). URLs from
    /// [`Cluster::url`] then carry it, and [`Cluster::connection`] uses it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .password("s3cret")
    ///     .start()?;
    /// assert!(cluster.url(0).starts_with("redis://:s3cret@"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn password(mut self, p: impl Into<String>) -> Self {
        self.password = Some(p.into());
        self
    }

    /// Adds one extra command-line argument for every node's `redis-server`.
    /// Call it once per argument: `.arg("--maxmemory").arg("64mb")`.
    ///
    /// Extra arguments may override the persistence defaults (`--save ""`,
    /// `--appendonly no`), but not the port, bind address, directory, log
    /// file, daemonize setting or password, which the testkit needs to manage
    /// the node.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .arg("--maxclients")
    ///     .arg("100")
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Puts a [`Proxy`] in front of every node (default: no proxies), so that a
    /// test can partition a node from its clients, slow it down or drop its
    /// connections with [`Cluster::proxy`].
    ///
    /// [`Cluster::url`] and [`Cluster::urls`] then give the proxies'
    /// addresses: hand those to the code under test. [`Cluster::direct_url`]
    /// and [`Cluster::connection`] still reach the node itself. A proxy keeps
    /// its port across kills and restarts of its node.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .proxied(true)
    ///     .start()?;
    /// assert_eq!(cluster.url(0), format!("redis://127.0.0.1:{}", cluster.proxy(0).port()));
    /// assert_eq!(cluster.direct_url(0), format!("redis://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn proxied(mut self, proxied: bool) -> Self {
        self.proxied = proxied;
        self
    }

    /// Runs every node with a wall clock that [`Cluster::step_clock`] can step while it runs
    /// (default off). These nodes are a redis-server built with libc malloc, with libfaketime
    /// preloaded: `scripts/ensure-faketime` installs both, or see
    /// [`FAKETIME_REDIS_SERVER_ENV`] and [`LIBFAKETIME_ENV`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .steppable_clocks(true)
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn steppable_clocks(mut self, steppable: bool) -> Self {
        self.steppable_clocks = steppable;
        self
    }

    /// Makes every node speak TLS only (default: plain TCP only), with a
    /// certificate for `127.0.0.1` signed by a CA made for this cluster. Only
    /// with the `tls` feature.
    ///
    /// [`Cluster::url`] then gives `rediss://` URLs, [`Cluster::tls_ca_pem`]
    /// the CA that clients must trust, and [`Cluster::connection`] trusts it
    /// already. Proxies, if any, pass the TLS traffic through untouched.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().tls(true).start()?;
    /// assert_eq!(cluster.url(0), format!("rediss://127.0.0.1:{}", cluster.port(0)));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Makes every node require a client certificate signed by the
    /// cluster's CA (`--tls-auth-clients yes`: mutual TLS), and so speak TLS
    /// ([`tls(true)`](ClusterBuilder::tls) is implied). Default `false`: the
    /// nodes ask for no client certificate. Only with the `tls` feature.
    ///
    /// [`Cluster::tls_client_certificate`] is such a certificate, and
    /// [`Cluster::connection`] shows it already; a client without one, or
    /// with one from [`unrelated_client_certificate`], is refused.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .tls_auth_clients(true)
    ///     .start()?;
    /// assert!(cluster.url(0).starts_with("rediss://"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls_auth_clients = required;
        self
    }

    /// Starts the nodes and waits until each answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::RedisServerNotFound`] at once if there is no `redis-server`;
    /// otherwise whatever stopped a node from starting. Nodes already started
    /// are stopped again before the error is returned.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let cluster = cluster_singleton_testkit::Cluster::builder().nodes(3).start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<Cluster, Error> {
        let faketime = self
            .steppable_clocks
            .then(clock::Faketime::find)
            .transpose()?;
        let program = match &faketime {
            Some(faketime) => faketime.server.clone(),
            None => find_redis_server()?,
        };
        let mut cluster = Cluster {
            program,
            password: self.password,
            args: self.args,
            nodes: Vec::with_capacity(self.nodes),
            faketime,
            proxies: Vec::new(),
            #[cfg(feature = "tls")]
            tls: (self.tls || self.tls_auth_clients)
                .then(|| tls::Certificates::generate(self.tls_auth_clients).map(Box::new))
                .transpose()?,
        };
        for i in 0..self.nodes {
            let dir = tempfile::Builder::new()
                .prefix(TEMP_DIR_PREFIX)
                .tempdir()
                .map_err(Error::TempDir)?;
            // Port 0 until the first start picks a free one.
            cluster.nodes.push(Node {
                port: 0,
                dir,
                child: None,
                clock_offset_ms: 0,
            });
            // On error, dropping `cluster` stops the nodes started so far.
            cluster.launch(i, PortChoice::AnyFree)?;
            if self.proxied {
                let target = (LOOPBACK, cluster.port(i)).into();
                let proxy =
                    Proxy::start(target).map_err(|source| Error::Proxy { node: i, source })?;
                cluster.proxies.push(proxy);
            }
        }
        Ok(cluster)
    }
}
