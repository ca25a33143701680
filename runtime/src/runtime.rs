//! The runtime: the nodes, the global and task-scoped handles, and the crate's own thread.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::watch;

use crate::checks::check_duration;
use crate::lease::{Deadlines, Register, Renewer};
use crate::node::Node;
use crate::nodes::Nodes;
use crate::redlock::{acquire, release, Acquired, SplitVoteRetries};

use crate::slot;
use crate::{keys, telemetry};
use crate::{Config, Error, Lease, LostReason, Options};

/// The first window of random pauses between attempts under `wait`; it doubles up to
/// [`WAIT_MAX_WINDOW`].
const WAIT_FIRST_WINDOW: Duration = Duration::from_millis(10);

/// The widest window between attempts under `wait`: a waiter notices a freed lock within about
/// this long.
const WAIT_MAX_WINDOW: Duration = Duration::from_millis(500);

/// How often `shutdown` looks whether the background releases are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);

/// The runtime `runtime::init` sets.
static GLOBAL: OnceLock<Runtime> = OnceLock::new();

tokio::task_local! {
    /// The runtime `Runtime::scope` sets for one future.
    static SCOPED: Runtime;
}

/// A set of Redis nodes and how to lock on them; cheap to clone (all clones share connections).
///
/// Most programs call `runtime::init` once and never see this type. Build one from a [`Config`]
/// to use several sets of nodes in one process (tests that each start their own Redis, say), and
/// run the code that should use it inside [`Runtime::scope`].
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use cluster_singleton::runtime::{Config, Runtime};
///
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// let runtime = Config::new(["redis://127.0.0.1:7000"]).build()?;
/// let outcome = runtime
///     .scope(async { Runtime::current()?.run("report", Duration::from_secs(30), async { 42 }).await })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Arc<Nodes>,
    key_prefix: String,
    max_ttl: Duration,
    /// The leases held now, which `shutdown` releases.
    register: Arc<Register>,
    /// Renews the leases of bodies that run.
    renewer: Arc<Renewer>,
    /// Marks leases lost at their deadlines, for whatever waits to see that.
    deadlines: Arc<Deadlines>,
    /// Raised when `shutdown` begins: calls fail from then on, and work that waits (a campaign
    /// between attempts) ends at once.
    shut_down: watch::Sender<bool>,
    metrics_key_label: crate::KeyLabel,
}

impl Runtime {
    fn from_config(config: Config) -> Result<Runtime, Error> {
        telemetry::describe();
        let nodes = Nodes::new(&config)?;
        let deadlines = Arc::new(Deadlines::new(nodes.crate_thread().clone()));
        let inner = Arc::new(Inner {
            nodes,
            key_prefix: config.key_prefix,
            max_ttl: config.max_ttl,
            register: Arc::default(),
            renewer: Arc::default(),
            deadlines,
            shut_down: watch::Sender::new(false),
            metrics_key_label: config.metrics_key_label,
        });
        if let Some(clock_jumps) = inner.nodes.clock_jumps() {
            drop(
                inner
                    .nodes
                    .crate_thread()
                    .spawn(lose_unrenewed_leases_on_clock_jumps(
                        Arc::downgrade(&inner),
                        clock_jumps,
                    )),
            );
        }
        Ok(Runtime { inner })
    }

    /// The runtime in effect here: the one [`Runtime::scope`] set for this task, else the one
    /// `runtime::init` set, else [`Error::NotInitialised`].
    ///
    /// ```
    /// use cluster_singleton::runtime::Runtime;
    /// use cluster_singleton::Error;
    ///
    /// // Nothing was initialised in this program.
    /// assert!(matches!(Runtime::current(), Err(Error::NotInitialised)));
    /// ```
    pub fn current() -> Result<Runtime, Error> {
        SCOPED
            .try_with(Runtime::clone)
            .ok()
            .or_else(|| GLOBAL.get().cloned())
            .ok_or(Error::NotInitialised)
    }

