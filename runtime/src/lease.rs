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
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::nodes::Nodes;
use crate::redlock::{extend, release, release_in_background, Extension, Taken};
use crate::{driver, Error, Options};

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
    /// The lease's validity ran out before an extension moved it: renewal is off, or came too
    /// late (a body that blocked the thread before renewal began, a paused process).
    Expired,
    /// The runtime was shut down ([`Runtime::shutdown`](crate::Runtime::shutdown)), which
    /// released the lock.
    Shutdown,
    /// A Redis node's clock stepped forward, so our key may have expired early there, and
    /// renewal, run at once, could not confirm the lease on a quorum of the other nodes, or
    /// nothing renews the lease to confirm it (see `Config::detect_clock_jumps`).
    ClockJumped,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::NoQuorum => "renewing it could not reach a quorum of Redis nodes",
            LostReason::TakenOver => "a majority of Redis nodes no longer holds it",
            LostReason::MaxHold => "the body ran longer than `max_hold`",
            LostReason::Expired => {
                "its validity ran out before it was extended (renewal off, or too late)"
            }
            LostReason::Shutdown => "the runtime was shut down",
            LostReason::ClockJumped => {
                "a Redis node's clock stepped forward, and a quorum of the other nodes did not \
                 confirm it (or nothing renews it to ask them)"
            }
        })
    }
}

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
    engine: Handle,
    /// The renewal task, once started (see [`Lease::keep`]).
    renewal: Mutex<Option<JoinHandle<()>>>,
    /// Whether renewal keeps the lease (then a step of a node's clock renews it at once, see
    /// [`keep`]); set when the body starts.
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
                    () = driver::sleep_until(&self.engine, until) => {}
                }
            }
        }
    }

    /// Stops renewal, and waits until it has stopped: every extension it sent is then queued on
    /// its connections ahead of what the caller sends next (a release), so that none can put a
    /// released key back.
    pub(crate) async fn stop_renewal(&self) {
        if let Some(renewal) = self.abort_renewal() {
            let _ = renewal.await;
        }
    }

    /// Asks the renewal task, if it was started, to stop; the handle to wait for it.
    fn abort_renewal(&self) -> Option<JoinHandle<()>> {
        let renewal = self
            .renewal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()?;
        renewal.abort();
        Some(renewal)
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
    /// [`keep`]).
    clock_jumps: Option<watch::Receiver<u64>>,
}

