//! The runtime: the nodes, the global and task-scoped handles, and the crate's own thread.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::runtime::Handle;

use crate::backlog::Backlog;
use crate::node::Node;
use crate::redlock::{acquire, quorum};
use tracing::Instrument;

use crate::slot::{self, Period};
use crate::telemetry;
use crate::{Config, Error, Lease, OnLost, Options, Outcome, Skip};

/// The crate's own tokio runtime, one background thread that lives as long as the process: it
/// drives the connections that no caller's multi-threaded runtime drives (see
/// [`crate::driver`]), runs renewal and the releases of dropped leases (a release spawned on a
/// runtime that is shutting down might never run), and keeps the clock of every deadline.
static ENGINE: LazyLock<Result<tokio::runtime::Runtime, String>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ENGINE_THREADS)
        .thread_name("cluster-singleton")
        .enable_all()
        .build()
        .map_err(|err| format!("could not start the background thread: {err}"))
});

/// Threads of the crate's own runtime: the work there is tiny (encode a command, read a reply).
const ENGINE_THREADS: usize = 1;

/// The first window of random pauses between attempts under `wait`; it doubles up to
/// [`WAIT_MAX_WINDOW`].
const WAIT_FIRST_WINDOW: Duration = Duration::from_millis(10);

/// The widest window between attempts under `wait`: a waiter notices a freed lock within about
/// this long.
const WAIT_MAX_WINDOW: Duration = Duration::from_millis(500);

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
/// use cluster_singleton_runtime::{Config, Runtime};
///
/// # async fn demo() -> Result<(), cluster_singleton_runtime::Error> {
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
    nodes: Vec<Node>,
    quorum: usize,
    key_prefix: String,
    drift_factor: f64,
    node_timeout: Duration,
    engine: Handle,
    backlog: Arc<Backlog>,
}