    /// Runs `future` with this runtime in effect: `#[singleton]` functions and
    /// [`Runtime::current`] called inside it (in the same task) use this runtime rather than the
    /// global one.
    ///
    /// ```no_run
    /// # use cluster_singleton::runtime::{Config, Runtime};
    /// # async fn demo() -> Result<(), cluster_singleton::Error> {
    /// let runtime = Config::new(["redis://127.0.0.1:7000"]).build()?;
    /// let prefix = runtime.scope(async { Runtime::current().map(|rt| rt.key_prefix().to_owned()) }).await?;
    /// assert_eq!(prefix, "singleton:");
    /// # Ok(())
    /// # }
    /// ```
    pub fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        SCOPED.scope(self.clone(), future)
    }

    /// Tries once to take the lock on `key` (the runtime's prefix is put before it) for `ttl`.
    ///
    /// `Ok(Some(lease))` when this call holds it now, `Ok(None)` when another holder has it. An
    /// error when too few nodes answered to tell ([`Error::NoQuorum`]), or for a ttl under one
    /// millisecond or not a whole number of milliseconds ([`Error::InvalidConfig`]).
    ///
    /// If the returned future is dropped before it finishes, a lock it took is released.
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// match runtime.lock("invoices", Duration::from_secs(60)).await? {
    ///     Some(lease) => {
    ///         // ... the work ...
    ///         lease.release().await?;
    ///     }
    ///     None => println!("another machine is doing it"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, Error> {
        self.lock_with(key, &Options::new(ttl)).await
    }

    /// [`Runtime::lock`] with the options that concern taking a lock: the ttl, `wait` (try
    /// again with random pauses until it has passed) and `fencing`. The options about a body
    /// (renewal, `min_hold`, `slot`, ...) are [`Runtime::run_with`]'s.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let options = Options::new(Duration::from_secs(60)).fencing(true);
    /// if let Some(lease) = runtime.lock_with("ledger", &options).await? {
    ///     println!("write with fencing token {:?}", lease.fencing_token());
    ///     lease.release().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_with(&self, key: &str, options: &Options) -> Result<Option<Lease>, Error> {
        self.check_options(options)?;
        let retries = SplitVoteRetries::new(None, self.shutting_down());
        match self.take(key, options, &retries).await? {
            Acquired::Taken(lease) => Ok(Some(lease)),
            Acquired::Busy | Acquired::SplitVote { .. } => Ok(None),
        }
    }

    /// Takes the lock as `options` say (checked already): one attempt, or with `wait`, attempts
    /// until one takes it or the wait is over. An attempt caught in a split vote tries again as
    /// `retries` say.
    pub(crate) async fn take(
        &self,
        key: &str,
        options: &Options,
        retries: &SplitVoteRetries,
    ) -> Result<Acquired<Lease>, Error> {
        let Some(wait) = options.wait else {
            return self.take_once(key, options, retries).await;
        };
        let mut deadline = Instant::now() + wait;
        if let Some(tick) = slot::current_tick().filter(|_| options.slot.is_none()) {
            // A call for a cron tick waits no longer than the tick lasts: one that took the lock
            // much later could come after the tick's done marker has expired, and run it again.
            deadline = deadline.min(Instant::now() + tick.time_left());
        }
        let mut window = WAIT_FIRST_WINDOW;
        loop {
            let attempt = self.take_once(key, options, retries).await;
            match &attempt {
                Ok(Acquired::Taken(_))
                | Err(
                    Error::InvalidConfig(_)
                    | Error::Internal(_)
                    | Error::Refused(_)
                    | Error::ShutDown,
                ) => return attempt,
                Ok(_) | Err(_) => {}
            }
            // Full jitter: a pause drawn from the whole window, so that waiters spread out.
            let pause = crate::random::pause_below(window)?;
            if Instant::now() + pause >= deadline {
                return attempt;
            }
            crate::driver::sleep_until(self.nodes().crate_thread(), Instant::now() + pause).await;
            window = (window * 2).min(WAIT_MAX_WINDOW);
        }
    }

    /// One attempt (split votes aside) at the lock.
    async fn take_once(
        &self,
        key: &str,
        options: &Options,
        retries: &SplitVoteRetries,
    ) -> Result<Acquired<Lease>, Error> {
        // Counted before the flag is read: a `shutdown` that begins now waits for this attempt,
        // whose lease (if it wins) the closed register then refuses.
        let nodes = self.nodes();
        let _in_flight = nodes.in_flight();
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let prefix = &self.inner.key_prefix;
        let fence = options.fencing.then(|| keys::fence(prefix, key));
        let lock_key = keys::lock(prefix, key);
        Ok(
            match acquire(nodes, &lock_key, fence.as_deref(), options.ttl, retries).await? {
                Acquired::Taken(taken) => {
                    let inner = &self.inner;
                    let lease = Lease::new(
                        nodes,
                        &inner.register,
                        &inner.renewer,
                        &inner.deadlines,
                        taken,
                    );
                    if !lease.is_registered() {
                        // `shutdown` began while this attempt was in flight: nothing is held
                        // after it.
                        let _ = lease.release().await;
                        return Err(Error::ShutDown);
                    }
                    Acquired::Taken(lease)
                }
                Acquired::Busy => Acquired::Busy,
                Acquired::SplitVote { attempts } => Acquired::SplitVote { attempts },
            },
        )
    }

    /// How many nodes this runtime locks on.
    ///
    /// ```
    /// let runtime = cluster_singleton::runtime::Config::new(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]).build()?;
    /// assert_eq!((runtime.node_count(), runtime.quorum()), (3, 2));
    /// # Ok::<(), cluster_singleton::Error>(())
    /// ```
    pub fn node_count(&self) -> usize {
        self.inner.nodes.len()
    }

    /// How many nodes must grant a lock: a strict majority.
    pub fn quorum(&self) -> usize {
        self.inner.nodes.quorum()
    }

    /// The prefix put before every key in Redis.
    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// How this process names itself in the locks it takes (see [`Config::holder_id`]).
    ///
    /// ```
    /// let runtime = cluster_singleton::runtime::Config::new(["memory://"]).holder_id("worker-7").build()?;
    /// assert_eq!(runtime.holder_id(), "worker-7");
    /// # Ok::<(), cluster_singleton::Error>(())
    /// ```
    pub fn holder_id(&self) -> &str {
        self.inner.nodes.holder_id()
    }

    /// Opens a connection to every node (see `Nodes::connect`).
    pub(crate) async fn connect(&self) {
        self.inner.nodes.connect().await;
    }

    /// The process-wide runtime's [`Runtime::shutdown`]: for the end of a program that used
    /// `runtime::init`. Does nothing when no global runtime was set.
    pub(crate) async fn shutdown_global(timeout: Duration) -> Result<(), Error> {
        match GLOBAL.get() {
            Some(runtime) => runtime.shutdown(timeout).await,
            None => Ok(()),
        }
    }

    /// Ends this runtime's work, for the end of a program: takes no more locks (later calls fail
    /// with [`Error::ShutDown`]), ends every lease it holds (a running body learns it as a
    /// lost lease, [`LostReason::Shutdown`], and with `on_lost = "cancel"` is dropped at its next
    /// `.await`), releases them on every node, and waits for the releases still on their way in
    /// the background (those of dropped calls and leases). Returns once all of that is done, or
    /// when `timeout` has passed; a copy it could not release expires with its ttl.
    ///
    /// Without it, a program that returns from `main` while a release is in the background (a
    /// call it dropped, a lease it let go) leaves that copy to block the key for its ttl.
    ///
    /// Fails with [`Error::NoQuorum`] when a held lease could not be released on a quorum of
    /// nodes within `timeout`.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// // ... the program's work, then, on SIGTERM or at the end of `main`:
    /// runtime.shutdown(Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        check_duration("timeout", timeout, true)?;
        let deadline = Instant::now() + timeout;
        self.inner.shut_down.send_replace(true);
        let nodes = self.nodes();
        let held = self.inner.register.close();
        for held in &held {
            held.lose(LostReason::Shutdown);
        }
        let releases = held.iter().map(|held| async move {
            // No extension still on its way may put the key back after the release.
            held.stop_renewal();
            release(nodes, held.claim(), Duration::ZERO).await
        });
        let released =
            crate::driver::timeout(nodes.crate_thread(), timeout, join_all(releases)).await;
        while !nodes.is_idle() && Instant::now() < deadline {
            crate::driver::sleep_until(nodes.crate_thread(), Instant::now() + SHUTDOWN_POLL).await;
        }
        match released {
            Ok(results) => results
                .into_iter()
                .find_map(Result::err)
                .map_or(Ok(()), |no_quorum| Err(no_quorum.into_error())),
            Err(_elapsed) => Err(Error::Internal(format!(
                "the held leases were not released within {timeout:?}; their copies expire with \
                 their ttl"
            ))),
        }
    }

    /// Checks a call's options against each other and this runtime's settings (see
    /// [`Options::check`]).
    pub(crate) fn check_options(&self, options: &Options) -> Result<(), Error> {
        options.check(self.inner.max_ttl, self.nodes().drift_factor())
    }

    /// Whether `shutdown` has begun: a campaign and a cron schedule stop then.
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.inner.shut_down.borrow()
    }

    /// Turns `true` when `shutdown` begins.
    pub(crate) fn shutting_down(&self) -> watch::Receiver<bool> {
        self.inner.shut_down.subscribe()
    }

    pub(crate) fn set_global(self) -> Result<(), Error> {
        GLOBAL.set(self).map_err(|_| Error::AlreadyInitialised)
    }

    /// How the metrics name a call's key.
    pub(crate) fn metrics_key_label(&self) -> crate::KeyLabel {
        self.inner.metrics_key_label
    }

    /// The nodes this runtime locks on.
    pub(crate) fn nodes(&self) -> &Arc<Nodes> {
        &self.inner.nodes
    }
}

