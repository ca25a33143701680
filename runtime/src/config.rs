//! The runtime's settings, checked before anything connects.

use std::fmt;
use std::time::Duration;

use crate::checks::{check_duration, check_millis, redact};
use crate::{Error, KeyLabel};

/// The key prefix used unless [`Config::key_prefix`] sets another: the Redis key of the lock of
/// `key = "daily-email"` is `singleton:lock:daily-email`.
pub const DEFAULT_KEY_PREFIX: &str = "singleton:";

/// How long one Redis node may take to answer one command before its vote counts as missing.
///
/// Redlock wants this small against the ttl, so that a slow or dead node costs little of the
/// lock's validity; a quorum of fast nodes answers without waiting for it anyway.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(250);

/// How long opening a connection to one node may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The share of the ttl that Redlock subtracts from a lock's validity for clock drift between
/// the client and the Redis nodes (the Redlock paper's 1 %).
pub const DEFAULT_CLOCK_DRIFT_FACTOR: f64 = 0.01;

/// The largest accepted drift factor: beyond it a lock would spend most of its ttl on drift.
const MAX_CLOCK_DRIFT_FACTOR: f64 = 0.5;

/// The longest ttl any holder may use unless [`Config::max_ttl`] says otherwise, and so the
/// default restart grace: ten minutes, the ttl of the examples' daily jobs (longer jobs renew).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(10 * 60);

/// The settings of a [`Runtime`](crate::Runtime): which Redis nodes, and how to talk to them.
///
/// `runtime::init(urls)` is `Config::new(urls).init()`; build a `Config` yourself to change a
/// default. Nothing is checked or connected until [`Config::build`] or [`Config::init`].
///
/// ```no_run
/// use std::time::Duration;
/// use cluster_singleton::runtime::Config;
///
/// # async fn start() -> Result<(), cluster_singleton::Error> {
/// Config::new(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
///     .key_prefix("billing:singleton:")
///     .node_timeout(Duration::from_millis(100))
///     .init()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) urls: Vec<String>,
    pub(crate) key_prefix: String,
    pub(crate) node_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) max_ttl: Duration,
    pub(crate) restart_grace: Option<Duration>,
    pub(crate) detect_clock_jumps: bool,
    /// Who this process is, written beside each lock's random token (see [`Config::holder_id`]).
    pub(crate) holder_id: String,
    pub(crate) metrics_key_label: KeyLabel,
    /// The CA certificates (PEM) that `rediss://` nodes are checked against, instead of the
    /// system's roots.
    #[cfg(feature = "tls")]
    pub(crate) tls_root_certificate: Option<Vec<u8>>,
    /// The certificate chain and private key that `rediss://` nodes are shown (mutual TLS).
    #[cfg(feature = "tls")]
    pub(crate) tls_client_certificate: Option<crate::tls::ClientCertificate>,
}

impl Config {
    /// Settings for these Redis nodes, with every other setting at its default.
    ///
    /// Give one URL per independent Redis primary (`redis://[user:password@]host[:port][/db]`);
    /// an odd number of at least three tolerates the loss of a minority. One URL is the classic
    /// single-instance lock.
    ///
    /// `memory://` (or `memory://name`) instead runs the same algorithm against a store inside
    /// this process, shared by every runtime whose URL names it: for unit tests of your jobs and
    /// for single-process programs only, since it locks nothing across processes.
    ///
    /// ```
    /// # async fn test() -> Result<(), cluster_singleton::Error> {
    /// let runtime = cluster_singleton::runtime::Config::new(["memory://"]).build()?;
    /// let outcome = runtime.run("job", std::time::Duration::from_secs(10), async { 1 }).await?;
    /// assert_eq!(outcome, cluster_singleton::Outcome::Ran(1));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(test()).unwrap();
    /// ```
    ///
    /// ```
    /// let config = cluster_singleton::runtime::Config::new(["redis://:secret@10.0.0.1:6379"]);
    /// assert!(!format!("{config:?}").contains("secret"));
    /// ```
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Config {
            urls: urls
                .into_iter()
                .map(|url| url.as_ref().to_owned())
                .collect(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            node_timeout: DEFAULT_NODE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drift_factor: DEFAULT_CLOCK_DRIFT_FACTOR,
            max_ttl: DEFAULT_MAX_TTL,
            restart_grace: None,
            detect_clock_jumps: true,
            holder_id: default_holder_id(),
            metrics_key_label: KeyLabel::Key,
            #[cfg(feature = "tls")]
            tls_root_certificate: None,
            #[cfg(feature = "tls")]
            tls_client_certificate: None,
        }
    }

