//! A held lock: released when done with or dropped, renewed while a body runs, and visible to
//! that body through [`lease()`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::redlock::{extend, release, spawn_release_everywhere, Extension, Outstanding};
use crate::{Error, Options, Runtime};

/// Renewal extends the lease after this fraction of the ttl: at a third, two more tries fit in
/// before the lease would run out.
const RENEW_AFTER_TTL_DIVISOR: u32 = 3;

/// After a renewal that could not reach a quorum, the next try comes this fraction of the ttl
/// later, for as long as the lease is still valid.
const RENEW_RETRY_TTL_DIVISOR: u32 = 10;

tokio::task_local! {
    /// The lease of the `#[singleton]` body running in this task.
    static CURRENT: LeaseInfo;
}

/// Why a lease was lost before its holder was done with it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// Renewal could not reach a quorum of nodes before the lease ran out.
    NoQuorum,
    /// A majority of nodes no longer holds our token: the key expired there, or another holder
    /// has it now.
    TakenOver,
    /// The body ran longer than `max_hold`.
    MaxHold,
    /// The body ran longer than the ttl, with renewal off.
    Expired,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::NoQuorum => "renewing it could not reach a quorum of Redis nodes",
            LostReason::TakenOver => "a majority of Redis nodes no longer holds it",
            LostReason::MaxHold => "the body ran longer than `max_hold`",
            LostReason::Expired => "the body ran longer than the ttl, with renewal off",
        })
    }
}

/// What the holder of a lease and the body running under it share.
struct Held {
    key: Arc<str>,
    token: Arc<str>,
    ttl: Duration,
    acquired_at: Instant,
    fencing_token: Option<u64>,
    valid_until: Mutex<Instant>,
    lost: watch::Sender<Option<LostReason>>,
}

impl Held {
    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_valid_until(&self, valid_until: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = valid_until;
    }

    fn lose(&self, reason: LostReason) {
        self.lost
            .send_if_modified(|lost| lost.replace(reason).is_none());
    }

    fn lost(&self) -> Option<LostReason> {
        *self.lost.borrow()
    }

    fn validity(&self) -> Duration {
        if self.lost().is_some() {
            return Duration::ZERO;
        }
        self.valid_until().saturating_duration_since(Instant::now())
    }
}

/// A lock held on a quorum of Redis nodes, from [`Runtime::lock`].
///
/// Release it with [`Lease::release`] when the work is done, and [`Lease::extend`] it when the
/// work takes longer than the ttl. A lease that is dropped without a release (the task was
/// cancelled, the code panicked) is released in the background at once, on the crate's own
/// thread, so it never waits for its ttl; only a process that dies leaves the key to expire with
/// the ttl.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn job() -> Result<(), cluster_singleton_runtime::Error> {
/// if let Some(mut lease) = cluster_singleton_runtime::lock("nightly-report", Duration::from_secs(60)).await? {
///     println!("holding {} with token {}", lease.key(), lease.token());
///     // ... the first half of the work ...
///     lease.extend().await?;
///     // ... the second half ...
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Lease {
    runtime: Runtime,
    held: Arc<Held>,
    /// The slower nodes' SETs that were not queued on an open connection yet when the lock was
    /// taken (see `Outstanding`): its release follows them.
    outstanding: Outstanding,
    /// Cleared by `release`, so that `Drop` knows there is nothing left to do.
    holding: bool,
}

/// What an acquisition that took the lock knows of it.
pub(crate) struct Taken {
    pub(crate) key: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) acquired_at: Instant,
    pub(crate) valid_until: Instant,
    pub(crate) fencing_token: Option<u64>,
    pub(crate) outstanding: Outstanding,
}

impl Lease {
    pub(crate) fn new(runtime: Runtime, taken: Taken) -> Self {
        Lease {
            runtime,
            outstanding: taken.outstanding,
            held: Arc::new(Held {
                key: taken.key,
                token: taken.token,
                ttl: taken.ttl,
                acquired_at: taken.acquired_at,
                fencing_token: taken.fencing_token,
                valid_until: Mutex::new(taken.valid_until),
                lost: watch::Sender::new(None),
            }),
            holding: true,
        }
    }

