//! A held lock: released when done with or dropped, renewed while a body runs, and visible to
//! that body through [`lease()`].
//!
//! A lease is valid until a deadline on this machine's monotonic clock: what was left of the ttl
//! after taking it, or after the last extension that a quorum confirmed, less the drift
//! allowance. The deadline only moves when an extension's answers arrive before it; once it has
//! passed, the lease is lost for good, whatever an extension still on its way says later. So
//! "lost" is never later than the end of the validity: every wait for it (the body's
//! cancellation, [`LeaseInfo::lost`]) has a timer at the deadline, and the call checks it once
//! more when the body ends.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

mod info;
mod renewal;

pub(crate) use renewal::Renewer;

pub use info::{lease, LeaseInfo};

use crate::nodes::Nodes;
use crate::redlock::{release_in_background, start_release, Extension, Taken};
use crate::{driver, Error, LostReason};

/// What the holder of a lease and the body running under it share.
pub(crate) struct Held {
    key: Arc<str>,
    token: Arc<str>,
    ttl: Duration,
    acquired_at: Instant,
    fencing_token: Option<u64>,
    validity: Mutex<Validity>,
    lost: watch::Sender<Option<LostReason>>,
    /// Where the deadline's timers run: the crate's own runtime, whatever the caller's has.
    crate_thread: Handle,
    /// The runtime's renewal, which queues the lease while a body runs (see [`Lease::renewal`]).
    renewer: Arc<Renewer>,
    /// Set when the lease's release begins: no extension of it is sent after that (see
    /// [`Held::stop_renewal`]).
    stopped: AtomicBool,
    /// Whether renewal keeps the lease (then a step of a node's clock renews it at once, see
    /// `renewal::renew`); set when the body starts.
    renews: AtomicBool,
}

/// Until when a lease is valid, and why it is lost if that passes.
struct Validity {
    until: Instant,
    /// The reason given when `until` passes: what kept the lease from being extended.
    if_it_runs_out: LostReason,
    /// Released, or its call is over: it can no longer be lost.
    ended: bool,
}

impl Held {
    fn validity(&self) -> std::sync::MutexGuard<'_, Validity> {
        self.validity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the lease lost for `reason`, unless it was lost (or ended) already.
    pub(crate) fn lose(&self, reason: LostReason) {
        if self.validity().ended {
            return;
        }
        self.lost.send_if_modified(|lost| {
            let first = lost.is_none();
            if first {
                *lost = Some(reason);
            }
            first
        });
    }

    /// Why the lease is lost, if it is: it was marked lost, or its deadline has passed (which
    /// marks it lost now, for good). `None` once it ended.
    pub(crate) fn check(&self) -> Option<LostReason> {
        let validity = self.validity();
        if validity.ended {
            return None;
        }
        if let Some(reason) = *self.lost.borrow() {
            return Some(reason);
        }
        if Instant::now() < validity.until {
            return None;
        }
        let reason = validity.if_it_runs_out;
        self.lost.send_replace(Some(reason));
        Some(reason)
    }

    /// Moves the deadline to `until`, if the lease is still valid now: an extension whose
    /// quorum answered only after the deadline does not bring a lost lease back. Returns
    /// whether it did.
    fn extend_to(&self, until: Instant) -> bool {
        if self.check().is_some() {
            return false;
        }
        let mut validity = self.validity();
        validity.until = until;
        validity.if_it_runs_out = LostReason::Expired;
        true
    }

    /// What to call the loss if the deadline passes from now on.
    fn if_it_runs_out(&self, reason: LostReason) {
        self.validity().if_it_runs_out = reason;
    }

    /// The lease is released, or its call is over: nothing can lose it any more.
    fn end(&self) {
        self.validity().ended = true;
    }

    fn remaining(&self) -> Duration {
        if self.check().is_some() {
            return Duration::ZERO;
        }
        let validity = self.validity();
        if validity.ended {
            return Duration::ZERO;
        }
        validity.until.saturating_duration_since(Instant::now())
    }