    /// The prefix put before every key in Redis (default [`DEFAULT_KEY_PREFIX`]); give each
    /// application its own when they share Redis nodes, none of them the beginning of another.
    /// Under it, each kind of key has a namespace of its own: `lock:{key}`, `done:{key}:{n}`,
    /// `fence:{key}`, `epoch`, `max-ttl`, `nodes-fewest` and `nodes-most`.
    ///
    /// ```
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"]).key_prefix("app1:");
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one node may take to answer one command (default [`DEFAULT_NODE_TIMEOUT`]).
    /// When a majority is down, calls fail after about this long.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"])
    ///     .node_timeout(Duration::from_millis(50));
    /// ```
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long opening a connection to one node may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"])
    ///     .connect_timeout(Duration::from_millis(500));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The share of the ttl subtracted from a lock's validity for clock drift (default
    /// [`DEFAULT_CLOCK_DRIFT_FACTOR`]); 2 ms more are always subtracted. Must be at least 0 and
    /// below 0.5.
    ///
    /// ```
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"]).drift_factor(0.02);
    /// ```
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// The longest ttl that any holder of any key may use on these nodes (default
    /// [`DEFAULT_MAX_TTL`], ten minutes): a fleet-wide setting, the same on every machine that
    /// uses the nodes, like their URLs.
    ///
    /// Every call's ttl is checked against it (a longer one fails with
    /// [`Error::InvalidConfig`] naming this setting), and so, since they never exceed the ttl,
    /// are every extension and `min_hold`: no key on the nodes can ever have longer than this
    /// left to live. That is what the restart grace needs (see [`Config::restart_grace`]), and
    /// why the grace defaults to it.
    ///
    /// A machine whose `max_ttl` is shorter than another's would count a restarted node's votes
    /// before a lock of the other's longer ttl could have run out: give every machine the same
    /// value (raise it everywhere before any machine uses a longer ttl, lower it everywhere after
    /// the last such lock is gone). A job longer than this renews its lease instead (the
    /// default), so a short `max_ttl` costs nothing but a shorter wait after restarts.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"])
    ///     .max_ttl(Duration::from_secs(60));
    /// ```
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// How long a Redis node must have been up before its votes count (default: [`max_ttl`]).
    ///
    /// A node restarted without persistence has forgotten the locks it held; if its fresh vote
    /// counted at once, it could hand a second caller a majority while the first still holds the
    /// lock. So the runtime learns when each node started (its `uptime_in_seconds` and `run_id`,
    /// read on every connect and every second; a `run_id` not seen before starts the grace from
    /// that moment) and whether it lost its data since (its epoch, read back by every vote: a
    /// restart behind a proxy that kept the connection open, a `FLUSHALL`), and counts no vote
    /// from a node up for less than the grace. A key the node forgot had at most [`max_ttl`] left to live, so once the node has
    /// been up that long, every lock it could have forgotten has run out: the grace must be at
    /// least [`max_ttl`], and [`Config::build`] refuses a shorter one.
    ///
    /// The cost: for one grace after a node restarts, the cluster tolerates one failure fewer;
    /// right after a whole cluster starts, nothing can be locked for one grace and up to a second
    /// more (Redis gives its uptime in whole seconds, and the runtime errs late; the error says
    /// which node counts again when). `Duration::ZERO` turns the check off: right only for
    /// nodes that persist every write before answering (`appendonly yes`, `appendfsync always`),
    /// and for tests that start fresh nodes. The check needs the `INFO` command. What rides on
    /// the same once-a-second announcements goes with it: the clock check
    /// ([`Config::detect_clock_jumps`]) and the check that every machine using a node locks on as
    /// many nodes (README, "Safety" 11).
    ///
    /// [`max_ttl`]: Config::max_ttl
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"])
    ///     .max_ttl(Duration::from_secs(60))
    ///     .restart_grace(Duration::from_secs(120));
    /// ```
    pub fn restart_grace(mut self, grace: Duration) -> Self {
        self.restart_grace = Some(grace);
        self
    }