impl Lease {
    /// The lease of a lock just taken. Taken after `shutdown` began, it is not registered: the
    /// caller gives it back at once (see [`Lease::is_registered`]).
    pub(crate) fn new(nodes: &Arc<Nodes>, register: &Arc<Register>, taken: Taken) -> Self {
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
            engine: nodes.engine().clone(),
            renewal: Mutex::new(None),
            renews: AtomicBool::new(false),
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
        if let Some(reason) = held.check() {
            return Err(self.lost_error(reason, false));
        }
        match extend(&self.nodes, &held.key, &held.token, held.ttl).await {
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
        // From here on, a cancelled release is finished by its round (see `round::Round`).
        self.holding = false;
        self.held.end();
        self.held.stop_renewal().await;
        if let Some(entry) = self.registered {
            self.register.remove(entry);
        }
        release(&self.nodes, &self.held.key, &self.held.token, keep)
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

    /// Keeps the lease for a body, for as long as the returned future is polled beside it:
    /// renews it, unless `options` turn renewal off.
    ///
    /// Nothing happens until the first renewal is due (a third of the ttl), so a short body costs
    /// one timer. From then on a task on the crate's own runtime does the work, so that renewal
    /// goes on while the body is busy; dropping the future stops it, so renewal never outlives
    /// the call. (A body that blocks its thread from before that point, never yielding, starts
    /// no renewal: its lease runs out, and the call says so when the body ends.)
    pub(crate) fn keep(&self, options: &Options) -> impl Future<Output = Infallible> + 'static {
        let (nodes, held, options) = (self.nodes.clone(), self.held.clone(), *options);
        let due = held.acquired_at + held.ttl / RENEW_AFTER_TTL_DIVISOR;
        // Watched from before the lock was taken: a step seen before renewal begins counts too.
        let mut clock_jumps = self.clock_jumps.clone();
        held.renews.store(options.renew, Ordering::SeqCst);
        async move {
            if options.renew {
                let jumped = tokio::select! {
                    () = driver::sleep_until(nodes.engine(), due) => false,
                    () = clock_jumped(&mut clock_jumps) => true,
                };
                let engine = nodes.engine().clone();
                let renewal = keep(nodes, held.clone(), options, clock_jumps, jumped);
                let task = engine.spawn(renewal);
                *held
                    .renewal
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
                let _keeper = Keeper(held);
                std::future::pending::<()>().await;
            }
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
        self.held.end();
        if let Some(entry) = self.registered {
            self.register.remove(entry);
        }
        let held = self.held.clone();
        let (key, token) = (held.key.clone(), held.token.clone());
        release_in_background(&self.nodes, key, token, async move {
            held.stop_renewal().await;
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

/// Stops the renewal task when the call is done with the lease, however it ends (a release stops
/// it first, and waits for it: see [`Held::stop_renewal`]).
struct Keeper(Arc<Held>);

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.abort_renewal();
    }
}

/// Renews `held` every third of its ttl while the body runs, until it is lost: renewal finds the
/// key taken over, or cannot reach a quorum before the deadline, or `max_hold` is reached. The
/// deadline itself is kept by [`Held`], not here: a renewal still waiting for answers cannot
/// make the loss late.
///
/// When a node's clock steps forward, our key may have expired early there, so the lease's
/// validity no longer stands on its own: it is renewed at once (`jumped` when a step was seen
/// before this began), on the other nodes (the stepped one is young now), and lost if they do
/// not confirm it.
async fn keep(
    nodes: Arc<Nodes>,
    held: Arc<Held>,
    options: Options,
    mut clock_jumps: Option<watch::Receiver<u64>>,
    jumped: bool,
) {
    let renew_after = held.ttl / RENEW_AFTER_TTL_DIVISOR;
    let retry_after = held.ttl / RENEW_RETRY_TTL_DIVISOR;
    // Checked against overflow when the call started.
    let hold_until = options.max_hold.map(|max_hold| held.acquired_at + max_hold);
    let mut next = held.acquired_at + renew_after;
    let mut woken_by_a_clock_jump = jumped;
    loop {
        if !woken_by_a_clock_jump {
            woken_by_a_clock_jump = tokio::select! {
                () = tokio::time::sleep_until(next.into()) => false,
                () = clock_jumped(&mut clock_jumps) => true,
            };
        }
        let after_a_clock_jump = std::mem::take(&mut woken_by_a_clock_jump);
        if held.check().is_some() || held.is_ended() {
            return;
        }
        // How long the extension may keep the key: a ttl, cut short by `max_hold`.
        let keep = match hold_until {
            Some(until) => until
                .saturating_duration_since(Instant::now())
                .min(held.ttl),
            None => held.ttl,
        };
        // Cut short by `max_hold`: the last extension, after which the lease runs out for it.
        let last = keep < held.ttl;
        if keep.is_zero() {
            held.if_it_runs_out(LostReason::MaxHold);
            return;
        }
        // If the deadline passes while this round waits, renewal could not reach a quorum (or,
        // for the last one, `max_hold` is what ends the lease).
        held.if_it_runs_out(if last {
            LostReason::MaxHold
        } else {
            LostReason::NoQuorum
        });
        let started = Instant::now();
        match extend(&nodes, &held.key, &held.token, keep).await {
            Extension::Extended { valid_until } => {
                if !held.extend_to(valid_until) {
                    return;
                }
                if last {
                    held.if_it_runs_out(LostReason::MaxHold);
                    return;
                }
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
            Extension::Undecided(no_quorum) if after_a_clock_jump => {
                tracing::warn!(key = &*held.key, error = %no_quorum, "lease lost: a node's clock stepped forward, and the other nodes did not confirm the lease");
                held.lose(LostReason::ClockJumped);
                return;
            }
            Extension::Undecided(no_quorum) => {
                tracing::debug!(key = &*held.key, error = %no_quorum, "renewal failed; retrying while the lease lasts");
                next = Instant::now() + retry_after;
            }
        }
    }
}

/// Resolves when a node's clock is next seen to step forward; never when nothing watches the
/// clocks.
async fn clock_jumped(clock_jumps: &mut Option<watch::Receiver<u64>>) {
    if let Some(jumps) = clock_jumps {
        if jumps.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
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
    held: Arc<Held>,
}

impl LeaseInfo {
    /// The Redis key, with the runtime's prefix.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// This acquisition's token (see [`Lease::token`]): 32 random hex digits, a space and the
    /// holder id; unique to this run, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        &self.held.token
    }

    /// With `fencing = true`: a number larger than that of every earlier holder of this key
    /// (see [`Lease::fencing_token`]); `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token
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
    /// latest (whatever renewal is doing, and even with renewal off); never, if the call ends
    /// with the lease kept.
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
            .field("key", &self.held.key)
            .field("token", &self.held.token)
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