impl Runtime {
    pub(crate) fn from_config(config: Config) -> Result<Runtime, Error> {
        let engine = ENGINE
            .as_ref()
            .map_err(|err| Error::Internal(err.clone()))?;
        let mut seen = HashMap::new();
        let mut nodes = Vec::with_capacity(config.urls.len());
        for (index, url) in config.urls.iter().enumerate() {
            let position = index + 1;
            let node = Node::new(position, url, &config, engine.handle())?;
            if let Some(identity) = Node::identity(url) {
                if let Some(first) = seen.insert(identity, position) {
                    return Err(Error::InvalidConfig(format!(
                        "Redis node {} is listed twice (URLs #{first} and #{position}); \
                         list each independent node once",
                        node.name()
                    )));
                }
            }
            nodes.push(node);
        }
        if nodes.iter().any(Node::is_memory) && !nodes.iter().all(Node::is_memory) {
            return Err(Error::InvalidConfig(
                "`memory://` nodes cannot be mixed with Redis nodes; use `memory://` alone, in tests".into(),
            ));
        }
        if nodes.len() > 1 && nodes.len().is_multiple_of(2) {
            tracing::warn!(
                nodes = nodes.len(),
                "an even number of Redis nodes tolerates no more failures than one node fewer; use an odd number"
            );
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                quorum: quorum(nodes.len()),
                nodes,
                key_prefix: config.key_prefix,
                drift_factor: config.drift_factor,
                node_timeout: config.node_timeout,
                engine: engine.handle().clone(),
                backlog: Backlog::new(engine.handle().clone()),
            }),
        })
    }

    /// The runtime in effect here: the one [`Runtime::scope`] set for this task, else the one
    /// `runtime::init` set, else [`Error::NotInitialised`].
    ///
    /// ```
    /// use cluster_singleton_runtime::{Error, Runtime};
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
    /// # use cluster_singleton_runtime::{Config, Runtime};
    /// # async fn demo() -> Result<(), cluster_singleton_runtime::Error> {
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
    /// # async fn demo(runtime: cluster_singleton_runtime::Runtime) -> Result<(), cluster_singleton_runtime::Error> {
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
    /// # use cluster_singleton_runtime::Options;
    /// # async fn demo(runtime: cluster_singleton_runtime::Runtime) -> Result<(), cluster_singleton_runtime::Error> {
    /// let options = Options::new(Duration::from_secs(60)).fencing(true);
    /// if let Some(lease) = runtime.lock_with("ledger", &options).await? {
    ///     println!("write with fencing token {:?}", lease.fencing_token());
    ///     lease.release().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_with(&self, key: &str, options: &Options) -> Result<Option<Lease>, Error> {
        check_ttl(options.ttl)?;
        let Some(wait) = options.wait else {
            return self.lock_once(key, options).await;
        };
        let deadline = Instant::now() + wait;
        let mut window = WAIT_FIRST_WINDOW;
        loop {
            let attempt = self.lock_once(key, options).await;
            match &attempt {
                Ok(Some(_)) | Err(Error::InvalidConfig(_) | Error::Internal(_)) => return attempt,
                Ok(None) | Err(_) => {}
            }
            // Full jitter: a pause drawn from the whole window, so that waiters spread out.
            let pause = crate::redlock::random_below(window)?;
            if Instant::now() + pause >= deadline {
                return attempt;
            }
            crate::driver::sleep_until(self.engine(), Instant::now() + pause).await;
            window = (window * 2).min(WAIT_MAX_WINDOW);
        }
    }

    /// One attempt (split votes aside) at the lock.
    async fn lock_once(&self, key: &str, options: &Options) -> Result<Option<Lease>, Error> {
        let key = format!("{}{key}", self.inner.key_prefix);
        acquire(self, &key, options.ttl, options.fencing).await
    }

    /// Runs `body` only if this call takes the lock on `key` for `ttl`, with every other option
    /// at its default (see [`Options::new`]); [`Runtime::run_with`] takes options.
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # use cluster_singleton_runtime::Outcome;
    /// # async fn demo(runtime: cluster_singleton_runtime::Runtime) -> Result<(), cluster_singleton_runtime::Error> {
    /// let outcome = runtime.run("cache-warmup", Duration::from_secs(300), async { 7 }).await?;
    /// if let Outcome::Ran(warmed) = outcome {
    ///     println!("warmed {warmed} entries");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run<F: Future>(
        &self,
        key: &str,
        ttl: Duration,
        body: F,
    ) -> Result<Outcome<F::Output>, Error> {
        self.run_with(key, Options::new(ttl), body, |_| true).await
    }

    /// Runs `body` only if this call takes the lock on `key`, as `options` say; what
    /// `#[singleton]` functions do.
    ///
    /// While the body runs, the lease is renewed (unless `options` turn that off) and the body
    /// sees it through [`lease()`](crate::lease). When the body is done, the lock is released, or
    /// kept until `min_hold` when `succeeded` says the body's output is a success
    /// (`Result::is_ok` for a `Result`, `|_| true` for anything else). If the body panics or the
    /// returned future is dropped, the lock is released in the background at once.
    ///
    /// Returns `Ok(Outcome::Ran(..))` when the body ran under the lock to its end,
    /// `Ok(Outcome::Skipped(..))` when another holder has it (after `wait`, if set), and
    /// [`Error::LeaseLost`] when the lease was lost while the body ran.
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # use cluster_singleton_runtime::{Options, Outcome};
    /// # async fn invoice() -> Result<u32, std::io::Error> { Ok(3) }
    /// # async fn demo(runtime: cluster_singleton_runtime::Runtime) -> Result<(), cluster_singleton_runtime::Error> {
    /// let options = Options::new(Duration::from_secs(60)).min_hold(Duration::from_secs(50));
    /// match runtime.run_with("invoices", options, invoice(), Result::is_ok).await? {
    ///     Outcome::Ran(result) => println!("ran: {result:?}"),
    ///     Outcome::Skipped(why) => println!("skipped: {why}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_with<F, S>(
        &self,
        key: &str,
        options: Options,
        body: F,
        succeeded: S,
    ) -> Result<Outcome<F::Output>, Error>
    where
        F: Future,
        S: FnOnce(&F::Output) -> bool,
    {
        // One span per call; the votes and the validity are recorded on it by the attempt, and
        // the body's own spans and events nest under it.
        let span = tracing::info_span!(
            "singleton",
            key,
            nodes = self.node_count(),
            granted = tracing::field::Empty,
            busy = tracing::field::Empty,
            failed = tracing::field::Empty,
            validity_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = self.run_traced(key, options, body, succeeded);
        // Entering a span on every poll costs even when nothing listens: only when something does.
        let result = if span.is_disabled() {
            call.await
        } else {
            call.instrument(span.clone()).await
        };
        let outcome = telemetry::outcome_name(&result);
        span.record("outcome", outcome);
        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
        telemetry::finished(key, outcome);
        match &result {
            Err(err @ Error::LeaseLost { .. }) => {
                span.in_scope(|| tracing::warn!(error = %err, "lease lost while the body ran"));
            }
            Err(err) => span.in_scope(|| tracing::debug!(error = %err, "the call failed")),
            Ok(_) => {}
        }
        result
    }

    async fn run_traced<F, S>(
        &self,
        key: &str,
        options: Options,
        body: F,
        succeeded: S,
    ) -> Result<Outcome<F::Output>, Error>
    where
        F: Future,
        S: FnOnce(&F::Output) -> bool,
    {
        check_options(&options)?;
        let attempt_started = Instant::now();
        let lease = self.lock_with(key, &options).await;
        telemetry::attempted(key, attempt_started.elapsed(), matches!(lease, Ok(Some(_))));
        let Some(lease) = lease? else {
            return Ok(Outcome::Skipped(Skip::Busy));
        };
        let period = options.slot.map(Period::now).transpose()?;
        if let Some(period) = &period {
            if slot::done(self, lease.key(), period, options.ttl).await? {
                lease.release().await?;
                return Ok(Outcome::Skipped(Skip::AlreadyDone {
                    period_start: period.start(),
                }));
            }
        }
        // Renewal runs beside the body and stops with it, before the release, so that it cannot
        // extend a key we are deleting.
        let keeping = lease.keep(&options);
        let body = lease.info().scope(body);
        let value = match options.on_lost {
            OnLost::Cancel => {
                let lost = lease.info().lost();
                tokio::select! {
                    biased;
                    value = body => Some(value),
                    _ = lost => None,
                    never = keeping => match never {},
                }
            }
            OnLost::Continue => tokio::select! {
                biased;
                value = body => Some(value),
                never = keeping => match never {},
            },
        };
        let value = match (value, lease.lost()) {
            (Some(value), None) => value,
            (value, Some(reason)) => {
                let err = lease.lost_error(reason, value.is_some());
                // Dropping it releases whatever copies of our token are left.
                drop(lease);
                return Err(err);
            }
            (None, None) => unreachable!("the body is only cut short by a lost lease"),
        };
        let succeeded = succeeded(&value);
        if let (Some(period), true) = (&period, succeeded) {
            if let Err(err) = slot::mark_done(self, lease.key(), lease.token(), period).await {
                tracing::warn!(error = %err, "the done marker reached too few nodes; this period may run again");
            }
        }
        let keep = match options.min_hold {
            Some(min_hold) if succeeded => min_hold.saturating_sub(lease.held_for()),
            _ => Duration::ZERO,
        };
        let held = lease.held_for();
        let released = lease.release_keeping(keep).await;
        telemetry::released(key, held, released.is_ok());
        if let Err(err) = released {
            // The body ran; a release that could not reach a quorum leaves copies that expire
            // with the ttl, which is worth a warning but is not an error of the call.
            tracing::warn!(error = %err, "releasing the lock failed; it expires with its ttl");
        }
        Ok(Outcome::Ran(value))
    }

    /// How many nodes this runtime locks on.
    ///
    /// ```
    /// let runtime = cluster_singleton_runtime::Config::new(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]).build()?;
    /// assert_eq!((runtime.node_count(), runtime.quorum()), (3, 2));
    /// # Ok::<(), cluster_singleton_runtime::Error>(())
    /// ```
    pub fn node_count(&self) -> usize {
        self.inner.nodes.len()
    }

    /// How many nodes must grant a lock: a strict majority.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The prefix put before every key in Redis.
    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// Opens a connection to every node, waiting at most the connect timeout; failures are left
    /// for later calls to retry.
    pub(crate) async fn connect(&self) {
        // Each opening runs as a task of its own: it goes on if this wait is cut short.
        let attempts = self.inner.nodes.iter().map(|node| async move {
            if let Err(err) = node.connect().await {
                tracing::warn!(node = node.name(), error = %err, "cannot reach a Redis node yet; later calls retry it");
            }
        });
        join_all(attempts).await;
    }

    pub(crate) fn set_global(self) -> Result<(), Error> {
        GLOBAL.set(self).map_err(|_| Error::AlreadyInitialised)
    }

    pub(crate) fn node(&self, index: usize) -> &Node {
        &self.inner.nodes[index]
    }

    pub(crate) fn drift_factor(&self) -> f64 {
        self.inner.drift_factor
    }

    pub(crate) fn engine(&self) -> &Handle {
        &self.inner.engine
    }

    /// Where commands nobody waits for any more are kept until answered.
    pub(crate) fn backlog(&self) -> &Arc<Backlog> {
        &self.inner.backlog
    }

    /// How long a round waits for a node's answer.
    pub(crate) fn node_timeout(&self) -> Duration {
        self.inner.node_timeout
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<&str> = self.inner.nodes.iter().map(Node::name).collect();
        f.debug_struct("Runtime")
            .field("nodes", &nodes)
            .field("quorum", &self.inner.quorum)
            .field("key_prefix", &self.inner.key_prefix)
            .finish()
    }
}