    /// Resolves when the lease is lost, at its deadline at the latest; never once it ended.
    fn lost(self: Arc<Self>) -> impl Future<Output = LostReason> + Send + 'static {
        let mut changes = self.lost.subscribe();
        async move {
            loop {
                if let Some(reason) = self.check() {
                    return reason;
                }
                let (until, ended) = {
                    let validity = self.validity();
                    (validity.until, validity.ended)
                };
                if ended {
                    return std::future::pending().await;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    () = driver::sleep_until(&self.crate_thread, until) => {}
                }
            }
        }
    }

    /// Stops renewal, and every other extension of the lease: every extension sent is then
    /// queued on its connections ahead of what the caller sends next (a release), so that none
    /// can put a released key back.
    pub(crate) fn stop_renewal(&self) {
        self.renewer.stop(self);
    }

    fn is_ended(&self) -> bool {
        self.validity().ended
    }

    /// Whether renewal keeps the lease.
    pub(crate) fn renews(&self) -> bool {
        self.renews.load(Ordering::SeqCst)
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub(crate) fn token(&self) -> &Arc<str> {
        &self.token
    }
}

/// The leases a runtime holds now, which `shutdown` releases; closed once it began, after which
/// a lease just taken is not added (and its caller gives it back at once).
#[derive(Default)]
pub(crate) struct Register {
    inner: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    leases: HashMap<u64, Weak<Held>>,
    next: u64,
    closed: bool,
}

impl Register {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a lease; its entry, or `None` once closed.
    fn add(&self, held: &Arc<Held>) -> Option<u64> {
        let mut register = self.lock();
        if register.closed {
            return None;
        }
        let entry = register.next;
        register.next += 1;
        register.leases.insert(entry, Arc::downgrade(held));
        Some(entry)
    }

    /// Takes a released (or dropped) lease out.
    fn remove(&self, entry: u64) {
        self.lock().leases.remove(&entry);
    }

    /// The leases held now.
    pub(crate) fn held(&self) -> Vec<Arc<Held>> {
        let register = self.lock();
        register.leases.values().filter_map(Weak::upgrade).collect()
    }

    /// Closes the register, and returns the leases that were in it: no lease is added after
    /// this, so none is taken after `shutdown` began without being given back.
    pub(crate) fn close(&self) -> Vec<Arc<Held>> {
        let mut register = self.lock();
        register.closed = true;
        register
            .leases
            .drain()
            .filter_map(|(_, held)| held.upgrade())
            .collect()
    }
}

/// A lock held on a quorum of Redis nodes, from [`Runtime::lock`](crate::Runtime::lock).
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
/// # async fn job() -> Result<(), cluster_singleton::Error> {
/// if let Some(mut lease) = cluster_singleton::runtime::lock("nightly-report", Duration::from_secs(60)).await? {
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
    nodes: Arc<Nodes>,
    held: Arc<Held>,
    register: Arc<Register>,
    /// Its entry in the runtime's register of held leases, which `shutdown` releases; `None`
    /// when the runtime was already shut down (see [`Lease::new`]).
    registered: Option<u64>,
    /// Cleared by `release`, so that `Drop` knows there is nothing left to do.
    holding: bool,
    /// Steps of the nodes' clocks seen since before the lock was taken, for renewal (see
    /// `renewal::renew`).
    clock_jumps: Option<watch::Receiver<u64>>,
}

impl Lease {
    /// The lease of a lock just taken. Taken after `shutdown` began, it is not registered: the
    /// caller gives it back at once (see [`Lease::is_registered`]).
    pub(crate) fn new(
        nodes: &Arc<Nodes>,
        register: &Arc<Register>,
        renewer: &Arc<Renewer>,
        taken: Taken,
    ) -> Self {
        let held = Arc::new(Held {
            key: taken.key,
            token: taken.token,
            ttl: taken.ttl,
            acquired_at: taken.acquired_at,
            fencing_token: taken.fencing_token,
            validity: Mutex::new(Validity {
                until: taken.valid_until,
                if_it_runs_out: LostReason::Expired,
                ended: false,
            }),
            lost: watch::Sender::new(None),
            crate_thread: nodes.crate_thread().clone(),
            renewer: renewer.clone(),
            renews: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        Lease {
            registered: register.add(&held),
            register: register.clone(),
            nodes: nodes.clone(),
            held,
            holding: true,
            clock_jumps: taken.clock_jumps,
        }
    }

    /// Whether the runtime registered the lease; not once it is shut down.
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.is_some()
    }

    /// The Redis key of the lock (`singleton:lock:daily-email`).
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// This acquisition's token, the value of the key on the nodes: 128 random bits as 32 hex
    /// digits, a space, and the holder id ([`Config::holder_id`](crate::Config::holder_id)).
    /// Unique to this acquisition, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        &self.held.token
    }