    /// The Redis key, with the runtime's prefix (`singleton:daily-email`).
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// This acquisition's random token (128 bits, hex): the value of the key on the nodes, unique
    /// to this acquisition, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        &self.held.token
    }

    /// With fencing on ([`Options::fencing`]): a number larger than that of every earlier
    /// holder of this key, to pass to the storage the job writes to, which can then refuse
    /// writes from a holder whose lease ran out while it was paused. `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token
    }

    /// How much longer the lock is safe to rely on: what was left of the ttl after taking (or
    /// last extending) it, less the clock-drift allowance, counted down since. Zero once it has
    /// run out or was lost.
    pub fn validity(&self) -> Duration {
        self.held.validity()
    }

    /// Extends the lock to expire one ttl from now, on every node where the key still holds
    /// this lease's token.
    ///
    /// Fails with [`Error::LeaseLost`] when a majority of nodes no longer holds our token (the
    /// lease ran out and someone may have taken the key since: stop relying on it), and with
    /// [`Error::NoQuorum`] when too few nodes answered to tell (the lease stands until
    /// [`Lease::validity`] runs out; try again).
    pub async fn extend(&mut self) -> Result<(), Error> {
        let held = &self.held;
        match extend(&self.runtime, &held.key, &held.token, held.ttl, held.ttl).await {
            Extension::Extended { valid_until } => {
                self.held.set_valid_until(valid_until);
                Ok(())
            }
            Extension::Gone => {
                self.held.lose(LostReason::TakenOver);
                Err(self.lost_error(LostReason::TakenOver, false))
            }
            Extension::Undecided(no_quorum) => Err(Error::NoQuorum(no_quorum)),
        }
    }

    /// Deletes the key on every node where it still holds this lease's token, and waits until a
    /// quorum of nodes has answered (at most the per-node timeout).
    ///
    /// The slower nodes get the release in the background after this returns, and if the caller
    /// is cancelled while waiting, the release still completes in the background. Fails with
    /// [`Error::NoQuorum`] when fewer than a quorum of nodes answered; the copies left behind
    /// expire with the ttl. (So may a copy on a slower node when the tokio runtime that drives
    /// its connection shuts down right after this returns, as at the end of `main`: a quorum of
    /// nodes is free of it, so it stops nobody while those nodes are up.)
    pub async fn release(self) -> Result<(), Error> {
        self.release_keeping(Duration::ZERO).await
    }

    /// Like [`Lease::release`], but a non-zero `keep` leaves the key to expire that long from
    /// now instead of deleting it (`min_hold`).
    pub(crate) async fn release_keeping(mut self, keep: Duration) -> Result<(), Error> {
        // From here on, a cancelled release is finished by its round (see `redlock::Round`).
        self.holding = false;
        let all = (0..self.runtime.node_count()).collect();
        let outstanding = std::mem::take(&mut self.outstanding);
        release(
            &self.runtime,
            &self.held.key,
            &self.held.token,
            all,
            keep,
            outstanding,
        )
        .await
        .map_err(Error::NoQuorum)
    }

    /// What a body running under this lease sees of it.
    pub(crate) fn info(&self) -> LeaseInfo {
        LeaseInfo {
            held: self.held.clone(),
        }
    }

    /// Why the lease was lost, if it was.
    pub(crate) fn lost(&self) -> Option<LostReason> {
        self.held.lost()
    }

    /// How long ago the lock was taken.
    pub(crate) fn held_for(&self) -> Duration {
        self.held.acquired_at.elapsed()
    }

    pub(crate) fn lost_error(&self, reason: LostReason, body_finished: bool) -> Error {
        Error::LeaseLost {
            key: self.held.key.to_string(),
            reason,
            after: self.held_for(),
            body_finished,
        }
    }

    /// Keeps the lease for a body, for as long as the returned future is polled beside it:
    /// renews it (unless `options` turn renewal off) and notices when it is lost.
    ///
    /// Nothing happens until the first renewal is due (a third of the ttl), so a short body costs
    /// one timer. From then on a task on the crate's own runtime does the work, so that renewal
    /// goes on while the body is busy; dropping the future stops it, so renewal never outlives
    /// the call. (A body that blocks its thread from before that point, never yielding, starts
    /// no renewal and loses the lease when the ttl runs out.)
    pub(crate) fn keep(&self, options: &Options) -> impl Future<Output = Infallible> + 'static {
        let (runtime, held, options) = (self.runtime.clone(), self.held.clone(), *options);
        let due = (held.acquired_at + held.ttl / RENEW_AFTER_TTL_DIVISOR).min(held.valid_until());
        async move {
            crate::driver::sleep_until(runtime.engine(), due).await;
            let engine = runtime.engine().clone();
            let _keeper = Keeper {
                task: engine.spawn(keep(runtime, held, options)),
            };
            std::future::pending().await
        }
    }
}

impl Drop for Lease {
    /// Releases on the crate's own runtime, which outlives whichever runtime, task or panic is
    /// dropping the lease.
    fn drop(&mut self) {
        if !self.holding {
            return;
        }
        let outstanding = std::mem::take(&mut self.outstanding);
        spawn_release_everywhere(&self.runtime, &self.held.key, &self.held.token, outstanding);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.held.key)
            .field("token", &self.held.token)
            .field("validity", &self.validity())
            .field("lost", &self.held.lost())
            .finish()
    }
}