impl Config {
    /// Checks the settings and builds a [`Runtime`] that uses them, without connecting: nodes
    /// connect on first use, and a node that is down is retried on later calls.
    ///
    /// Fails with [`Error::InvalidConfig`] on no URLs, an invalid URL, the same node listed twice,
    /// a zero timeout or a drift factor out of range, and (`tls` feature) TLS certificates that
    /// cannot be used.
    ///
    /// ```
    /// use cluster_singleton::runtime::Config;
    /// use cluster_singleton::Error;
    ///
    /// let err = Config::new(["redis://127.0.0.1:6379", "redis://127.0.0.1:6379/"]).build().unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig(_)));
    /// assert!(err.to_string().contains("listed twice"));
    /// ```
    pub fn build(self) -> Result<Runtime, Error> {
        self.check_settings()?;
        Runtime::from_config(self)
    }

    /// Builds the runtime and makes it the process-wide one that `#[singleton]` functions use,
    /// then opens a connection to each node (waiting at most the connect timeout; a node that is
    /// down is retried on later calls and does not fail `init`).
    ///
    /// Fails with [`Error::AlreadyInitialised`] when a global runtime is already set, and as
    /// [`Config::build`] does.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cluster_singleton::Error> {
    /// cluster_singleton::runtime::Config::new(["redis://127.0.0.1:6379"]).init().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn init(self) -> Result<(), Error> {
        let runtime = self.build()?;
        runtime.clone().set_global()?;
        runtime.connect().await;
        Ok(())
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<&str> = self.inner.nodes.iter().map(Node::name).collect();
        f.debug_struct("Runtime")
            .field("nodes", &nodes)
            .field("quorum", &self.quorum())
            .field("key_prefix", &self.inner.key_prefix)
            .finish()
    }
}

