//! A held lock: released when done with or dropped, renewed while a body runs, and visible to
//! that body through [`lease()`].
//!
//! A lease is valid until a deadline on this machine's monotonic clock: what was left of the ttl
//! after taking it, or after the last extension that a quorum confirmed, less the drift
//! allowance. The deadline only moves when an extension's answers arrive before it; once it has
//! passed, the lease is lost for good, whatever an extension still on its way says later. So
//! "lost" is never later than the end of the validity: while something waits for it (the body's
//! cancellation, [`LeaseInfo::lost`]), the runtime's one deadline timer marks the lease lost at
//! its deadline, which wakes the waiters (see `deadlines`), and the call checks it once more when
//! the body ends.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

mod deadlines;
mod info;
mod renewal;

pub(crate) use deadlines::Deadlines;
pub(crate) use renewal::Renewer;

pub use info::{lease, LeaseInfo};

use crate::claim::Claim;
use crate::node::LeaseToExtend;
use crate::nodes::Nodes;
use crate::redlock::{release_in_background, start_release, Extension, Taken};
use crate::{Error, LostReason};

/// What the holder of a lease and the body running under it share.
pub(crate) struct Held {
    claim: Claim,
    ttl: Duration,
    acquired_at: Instant,
    fencing_token: Option<NonZeroU64>,
    state: Mutex<State>,
    /// Wakes whatever waits in [`Held::lost`] when the lease is lost.
    lost_now: Notify,
    /// The runtime's one timer for the deadlines of leases being waited on.
    deadlines: Arc<Deadlines>,
    /// The runtime's renewal, which queues the lease while a body runs (see [`Lease::renewal`]).
    renewer: Arc<Renewer>,
    /// Set when the lease's release begins: no extension of it is sent after that (see
    /// [`Held::stop_renewal`]).
    stopped: AtomicBool,
    /// Whether renewal keeps the lease (then a step of a node's clock renews it at once, see
    /// `renewal::renew`); set when the body starts.
    renews: AtomicBool,
}

/// Until when a lease is valid, whether it was lost, and where the runtime's queues keep it.
struct State {
    until: Instant,
    /// The reason given when `until` passes: what kept the lease from being extended.
    if_it_runs_out: LostReason,
    /// Why it was lost; set once, for good.
    lost: Option<LostReason>,
    /// Released, or its call is over: it can no longer be lost.
    ended: bool,
    /// Its entry in the deadlines' queue, while something waits in [`Held::lost`].
    watched: Option<deadlines::Entry>,
    /// Its place in the renewal queue, while it is queued there.
    queued: Option<renewal::Place>,
    /// How many steps of the nodes' clocks had been seen when the lease was last confirmed on
    /// a quorum (by its acquisition, or by a renewal round sent after them), in the count's low
    /// bits (compared only for equality: the count moves by one per step). A step seen since
    /// may have expired its key early on the stepped node: see [`Lease::lost`].
    steps_confirmed: u32,
}

/// The lease ended: released, or its call is over.
struct Ended;

impl State {
    /// Why the lease is lost as of `now`, marking it lost for good if its deadline has passed;
    /// `None` if it ended without being lost (a loss stays visible after the end, to waiters that
    /// are polled only then). Returns, too, whether this marked it lost.
    fn lost_at(&mut self, now: Instant) -> (Option<LostReason>, bool) {
        if self.lost.is_some() {
            return (self.lost, false);
        }
        if self.ended {
            return (None, false);
        }
        if now >= self.until {
            self.lost = Some(self.if_it_runs_out);
            return (self.lost, true);
        }
        (self.lost, false)
    }
}

impl Held {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the waiters of a lease that `state` has just marked lost, and takes it out of the
    /// deadlines' queue.
    fn lost_just_now(&self, mut state: MutexGuard<'_, State>) {
        if let Some(entry) = state.watched.take() {
            self.deadlines.leave(entry);
        }
        drop(state);
        self.lost_now.notify_waiters();
    }