/// Stops the renewal task when the call is done with the lease, however it ends.
struct Keeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `held` every third of its ttl while the body runs, and marks it lost when renewal
/// finds the key taken over, or cannot reach a quorum before the lease runs out, or `max_hold`
/// is reached (renewal off: when the lease runs out).
async fn keep(runtime: Runtime, held: Arc<Held>, options: Options) {
    let renew_after = held.ttl / RENEW_AFTER_TTL_DIVISOR;
    let retry_after = held.ttl / RENEW_RETRY_TTL_DIVISOR;
    let hold_until = options.max_hold.map(|max_hold| held.acquired_at + max_hold);
    let mut next = held.acquired_at + renew_after;
    loop {
        // How long the next extension may keep the key: a ttl, cut short by `max_hold`.
        let keep = match hold_until {
            Some(until) => until.saturating_duration_since(next).min(held.ttl),
            None => held.ttl,
        };
        if !options.renew || keep.is_zero() {
            tokio::time::sleep_until(held.valid_until().into()).await;
            held.lose(if options.renew {
                LostReason::MaxHold
            } else {
                LostReason::Expired
            });
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        let started = Instant::now();
        match extend(&runtime, &held.key, &held.token, keep, held.ttl).await {
            Extension::Extended { valid_until } => {
                held.set_valid_until(valid_until);
                next = started + renew_after;
            }
            Extension::Gone => {
                tracing::warn!(
                    key = &*held.key,
                    "lease lost: a majority of nodes no longer holds our token"
                );
                held.lose(LostReason::TakenOver);
                return;
            }
            Extension::Undecided(no_quorum) => {
                tracing::debug!(key = &*held.key, error = %no_quorum, "renewal failed; retrying while the lease lasts");
                next = Instant::now() + retry_after;
                if next >= held.valid_until() {
                    tokio::time::sleep_until(held.valid_until().into()).await;
                    tracing::warn!(
                        key = &*held.key,
                        "lease lost: renewal could not reach a quorum in time"
                    );
                    held.lose(LostReason::NoQuorum);
                    return;
                }
            }
        }
    }
}

/// What a `#[singleton]` body sees of the lease it runs under; from [`lease()`].
///
/// ```no_run
/// use cluster_singleton_runtime::lease;
///
/// async fn charge_invoices() {
///     let lease = lease().expect("called inside a #[singleton] body");
///     println!("idempotency key for this run: {}", lease.token());
///     if !lease.is_held() {
///         return; // stop: another machine may be running this job now
///     }
/// }
/// ```
#[derive(Clone)]
pub struct LeaseInfo {
    held: Arc<Held>,
}

impl LeaseInfo {
    /// The Redis key, with the runtime's prefix.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// This acquisition's random token (128 bits, hex): unique to this run, usable as an
    /// idempotency key downstream.
    pub fn token(&self) -> &str {
        &self.held.token
    }

    /// With `fencing = true`: a number larger than that of every earlier holder of this key
    /// (see [`Lease::fencing_token`]); `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token
    }

    /// How much longer the lock is safe to rely on, renewals included; zero once lost.
    pub fn validity(&self) -> Duration {
        self.held.validity()
    }

    /// Whether the lease is still held: not lost, and still valid.
    pub fn is_held(&self) -> bool {
        !self.held.validity().is_zero()
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.lost()
    }

    /// Resolves when the lease is lost, with the reason; never, if it is kept to the end.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut lost = self.held.lost.subscribe();
        async move {
            let reason = match lost.wait_for(Option::is_some).await {
                Ok(reason) => *reason,
                Err(_closed) => None,
            };
            match reason {
                Some(reason) => reason,
                // The lease is gone with its holder: nothing is left to lose.
                None => std::future::pending().await,
            }
        }
    }

    /// Runs `future` with this lease as the task's current one.
    pub(crate) fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl fmt::Debug for LeaseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseInfo")
            .field("key", &self.held.key)
            .field("token", &self.held.token)
            .field("validity", &self.validity())
            .field("lost", &self.held.lost())
            .finish()
    }
}

/// The lease of the `#[singleton]` body running in this task (or of
/// [`Runtime::run_with`](crate::Runtime::run_with)'s body); `None` elsewhere.
///
/// ```no_run
/// # async fn body() {
/// if let Some(lease) = cluster_singleton_runtime::lease() {
///     println!("running under {} until at least {:?} from now", lease.key(), lease.validity());
/// }
/// # }
/// ```
pub fn lease() -> Option<LeaseInfo> {
    CURRENT.try_with(LeaseInfo::clone).ok()
}