    /// Whether a Redis node whose wall clock steps forward is treated like a restarted node
    /// (default `true`; needs the restart grace, see [`Config::restart_grace`]).
    ///
    /// Redis expires keys by its wall clock, so a node whose clock steps forward (an NTP step,
    /// an operator setting the time, a VM resumed) lets our key expire early, and a second
    /// caller could then win a majority with that node while the first still holds the lock.
    /// So every vote and the once-a-second check read the node's clock (`TIME`, in the same
    /// round trip), and the runtime compares it two ways:
    ///
    /// - with an earlier reading: a clock that moved further than the runtime's own monotonic
    ///   clock between the two (beyond both readings' round trips, 1 ms and 0.1 %) stepped;
    /// - with the other nodes' clocks: a clock more than 250 ms ahead of a quorum of the others
    ///   stepped too, even before this process started.
    ///
    /// Such a node counts as restarted: no vote from it counts until the restart grace has
    /// passed, votes already on their way are refused, and the leases this process renews are
    /// renewed at once on the other nodes (lost, [`LostReason::ClockJumped`], when they do not
    /// confirm them); the leases it does not renew are lost at once. A vote also does not count when its round trips were too slow to rule out
    /// a step larger than what the lock sets aside for clocks (`ttl × drift_factor + 2 ms`), or,
    /// in a process that just started, before enough other nodes' clocks were read to compare
    /// with. A step back (keys live longer than asked) is logged, not acted on. Every step is
    /// logged at WARN with its size, and counted in the `cluster_singleton_clock_jumps_total`
    /// metric (labels `node`, and `direction`: `forward`, `back` or `ahead`).
    ///
    /// What stays assumed is in the README's Safety section (a step forward undone by a step
    /// back between two readings, a step that left a node's clock in agreement with the others
    /// before this process started). `false` turns the readings off: only for nodes whose
    /// clocks never step.
    ///
    /// [`LostReason::ClockJumped`]: crate::LostReason::ClockJumped
    ///
    /// ```
    /// let config = cluster_singleton::runtime::Config::new(["redis://127.0.0.1"])
    ///     .detect_clock_jumps(false);
    /// ```
    pub fn detect_clock_jumps(mut self, detect: bool) -> Self {
        self.detect_clock_jumps = detect;
        self
    }

    /// How this process names itself in the locks it holds (default: the host name and the
    /// process id, `web-3:4242`), so that [`Runtime::inspect`](crate::Runtime::inspect), `cluster-singleton inspect` and
    /// a plain `GET` on a node tell who holds a key.
    ///
    /// A lock's value on the nodes is its random token, a space, then this id, so every node
    /// can see it: give a name, never a secret. [`Config::build`] refuses an empty id, one
    /// longer than 200 bytes, and one with control characters.
    ///
    /// ```
    /// # async fn demo() -> Result<(), cluster_singleton::Error> {
    /// use std::time::Duration;
    /// use cluster_singleton::runtime::Config;
    ///
    /// let runtime = Config::new(["memory://holder-doc"]).holder_id("billing-worker-2").build()?;
    /// let lease = runtime.lock("invoices", Duration::from_secs(30)).await?.expect("free");
    /// let state = runtime.inspect("invoices").await?;
    /// assert_eq!(state.holder().and_then(|holder| holder.holder_id.as_deref()), Some("billing-worker-2"));
    /// # lease.release().await?;
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn holder_id(mut self, id: impl Into<String>) -> Self {
        self.holder_id = id.into();
        self
    }

    /// What the metrics' `key` label holds (default [`KeyLabel::Key`], the key itself): with
    /// [`KeyLabel::Template`], the key as written in `#[singleton(key = "...")]`.
    ///
    /// A key with `{param}` placeholders makes one series per value under the default: per
    /// customer for `key = "invoice:{customer_id}"`, which a metrics backend pays for in memory
    /// and a dashboard in noise. The template makes it one series, at the price of not telling
    /// the values apart (the `tracing` span still names the key). Keys without placeholders are
    /// the same either way, and so are calls of [`Runtime::run_with`](crate::Runtime::run_with) that give no
    /// [`Options::key_template`](crate::Options::key_template). Only matters with the `metrics`
    /// feature.
    ///
    /// ```
    /// use cluster_singleton::runtime::{Config, KeyLabel};
    ///
    /// let config = Config::new(["redis://127.0.0.1"]).metrics_key_label(KeyLabel::Template);
    /// ```
    pub fn metrics_key_label(mut self, label: KeyLabel) -> Self {
        self.metrics_key_label = label;
        self
    }