/// Each time a node's clock is seen to step forward, marks lost every lease that renewal does not
/// keep (renewal off, or `Runtime::lock`'s): its validity counted on a key that may have expired
/// early on that node, and nothing will check it on the other nodes. Leases being renewed are
/// renewed at once instead (see `lease::renewal`).
async fn lose_unrenewed_leases_on_clock_jumps(
    runtime: Weak<Inner>,
    mut clock_jumps: watch::Receiver<u64>,
) {
    while clock_jumps.changed().await.is_ok() {
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        for held in runtime.register.held().iter().filter(|held| !held.renews()) {
            tracing::warn!(
                key = held.claim().key(),
                "lease lost: a node's clock stepped forward, and nothing renews this lease to \
                 confirm it on the other nodes"
            );
            held.lose(LostReason::ClockJumped);
        }
    }
}

/// Tries once to take the lock on `key` for `ttl` with the runtime in effect here (see
/// [`Runtime::current`]); [`Runtime::lock`] says more.
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// if let Some(lease) = cluster_singleton::runtime::lock("invoices", Duration::from_secs(60)).await? {
///     // ... the work ...
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub async fn lock(key: &str, ttl: Duration) -> Result<Option<Lease>, Error> {
    Runtime::current()?.lock(key, ttl).await
}

/// Sets the process-wide runtime to these Redis nodes, with every other setting at its default;
/// the same as `Config::new(urls).init()`.
///
/// Call it once at start-up, inside a tokio runtime, before the first `#[singleton]` call. A node
/// that is down does not fail it: later calls retry it, and its failures count as missing votes.
/// Fails with [`Error::AlreadyInitialised`] on a second call and [`Error::InvalidConfig`] on bad
/// URLs.
///
/// ```no_run
/// # async fn start() -> Result<(), cluster_singleton::Error> {
/// cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
/// # Ok(())
/// # }
/// ```
pub async fn init<I, S>(urls: I) -> Result<(), Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    Config::new(urls).init().await
}

/// Shuts the process-wide runtime down, for the end of a program that called `runtime::init`:
/// see [`Runtime::shutdown`]. Does nothing when `init` was never called.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn job() {}
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
///     job().await;
///     // Releases what is held and waits for releases on their way, then `main` returns.
///     cluster_singleton::runtime::shutdown(Duration::from_secs(5)).await?;
///     Ok(())
/// }
/// ```
pub async fn shutdown(timeout: Duration) -> Result<(), Error> {
    Runtime::shutdown_global(timeout).await
}
