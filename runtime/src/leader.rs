//! Leader election: one process of a fleet leads for as long as it lives, on a lock it keeps.
//!
//! A campaign is a loop on the crate's own runtime of `run_with(key, ttl, fencing)` calls whose
//! body is the leadership itself: it publishes `Elected` and waits until the lease is lost (marked
//! at the lease's deadline by the runtime's deadline timer, so never later than the end of its
//! validity) or the process steps down. Renewal, repair, the owner-checked release and `shutdown`
//! are the lock's; nothing here keeps a state of its own that could outlive the lease: whether
//! this process leads is asked of the lease each time.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::{driver, lease, Error, LeaseInfo, LostReason, OnLost, Options, Outcome, Runtime};

/// Between two attempts of a candidate, a random pause of between half of this and this: a
/// third of the ttl, so that a free key is found well within one ttl...
const RETRY_TTL_DIVISOR: u32 = 3;

/// ...but at most this, so that a resigned or dead leader is replaced quickly even with a long
/// ttl (one attempt every few hundred milliseconds per candidate costs the nodes little).
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Events kept for a receiver that falls behind; beyond that it gets `Lagged`.
const EVENTS_CAPACITY: usize = 64;

/// What happens to this process's leadership, from [`Leadership::events`].
///
/// ```
/// use cluster_singleton::runtime::LeaderEvent;
/// use cluster_singleton::LostReason;
///
/// fn describe(event: &LeaderEvent) -> String {
///     match event {
///         LeaderEvent::Elected { fencing_token } => format!("leading, fencing token {fencing_token}"),
///         LeaderEvent::Revoked { reason } => format!("no longer leading: {reason}"),
///         LeaderEvent::Resigned => "stepped down".to_owned(),
///         _ => "something new".to_owned(),
///     }
/// }
/// assert_eq!(describe(&LeaderEvent::Elected { fencing_token: 7 }), "leading, fencing token 7");
/// assert_eq!(describe(&LeaderEvent::Revoked { reason: LostReason::NoQuorum }),
///     "no longer leading: renewing it could not reach a quorum of Redis nodes");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaderEvent {
    /// This process leads now. The fencing token is larger than that of every earlier leader on
    /// this key (and every earlier holder of the lock): pass it to the storage the leader writes
    /// to, so that it can refuse a former leader's late writes.
    Elected {
        /// This term's fencing token.
        fencing_token: u64,
    },
    /// This process no longer leads: its lease was lost (renewal could not reach a quorum before
    /// the lease ran out, a majority of nodes no longer holds it, the process was paused past its
    /// validity, or the runtime was shut down). Sent at the end of the validity at the latest,
    /// by a timer on the crate's own thread: code that blocks that thread (a log writer that
    /// stalls on the runtime's events) delays it as long as it blocks. [`Leadership::is_leader`]
    /// is false from the end of the validity on, even before it is received. The campaign
    /// goes on: a later `Elected` may follow.
    Revoked {
        /// Why the lease was lost.
        reason: LostReason,
    },
    /// This process stepped down ([`Leadership::resign`], or the `Leadership` was dropped); its
    /// lock is released at once, so that another candidate takes over without waiting for the
    /// ttl. No event follows.
    Resigned,
}

/// A campaign for leadership of one key, from [`Runtime::campaign`] or [`campaign`].
///
/// While it lives, a task on the crate's own thread keeps trying to become leader (one attempt
/// at the lock every few hundred milliseconds at most, see [`Runtime::campaign`]), and once it
/// is, keeps the lock with renewal (and repair) until it is lost or this process steps down.
/// Then it tries again, unless it stepped down. At most one process of the fleet leads at any
/// instant: a leader stops seeing itself as one ([`Leadership::is_leader`]) at the end of its
/// lease's validity at the latest, before the key can expire on the nodes and let another win.
///
/// Dropping it steps down (the lock is released in the background); so does
/// [`Runtime::shutdown`], which also ends the campaign.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn tick(_fencing_token: u64) {}
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// let leadership = cluster_singleton::runtime::campaign("scheduler", Duration::from_secs(10))?;
/// loop {
///     let Some(fencing_token) = leadership.elected().await else {
///         break; // the runtime was shut down
///     };
///     // Lead until the leadership is lost, checking before each step.
///     while leadership.is_leader() {
///         tick(fencing_token).await;
///         tokio::time::sleep(Duration::from_secs(1)).await;
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Leadership {
    shared: Arc<Shared>,
}