    /// The lease's state, locked, while the lease is valid at `now`: not lost, not ended, its
    /// deadline ahead (a deadline that has passed marks it lost here); `None` otherwise.
    fn while_valid(&self, now: Instant) -> Option<MutexGuard<'_, State>> {
        let mut state = self.state();
        let (lost, just_now) = state.lost_at(now);
        if just_now {
            self.lost_just_now(state);
            return None;
        }
        (lost.is_none() && !state.ended).then_some(state)
    }

    /// Marks the lease lost for `reason`, unless it was lost (or ended) already.
    pub(crate) fn lose(&self, reason: LostReason) {
        let mut state = self.state();
        if state.ended || state.lost.is_some() {
            return;
        }
        state.lost = Some(reason);
        self.lost_just_now(state);
    }

    /// Why the lease is lost, if it is: it was marked lost, or its deadline has passed (which
    /// marks it lost now, for good). `None` once it ended.
    pub(crate) fn check(&self) -> Option<LostReason> {
        let mut state = self.state();
        let (lost, just_now) = state.lost_at(Instant::now());
        if just_now {
            self.lost_just_now(state);
        }
        lost
    }

    /// The deadlines' task found `entry` due, if it is still the lease's entry: marks the lease
    /// lost if its deadline has passed, or, when an extension moved the deadline since the entry
    /// was made (which leaves the entry where it is: one entry per two or three renewals rather
    /// than a move per renewal), enters the lease again at the new deadline.
    fn deadline_passed(self: &Arc<Self>, entry: deadlines::Entry) {
        let mut state = self.state();
        if state.watched != Some(entry) {
            return;
        }
        state.watched = None;
        let (lost, just_now) = state.lost_at(Instant::now());
        if just_now {
            self.lost_just_now(state);
        } else if lost.is_none() && !state.ended {
            // Extended since the entry was made: it waits for the new deadline.
            let until = state.until;
            state.watched = Some(self.deadlines.enter(self, until, None));
        }
    }

    /// Moves the deadline to `until`, if the lease is still valid now: an extension whose
    /// quorum answered only after the deadline does not bring a lost lease back. With
    /// `confirms`, the extension was sent after that many steps of the nodes' clocks had been
    /// seen (and handled: no stepped node's answer counted), so it confirms the lease through
    /// them. Returns whether it did.
    fn extend_to(self: &Arc<Self>, until: Instant, confirms: Option<u64>) -> bool {
        let Some(mut state) = self.while_valid(Instant::now()) else {
            return false;
        };
        if let Some(steps) = confirms {
            state.steps_confirmed = steps as u32;
        }
        state.until = until;
        state.if_it_runs_out = LostReason::Expired;
        // An entry may come before the deadline (its task then enters the lease again at the
        // deadline), never after it: only a deadline moved earlier (`max_hold`) moves the entry.
        if let Some(entry) = state.watched.filter(|entry| until < entry.0) {
            state.watched = Some(self.deadlines.enter(self, until, Some(entry)));
        }
        true
    }

    /// What to call the loss if the deadline passes from now on.
    fn if_it_runs_out(&self, reason: LostReason) {
        self.state().if_it_runs_out = reason;
    }

    /// What renewal extends the lease by `now`: a ttl, cut short at `hold_until` (`max_hold`);
    /// `None` when it is lost or over, or at its `max_hold` (it then runs out for it).
    fn extension_due(&self, hold_until: Option<Instant>, now: Instant) -> Option<Duration> {
        let mut state = self.while_valid(Instant::now())?;
        let keep = match hold_until {
            Some(until) => until.saturating_duration_since(now).min(self.ttl),
            None => self.ttl,
        };
        // If the deadline passes while this extension waits, renewal could not reach a quorum
        // (or, for the last one, `max_hold` is what ends the lease).
        state.if_it_runs_out = if keep < self.ttl {
            LostReason::MaxHold
        } else {
            LostReason::NoQuorum
        };
        (!keep.is_zero()).then_some(keep)
    }

    /// The lease is released, or its call is over: nothing can lose it any more.
    fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        if let Some(entry) = state.watched.take() {
            self.deadlines.leave(entry);
        }
    }

    fn remaining(&self) -> Duration {
        let now = Instant::now();
        self.while_valid(now).map_or(Duration::ZERO, |state| {
            state.until.saturating_duration_since(now)
        })
    }

    /// Resolves when the lease is lost, at its deadline at the latest; never once it ended.
    async fn lost(self: Arc<Self>) -> LostReason {
        loop {
            let lost_now = self.lost_now.notified();
            let mut lost_now = std::pin::pin!(lost_now);
            // Enabled before the state is read: a loss marked after this wakes it.
            lost_now.as_mut().enable();
            match self.lost_or_watched() {
                Ok(Some(reason)) => return reason,
                Ok(None) => lost_now.await,
                Err(Ended) => return std::future::pending().await,
            }
        }
    }

    /// For [`Held::lost`]: why the lease is lost, or `None` when it is still valid (and then in
    /// the deadlines' queue, whose task marks it lost at its deadline).
    fn lost_or_watched(self: &Arc<Self>) -> Result<Option<LostReason>, Ended> {
        let mut state = self.state();
        let (lost, just_now) = state.lost_at(Instant::now());
        if just_now {
            self.lost_just_now(state);
        } else if lost.is_none() && state.ended {
            return Err(Ended);
        } else if lost.is_none() && state.watched.is_none() {
            let until = state.until;
            state.watched = Some(self.deadlines.enter(self, until, None));
        }
        Ok(lost)
    }

    /// Stops renewal, and every other extension of the lease: every extension sent is then
    /// queued on its connections ahead of what the caller sends next (a release), so that none
    /// can put a released key back.
    pub(crate) fn stop_renewal(&self) {
        self.renewer.stop(self);
    }

    /// Whether renewal keeps the lease.
    pub(crate) fn renews(&self) -> bool {
        self.renews.load(Ordering::SeqCst)
    }

    /// The lease in an extension by `keep`.
    fn to_extend_by(&self, keep: Duration) -> LeaseToExtend<'_> {
        LeaseToExtend {
            key: self.claim.key(),
            token: self.claim.token(),
            keep,
        }
    }

    pub(crate) fn claim(&self) -> &Claim {
        &self.claim
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
        deadlines: &Arc<Deadlines>,
        taken: Taken,
    ) -> Self {
        let held = Arc::new(Held {
            claim: taken.claim,
            ttl: taken.ttl,
            acquired_at: taken.acquired_at,
            fencing_token: taken.fencing_token,
            state: Mutex::new(State {
                until: taken.valid_until,
                if_it_runs_out: LostReason::Expired,
                lost: None,
                ended: false,
                watched: None,
                queued: None,
                steps_confirmed: taken.steps_seen as u32,
            }),
            lost_now: Notify::new(),
            deadlines: deadlines.clone(),
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
        self.held.claim.key()
    }

    /// This acquisition's token, the value of the key on the nodes: 128 random bits as 32 hex
    /// digits, a space, and the holder id ([`Config::holder_id`](crate::Config::holder_id)).
    /// Unique to this acquisition, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        self.held.claim.token()
    }

    /// With fencing on ([`Options::fencing`](crate::Options::fencing)): a number larger than that of every earlier
    /// holder of this key, to pass to the storage the job writes to, which can then refuse
    /// writes from a holder whose lease ran out while it was paused. `None` without fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token.map(NonZeroU64::get)
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
        let mut extensions = extending.finish(&[held.to_extend_by(held.ttl)]).await;
        match extensions.pop().expect("one extension per lease") {
            Extension::Extended { valid_until } if held.extend_to(valid_until, None) => Ok(()),
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
        let releasing = start_release(&self.nodes, &self.held.claim, keep).await;
        // From here on, a cancelled release is finished by its round (see `round::Round`).
        self.holding = false;
        releasing
            .finish()
            .await
            .map_err(|no_quorum| no_quorum.into_error())
    }

    /// The key and the token, for a round that checks the lock is still ours.
    pub(crate) fn claim(&self) -> &Claim {
        &self.held.claim
    }

    /// What a body running under this lease sees of it.
    pub(crate) fn info(&self) -> LeaseInfo {
        LeaseInfo {
            held: self.held.clone(),
        }
    }

    /// Why the lease is lost, if it is: marked lost, or past its deadline (see [`Held::check`]),
    /// or a node's clock was seen to step since the lease was last confirmed. Renewal confirms
    /// a lease after a step on the other nodes, or loses it; until it has, the lease cannot be
    /// relied on (its key may have expired early on the stepped node, and the others may not
    /// make a quorum), so a call that ends meanwhile does not count its body as run under it.
    pub(crate) fn lost(&self) -> Option<LostReason> {
        if let Some(jumps) = &self.clock_jumps {
            let seen = *jumps.borrow() as u32;
            if self.held.state().steps_confirmed != seen {
                self.held.lose(LostReason::ClockJumped);
            }
        }
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
            key: self.held.claim.key().to_owned(),
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
        release_in_background(&self.nodes, held.claim.clone(), async move {
            held.stop_renewal();
        });
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.held.claim.key())
            .field("token", &self.held.claim.token())
            .field("validity", &self.validity())
            .field("lost", &self.held.check())
            .finish()
    }
}