    /// The restart grace in force: the one set, else [`Config::max_ttl`]; `None` when off.
    pub(crate) fn effective_restart_grace(&self) -> Option<Duration> {
        match self.restart_grace {
            None => Some(self.max_ttl),
            Some(grace) if grace.is_zero() => None,
            Some(grace) => Some(grace),
        }
    }

    /// Trusts this CA for `rediss://` nodes, in place of the system's root certificates: for
    /// Redis servers whose certificates a private CA signed. Only with the `tls` feature.
    ///
    /// `pem` is the CA certificate as PEM text (`-----BEGIN CERTIFICATE-----` ...), or several
    /// of them, all trusted. The server's certificate must also name the host of its URL. Without
    /// this setting, `rediss://` nodes are checked against the system's roots, as for a managed
    /// Redis with a public certificate. `redis://` nodes do not use it.
    ///
    /// [`Config::build`] fails with [`Error::InvalidConfig`] when `pem` holds no certificate. A
    /// server whose certificate the CA did not sign gives no vote; the lock's
    /// [`Error::NoQuorum`] then names the node and says that its certificate was refused.
    ///
    /// ```no_run
    /// use cluster_singleton::runtime::Config;
    ///
    /// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// Config::new(["rediss://:password@10.0.0.1:6380", "rediss://:password@10.0.0.2:6380", "rediss://:password@10.0.0.3:6380"])
    ///     .tls_root_certificate(ca)
    ///     .init()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// Shows `rediss://` nodes this client certificate, for Redis servers that require one
    /// (mutual TLS: `tls-auth-clients yes`, or `optional`). Only with the `tls` feature.
    ///
    /// `cert_chain_pem` is the client's certificate as PEM text (`-----BEGIN CERTIFICATE-----`
    /// ...), followed by any intermediate CA certificates; `private_key_pem` is its private key,
    /// unencrypted, as PEM (`-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    /// The servers accept it when a CA in their `tls-ca-cert-file` signed it. Every `rediss://`
    /// node is shown the same certificate; `redis://` nodes do not use it. The server's own
    /// certificate is still checked, against [`Config::tls_root_certificate`] or the system's
    /// roots.
    ///
    /// [`Config::build`] fails with [`Error::InvalidConfig`] when the chain holds no
    /// certificate, the key is not an unencrypted PEM private key, or the key does not belong
    /// to the chain's first certificate. No message and no `Debug` output ever shows the key
    /// (`Debug` of the `Config` says only that a client certificate is set). A server that
    /// requires a certificate and got none, or refuses the one given, gives no vote; the lock's
    /// [`Error::NoQuorum`] then names the node and says which.
    ///
    /// ```no_run
    /// use cluster_singleton::runtime::Config;
    ///
    /// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let certificate = std::fs::read("/etc/myapp/tls/client.crt")?;
    /// let key = std::fs::read("/etc/myapp/tls/client.key")?;
    /// Config::new(["rediss://10.0.0.1:6380", "rediss://10.0.0.2:6380", "rediss://10.0.0.3:6380"])
    ///     .tls_root_certificate(ca)
    ///     .tls_client_certificate(certificate, key)
    ///     .init()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_certificate(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        private_key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client_certificate = Some(crate::tls::ClientCertificate {
            chain_pem: cert_chain_pem.into(),
            key_pem: private_key_pem.into(),
        });
        self
    }

    /// Checks the settings against each other (`Config::build` does, before anything else).
    pub(crate) fn check_settings(&self) -> Result<(), Error> {
        if self.urls.is_empty() {
            return Err(Error::InvalidConfig(
                "no Redis URLs given; pass at least one, like `redis://127.0.0.1:6379`".into(),
            ));
        }
        check_duration("node_timeout", self.node_timeout, false)?;
        check_duration("connect_timeout", self.connect_timeout, false)?;
        check_millis("max_ttl", self.max_ttl)?;
        if let Some(grace) = self.restart_grace {
            check_duration("restart_grace", grace, true)?;
            if !grace.is_zero() && grace < self.max_ttl {
                return Err(Error::InvalidConfig(format!(
                    "`restart_grace` ({grace:?}) is shorter than `max_ttl` ({:?}): a node that \
                     restarted without persistence could vote while a lock it forgot is still \
                     held; leave the grace at its default (`max_ttl`), or set it to zero only if \
                     every node persists every write (`appendfsync always`)",
                    self.max_ttl
                )));
            }
        }
        if self.holder_id.is_empty()
            || self.holder_id.len() > MAX_HOLDER_ID_BYTES
            || self.holder_id.chars().any(char::is_control)
        {
            return Err(Error::InvalidConfig(format!(
                "`holder_id` must be 1 to {MAX_HOLDER_ID_BYTES} bytes without control \
                 characters, got {:?}; name the process, like `web-3:4242`",
                self.holder_id.chars().take(40).collect::<String>()
            )));
        }
        if !(0.0..MAX_CLOCK_DRIFT_FACTOR).contains(&self.drift_factor) {
            return Err(Error::InvalidConfig(format!(
                "`drift_factor` must be at least 0 and below {MAX_CLOCK_DRIFT_FACTOR}, got {}",
                self.drift_factor
            )));
        }
        #[cfg(feature = "tls")]
        if let Some(certificate) = &self.tls_client_certificate {
            crate::tls::check_client_certificate(certificate)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
        let mut config = f.debug_struct("Config");
        config
            .field("urls", &urls)
            .field("key_prefix", &self.key_prefix)
            .field("node_timeout", &self.node_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("drift_factor", &self.drift_factor)
            .field("max_ttl", &self.max_ttl)
            .field("restart_grace", &self.effective_restart_grace())
            .field("detect_clock_jumps", &self.detect_clock_jumps)
            .field("holder_id", &self.holder_id)
            .field("metrics_key_label", &self.metrics_key_label);
        // Whether each is set, never what: the key is a secret, and PEM text floods a log.
        #[cfg(feature = "tls")]
        config
            .field(
                "tls_root_certificate",
                &self.tls_root_certificate.as_ref().map(|_| "<set>"),
            )
            .field("tls_client_certificate", &self.tls_client_certificate);
        config.finish()
    }
}

/// The longest [`Config::holder_id`]: it is written with every lock.
const MAX_HOLDER_ID_BYTES: usize = 200;

/// `host:pid`: which machine and which process, enough for an operator to find the holder.
fn default_holder_id() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This machine's name, or `unknown-host` when the OS does not say.
fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buffer = [0u8; 256];
        // SAFETY: the pointer and length describe `buffer`, which outlives the call.
        let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
        if status == 0 {
            let end = buffer
                .iter()
                .position(|&byte| byte == 0)
                .unwrap_or(buffer.len());
            let name = String::from_utf8_lossy(&buffer[..end]);
            let name: String = name.chars().filter(|c| !c.is_control()).collect();
            if !name.is_empty() {
                return name;
            }
        }
    }
    #[cfg(not(unix))]
    if let Ok(name) = std::env::var("COMPUTERNAME") {
        return name;
    }
    "unknown-host".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_rejected() {
        let base = || Config::new(["redis://127.0.0.1"]);
        for (config, needle) in [
            (Config::new(Vec::<String>::new()), "no Redis URLs"),
            (base().node_timeout(Duration::ZERO), "`node_timeout`"),
            (base().connect_timeout(Duration::ZERO), "`connect_timeout`"),
            (base().drift_factor(0.5), "`drift_factor`"),
            (base().drift_factor(-0.1), "`drift_factor`"),
            (base().drift_factor(f64::NAN), "`drift_factor`"),
            (base().node_timeout(Duration::MAX), "`node_timeout`"),
            (base().connect_timeout(Duration::MAX), "`connect_timeout`"),
            (base().max_ttl(Duration::ZERO), "`max_ttl`"),
            (base().max_ttl(Duration::from_micros(1500)), "`max_ttl`"),
            (base().max_ttl(Duration::MAX), "`max_ttl`"),
            (base().restart_grace(Duration::MAX), "`restart_grace`"),
            (
                base().restart_grace(DEFAULT_MAX_TTL / 2),
                "shorter than `max_ttl`",
            ),
        ] {
            let err = config.build().unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn the_grace_defaults_to_the_longest_ttl() {
        let config = Config::new(["redis://127.0.0.1"]);
        assert_eq!(config.effective_restart_grace(), Some(DEFAULT_MAX_TTL));
        let config = config.max_ttl(Duration::from_secs(5));
        assert_eq!(
            config.effective_restart_grace(),
            Some(Duration::from_secs(5))
        );
        let config = config.restart_grace(Duration::ZERO);
        assert_eq!(config.effective_restart_grace(), None);
        assert!(config.build().is_ok());
    }
}