    /// With fencing on ([`Options::fencing`](crate::Options::fencing)): a number larger than that of every earlier
    /// holder of this key, to pass to the storage the job writes to, which can then refuse
    /// writes from a holder whose lease ran out while it was paused. `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token
    }

    /// How much longer the lock is safe to rely on: what was left of the ttl after taking (or
    /// last extending) it, less the clock-drift allowance, counted down since. Zero once it has
    /// run out or was lost.
    pub fn validity(&self) -> Duration {
        self.held.remaining()
    }

    /// Extends the lock to expire one ttl from now, on every node where the key still holds
    /// this lease's token, and puts the token back on nodes where the key is absent (a node that
    /// missed the lock, or lost it), so that the lease regains the fault tolerance of all its
    /// nodes.
    ///
    /// Fails with [`Error::LeaseLost`] when the lease is lost: its validity ran out before a
    /// quorum confirmed the extension (an extension that arrives later does not bring it back),
    /// or a majority of nodes holds another token (someone may have taken the key: stop relying
    /// on it). Fails with [`Error::NoQuorum`] when too few nodes answered to tell (the lease
    /// stands until [`Lease::validity`] runs out; try again).
    pub async fn extend(&mut self) -> Result<(), Error> {
        let held = &self.held;
        self.nodes.open_connections().await;
        // Looked at only after those waits: a lease lost meanwhile (`shutdown` released it) is not
        // put back.
        if let Some(reason) = held.check() {
            return Err(self.lost_error(reason, false));
        }
        let Some(extending) = held.renewer.extend_now(&self.nodes, held) else {
            let reason = held.check().unwrap_or(LostReason::Shutdown);
            return Err(self.lost_error(reason, false));
        };
        let mut extensions = extending.finish().await;
        match extensions.pop().expect("one extension per lease") {
            Extension::Extended { valid_until } if held.extend_to(valid_until) => Ok(()),
            Extension::Extended { .. } => {
                let reason = held.check().unwrap_or(LostReason::Expired);
                Err(self.lost_error(reason, false))
            }
            Extension::Gone => {
                held.lose(LostReason::TakenOver);
                Err(self.lost_error(LostReason::TakenOver, false))
            }
            Extension::Undecided(no_quorum) => Err(no_quorum.into_error()),
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
        self.held.end();
        self.held.stop_renewal();
        if let Some(entry) = self.registered.take() {
            self.register.remove(entry);
        }
        // Cancelled while this waits for its turn, the lease is still held, and `Drop` gives it
        // back in the background.
        let releasing = start_release(&self.nodes, &self.held.key, &self.held.token, keep).await;
        // From here on, a cancelled release is finished by its round (see `round::Round`).
        self.holding = false;
        releasing
            .finish()
            .await
            .map_err(|no_quorum| no_quorum.into_error())
    }

    /// The key and the token, for a round that checks the lock is still ours.
    pub(crate) fn key_and_token(&self) -> (&Arc<str>, &Arc<str>) {
        (&self.held.key, &self.held.token)
    }

    /// What a body running under this lease sees of it.
    pub(crate) fn info(&self) -> LeaseInfo {
        LeaseInfo {
            held: self.held.clone(),
        }
    }

    /// Why the lease is lost, if it is: marked lost, or past its deadline (see [`Held::check`]).
    pub(crate) fn lost(&self) -> Option<LostReason> {
        self.held.check()
    }

    /// How long ago the lock was taken.
    pub(crate) fn held_for(&self) -> Duration {
        self.held.acquired_at.elapsed()
    }

    /// Marks the lease lost for `reason`.
    pub(crate) fn lose(&self, reason: LostReason) {
        self.held.lose(reason);
    }

    /// Gives up a lost lease: releases (in the background, see `Drop`) whatever copies of our
    /// token are left, and returns the error that says why the body's run does not count.
    pub(crate) fn give_up(self, reason: LostReason, body_finished: bool) -> Error {
        self.lost_error(reason, body_finished)
    }

    pub(crate) fn lost_error(&self, reason: LostReason, body_finished: bool) -> Error {
        Error::LeaseLost {
            key: self.held.key.to_string(),
            reason,
            after: self.held_for(),
            body_finished,
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
        self.held.end();
        if let Some(entry) = self.registered {
            self.register.remove(entry);
        }
        let held = self.held.clone();
        let (key, token) = (held.key.clone(), held.token.clone());
        release_in_background(&self.nodes, key, token, async move {
            held.stop_renewal();
        });
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.held.key)
            .field("token", &self.held.token)
            .field("validity", &self.validity())
            .field("lost", &self.held.check())
            .finish()
    }
}