/// A ttl Redis can take as `PX`: whole milliseconds, from one to `i64::MAX` (the largest expiry
/// Redis accepts, and small enough that the validity arithmetic cannot overflow).
fn check_ttl(ttl: Duration) -> Result<(), Error> {
    const MILLISECOND: Duration = Duration::from_millis(1);
    const LONGEST: Duration = Duration::from_millis(i64::MAX as u64);
    let whole_millis = ttl
        .subsec_nanos()
        .is_multiple_of(MILLISECOND.subsec_nanos());
    if ttl < MILLISECOND || ttl > LONGEST || !whole_millis {
        return Err(Error::InvalidConfig(format!(
            "the ttl must be a whole number of milliseconds from 1ms to {}ms, got {ttl:?}",
            i64::MAX
        )));
    }
    Ok(())
}

/// Options that cannot work together: a `min_hold` longer than the ttl, a `max_hold` shorter
/// than it. `#[singleton]` checks the same when it compiles.
fn check_options(options: &Options) -> Result<(), Error> {
    check_ttl(options.ttl)?;
    if let Some(period) = options.slot {
        check_ttl(period).map_err(|_| {
            Error::InvalidConfig(format!(
                "`slot` must be a whole number of milliseconds, at least 1ms, got {period:?}"
            ))
        })?;
    }
    if options
        .min_hold
        .is_some_and(|min_hold| min_hold > options.ttl)
    {
        return Err(Error::InvalidConfig(format!(
            "`min_hold` ({:?}) must not exceed the ttl ({:?}): the key lives for one ttl after the last renewal",
            options.min_hold.unwrap_or_default(),
            options.ttl
        )));
    }
    if options
        .max_hold
        .is_some_and(|max_hold| max_hold < options.ttl)
    {
        return Err(Error::InvalidConfig(format!(
            "`max_hold` ({:?}) must be at least the ttl ({:?})",
            options.max_hold.unwrap_or_default(),
            options.ttl
        )));
    }
    Ok(())
}

/// Tries once to take the lock on `key` for `ttl` with the runtime in effect here (see
/// [`Runtime::current`]); [`Runtime::lock`] says more.
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo() -> Result<(), cluster_singleton_runtime::Error> {
/// if let Some(lease) = cluster_singleton_runtime::lock("invoices", Duration::from_secs(60)).await? {
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
/// # async fn start() -> Result<(), cluster_singleton_runtime::Error> {
/// cluster_singleton_runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
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