/// What the campaign task and its `Leadership` share.
struct Shared {
    key: String,
    /// The term this process leads in now; set by the campaign while it holds the lock.
    term: watch::Sender<Option<Term>>,
    /// How the last term ended, by its fencing token: `Some(reason)` lost, `None` stepped down.
    /// Set before the term is cleared, for `lost()` futures that wake after the lease is gone.
    last_end: watch::Sender<Option<(u64, Option<LostReason>)>>,
    /// Raised by `resign` or drop: the campaign steps down and ends.
    stepping_down: watch::Sender<bool>,
    /// Raised when the campaign task has ended, after releasing what it held.
    finished: watch::Sender<bool>,
    events: broadcast::Sender<LeaderEvent>,
}

/// One leadership: the lease it stands on, which alone says whether it still holds.
#[derive(Clone)]
struct Term {
    lease: LeaseInfo,
    fencing_token: u64,
}

impl Shared {
    /// The current term, if this process leads now: not stepping down, and its lease still valid
    /// (checked against its deadline now, so a paused process sees the truth on waking).
    fn leading(&self) -> Option<Term> {
        if *self.stepping_down.borrow() {
            return None;
        }
        self.term
            .borrow()
            .as_ref()
            .filter(|term| term.lease.is_held())
            .cloned()
    }

    fn publish(&self, event: LeaderEvent) {
        // No receiver is not a failure: nobody asked for events.
        let _ = self.events.send(event);
    }
}

impl Runtime {
    /// Starts campaigning for leadership of `key` (the runtime's prefix is put before it): a
    /// task on the crate's own thread keeps trying to take the lock on `key` for `ttl` with
    /// fencing on, and holds it, renewed every third of the ttl, for as long as it can.
    ///
    /// The ttl is how long the fleet may go without a leader when the leader dies without
    /// stepping down (a crash, SIGKILL, a partition): its key expires after it. A resigned,
    /// dropped or shut-down leader releases at once instead. Candidates try once every third
    /// of the ttl, at most every 250 ms (with jitter), so a freed key finds its next leader
    /// within about that long.
    ///
    /// Fails at once with [`Error::InvalidConfig`] for a ttl the lock refuses (under a
    /// millisecond, not whole milliseconds, or above `Config::max_ttl`) and with
    /// [`Error::ShutDown`] after [`Runtime::shutdown`]. Errors of single attempts (an outage,
    /// [`Error::NoQuorum`]) are logged, and the campaign tries again.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use cluster_singleton::runtime::{Config, LeaderEvent};
    ///
    /// # async fn demo() -> Result<(), cluster_singleton::Error> {
    /// let runtime = Config::new(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).build()?;
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// let mut events = leadership.events();
    /// while let Ok(event) = events.recv().await {
    ///     match event {
    ///         LeaderEvent::Elected { fencing_token } => println!("leading ({fencing_token})"),
    ///         LeaderEvent::Revoked { reason } => println!("lost the lead: {reason}"),
    ///         _ => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn campaign(&self, key: &str, ttl: Duration) -> Result<Leadership, Error> {
        let options = Options::new(ttl).fencing(true).on_lost(OnLost::Continue);
        self.check_options(&options)?;
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            term: watch::Sender::new(None),
            last_end: watch::Sender::new(None),
            stepping_down: watch::Sender::new(false),
            finished: watch::Sender::new(false),
            events: broadcast::Sender::new(EVENTS_CAPACITY),
        });
        drop(self.nodes().crate_thread().spawn(run_campaign(
            self.clone(),
            shared.clone(),
            options,
        )));
        Ok(Leadership { shared })
    }
}

/// [`Runtime::campaign`] with the runtime in effect here (see [`Runtime::current`]).
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// cluster_singleton::runtime::init(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]).await?;
/// let leadership = cluster_singleton::runtime::campaign("scheduler", Duration::from_secs(5))?;
/// leadership.elected().await;
/// println!("this process leads");
/// # Ok(())
/// # }
/// ```
pub fn campaign(key: &str, ttl: Duration) -> Result<Leadership, Error> {
    Runtime::current()?.campaign(key, ttl)
}

