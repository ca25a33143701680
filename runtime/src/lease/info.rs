//! What a `#[singleton]` body sees of its lease: [`lease()`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Held;
use crate::LostReason;

tokio::task_local! {
    /// The lease of the `#[singleton]` body running in this task.
    static CURRENT: LeaseInfo;
}

/// What a `#[singleton]` body sees of the lease it runs under; from [`lease()`].
///
/// ```no_run
/// use cluster_singleton::lease;
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
    pub(super) held: Arc<Held>,
}

impl LeaseInfo {
    /// The Redis key, with the runtime's prefix.
    pub fn key(&self) -> &str {
        self.held.claim.key()
    }

    /// This acquisition's token (see [`Lease::token`](crate::Lease::token)): 32 random hex digits, a space and the
    /// holder id; unique to this run, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        self.held.claim.token()
    }

    /// With `fencing = true`: a number larger than that of every earlier holder of this key
    /// (see [`Lease::fencing_token`](crate::Lease::fencing_token)); `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token.map(std::num::NonZeroU64::get)
    }

    /// How much longer the lock is safe to rely on, renewals included; zero once lost or
    /// released.
    pub fn validity(&self) -> Duration {
        self.held.remaining()
    }

    /// Whether the lease is still held: not lost, not released, and still valid.
    pub fn is_held(&self) -> bool {
        !self.held.remaining().is_zero()
    }

    /// Why the lease was lost, if it was (its validity running out counts).
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.check()
    }

    /// Resolves when the lease is lost, with the reason, at the end of its validity at the
    /// latest (whatever renewal is doing, and even with renewal off; later only while code
    /// blocks the crate's own thread, which runs the deadlines' timer, such as a log writer
    /// that stalls); never, if the call ends with the lease kept.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.held.clone().lost()
    }

    /// Runs `future` with this lease as the task's current one.
    pub(crate) fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl fmt::Debug for LeaseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseInfo")
            .field("key", &self.held.claim.key())
            .field("token", &self.held.claim.token())
            .field("validity", &self.validity())
            .field("lost", &self.held.check())
            .finish()
    }
}

/// The lease of the `#[singleton]` body running in this task (or of
/// [`Runtime::run_with`](crate::Runtime::run_with)'s body); `None` elsewhere.
///
/// ```no_run
/// # async fn body() {
/// if let Some(lease) = cluster_singleton::lease() {
///     println!("running under {} until at least {:?} from now", lease.key(), lease.validity());
/// }
/// # }
/// ```
pub fn lease() -> Option<LeaseInfo> {
    CURRENT.try_with(LeaseInfo::clone).ok()
}