impl Leadership {
    /// Whether this process leads now: it holds the lock, and the lock's validity (on this
    /// machine's monotonic clock, less the drift allowance) has not run out.
    ///
    /// Asked of the lease at each call, not cached: after a pause of the process (a GC stop,
    /// SIGSTOP) longer than the validity left, the first call after waking says `false`, even
    /// before the `Revoked` event is sent. What it cannot do is stop work already under way when
    /// the pause began: pass [`Leadership::fencing_token`] to the storage you write to for that.
    /// The pause must show on the monotonic clock: a suspended machine, or a VM whose clock its
    /// hypervisor stopped, does not see the time it was away until its next node check (within
    /// a second) finds the nodes' clocks ahead (the README's "Safety", assumption 4).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// if leadership.is_leader() {
    ///     println!("leading");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_leader(&self) -> bool {
        self.shared.leading().is_some()
    }

    /// This term's fencing token while this process leads, `None` otherwise: larger than that
    /// of every earlier leader (and holder of the lock) on this key.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(leadership: cluster_singleton::runtime::Leadership) {
    /// if let Some(token) = leadership.fencing_token() {
    ///     println!("UPDATE schedule SET ... WHERE fencing_token < {token}");
    /// }
    /// # }
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.shared.leading().map(|term| term.fencing_token)
    }

    /// How much longer this process's leadership is safe to rely on, renewals included: zero
    /// when it does not lead.
    ///
    /// ```no_run
    /// # async fn demo(leadership: cluster_singleton::runtime::Leadership) {
    /// println!("leading for at least {:?} more", leadership.validity());
    /// # }
    /// ```
    pub fn validity(&self) -> Duration {
        self.shared
            .leading()
            .map_or(Duration::ZERO, |term| term.lease.validity())
    }

    /// The key campaigned for, as given (without the runtime's prefix).
    ///
    /// ```no_run
    /// # async fn demo(leadership: cluster_singleton::runtime::Leadership) {
    /// println!("campaigning for {}", leadership.key());
    /// # }
    /// ```
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The events of this leadership from now on: a [`tokio::sync::broadcast`] receiver, so
    /// every receiver sees every event, in order, from the moment it was made (not earlier ones:
    /// ask [`Leadership::is_leader`] for the present). A receiver more than 64 events behind gets
    /// `RecvError::Lagged` and then the newer ones; `RecvError::Closed` once the campaign has
    /// ended and the `Leadership` is gone.
    ///
    /// `Revoked` is sent no later than the end of the lease's validity (the runtime's deadline
    /// timer marks the lease lost then, not the next renewal), as long as the crate's thread,
    /// which runs that timer, is not blocked (see [`LeaderEvent::Revoked`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use cluster_singleton::runtime::LeaderEvent;
    ///
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// let mut events = leadership.events();
    /// tokio::spawn(async move {
    ///     while let Ok(event) = events.recv().await {
    ///         if let LeaderEvent::Revoked { reason } = event {
    ///             eprintln!("lost the lead: {reason}");
    ///         }
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<LeaderEvent> {
        self.shared.events.subscribe()
    }

    /// Waits until this process leads, and returns the term's fencing token; at once if it
    /// leads now. `None` once the campaign has ended (after [`Leadership::resign`] or
    /// [`Runtime::shutdown`]): it will not lead again.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// if let Some(fencing_token) = leadership.elected().await {
    ///     println!("leading with fencing token {fencing_token}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn elected(&self) -> Option<u64> {
        let mut term = self.shared.term.subscribe();
        let mut stepping_down = self.shared.stepping_down.subscribe();
        let mut finished = self.shared.finished.subscribe();
        loop {
            if let Some(term) = self.shared.leading() {
                return Some(term.fencing_token);
            }
            if *stepping_down.borrow_and_update() || *finished.borrow_and_update() {
                return None;
            }
            // The senders live in `shared`, which `self` keeps: `changed` cannot fail here. A
            // term that runs out is cleared by the campaign, which wakes this.
            tokio::select! {
                _ = term.changed() => {}
                _ = stepping_down.changed() => {}
                _ = finished.changed() => {}
            }
        }
    }

    /// A future that resolves when the leadership held now ends: `Some(reason)` when its lease
    /// is lost (at the end of its validity at the latest, like `Revoked`), `None` when this
    /// process steps down ([`Leadership::resign`], drop). Resolves at once, with `None`, when
    /// this process does not lead now. It is `'static`: it can be moved into a task or a
    /// `select!` beside the leader's work.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn lead_forever() {}
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// while leadership.elected().await.is_some() {
    ///     tokio::select! {
    ///         why = leadership.lost() => println!("no longer leading: {why:?}"),
    ///         () = lead_forever() => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = Option<LostReason>> + Send + 'static {
        let shared = self.shared.clone();
        let current = shared.leading();
        let mut terms = shared.term.subscribe();
        let mut stepping_down = shared.stepping_down.subscribe();
        async move {
            let term = current?;
            let lost = term.lease.lost();
            tokio::pin!(lost);
            loop {
                tokio::select! {
                    biased;
                    reason = &mut lost => return Some(reason),
                    _ = stepping_down.wait_for(|down| *down) => return None,
                    changed = terms.changed() => {
                        let same = changed.is_ok()
                            && terms
                                .borrow_and_update()
                                .as_ref()
                                .is_some_and(|now| now.fencing_token == term.fencing_token);
                        if !same {
                            return match *shared.last_end.borrow() {
                                Some((token, how)) if token == term.fencing_token => how,
                                _ => term.lease.lost_reason(),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Steps down: this process stops seeing itself as leader at once, releases the lock
    /// (owner-checked: only where the key still holds its own token) so that another candidate
    /// takes over without waiting for the ttl, and stops campaigning. Returns once that is done.
    /// A release that cannot reach a quorum is logged; the copies left expire with the ttl.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let leadership = runtime.campaign("scheduler", Duration::from_secs(5))?;
    /// leadership.elected().await;
    /// // ... a deploy is about to stop this process: hand over now.
    /// leadership.resign().await;
    /// assert!(!leadership.is_leader());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resign(&self) {
        self.shared.stepping_down.send_replace(true);
        let mut finished = self.shared.finished.subscribe();
        // The task raises it when it ends, even by a panic: it cannot fail while `self` lives.
        let _ = finished.wait_for(|done| *done).await;
    }
}

impl Drop for Leadership {
    /// Steps down without waiting: the campaign releases the lock in the background.
    fn drop(&mut self) {
        self.shared.stepping_down.send_replace(true);
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.shared.key)
            .field("is_leader", &self.is_leader())
            .field("fencing_token", &self.fencing_token())
            .finish()
    }
}

/// Raises `finished` when the campaign task ends, however it ends.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.term.send_replace(None);
        self.0.finished.send_replace(true);
    }
}

/// The campaign: attempts until it leads, leads until the lease is lost, again, until this
/// process steps down or the runtime shuts down.
async fn run_campaign(runtime: Runtime, shared: Arc<Shared>, options: Options) {
    let _finished = Finished(shared.clone());
    let mut stepping_down = shared.stepping_down.subscribe();
    let mut shutting_down = runtime.shutting_down();
    let window = (options.ttl() / RETRY_TTL_DIVISOR).min(MAX_RETRY_PAUSE);
    loop {
        if *stepping_down.borrow() || *shutting_down.borrow() {
            return;
        }
        let term = lead(&shared, stepping_down.clone());
        match runtime.run_with(&shared.key, options, term, |_| true).await {
            // The body only ends by itself when this process steps down.
            Ok(Outcome::Ran(())) => return,
            Ok(Outcome::Skipped(_)) => {}
            Err(Error::ShutDown)
            | Err(Error::LeaseLost {
                reason: LostReason::Shutdown,
                ..
            }) => return,
            // Already said by the `Revoked` event.
            Err(Error::LeaseLost { .. }) => {}
            Err(err @ (Error::InvalidConfig(_) | Error::NotInitialised)) => {
                tracing::error!(key = shared.key, error = %err, "the campaign cannot go on");
                return;
            }
            Err(err) => {
                tracing::warn!(key = shared.key, error = %err, "a campaign attempt failed; trying again")
            }
        }
        // Jittered, so that candidates spread out rather than all asking at once.
        let pause = window / 2 + crate::random::pause_below(window / 2).unwrap_or_default();
        tokio::select! {
            () = driver::sleep_until(runtime.nodes().crate_thread(), Instant::now() + pause) => {}
            _ = stepping_down.wait_for(|down| *down) => return,
            _ = shutting_down.wait_for(|down| *down) => return,
        }
    }
}

/// The body of a term: leads until the lease is lost or this process steps down.
async fn lead(shared: &Shared, mut stepping_down: watch::Receiver<bool>) {
    let Some(lease) = lease() else {
        unreachable!("a term runs as the body of `run_with`, which sets its lease")
    };
    // A term that ended before its body first ran (the process paused right after winning)
    // is not announced: another process may lead by now.
    if *stepping_down.borrow_and_update() || !lease.is_held() {
        return;
    }
    // Fencing is on for every campaign: the lock always reads a token.
    let fencing_token = lease.fencing_token().unwrap_or_default();
    shared.term.send_replace(Some(Term {
        lease: lease.clone(),
        fencing_token,
    }));
    shared.publish(LeaderEvent::Elected { fencing_token });
    tokio::select! {
        reason = lease.lost() => {
            shared.last_end.send_replace(Some((fencing_token, Some(reason))));
            shared.term.send_replace(None);
            shared.publish(LeaderEvent::Revoked { reason });
        }
        _ = stepping_down.wait_for(|down| *down) => {
            shared.last_end.send_replace(Some((fencing_token, None)));
            shared.term.send_replace(None);
            shared.publish(LeaderEvent::Resigned);
        }
    }
}
