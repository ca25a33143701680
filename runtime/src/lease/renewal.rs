//! Renewal: while a body runs, its lease is extended every third of the ttl, together with every
//! other lease of the runtime that is due within a short window: one script call per node extends
//! them all (see `redlock::start_extending`), owner-checked key by key, each lease's answers
//! counted on their own. A thousand leases then cost a node one command per window rather than a
//! thousand, and the process no timer per lease.
//!
//! The leases wait in one queue, by when each is due, which a task on the crate's own thread
//! works off. That task takes the leases due, builds their round and queues its commands on the
//! connections while it holds the queue's lock; stopping a lease's renewal takes the same lock.
//! So a release sent once renewal has stopped always follows, on every connection, any extension
//! of that lease (which could otherwise put the released key back).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::{Held, Lease};
use crate::node::LeaseToExtend;
use crate::nodes::Nodes;
use crate::redlock::{start_extending, Extending, Extension};
use crate::{driver, LostReason, Options};

/// Renewal extends the lease after this fraction of the ttl: at a third, two more tries fit in
/// before the lease would run out.
const RENEW_AFTER_TTL_DIVISOR: u32 = 3;

/// After a renewal that could not reach a quorum, the next try comes this fraction of the ttl
/// later, for as long as the lease is still valid.
const RENEW_RETRY_TTL_DIVISOR: u32 = 10;

/// Leases due within this long of the first one due are extended with it, a little early.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The most leases one script call extends: a script blocks its node while it runs (about a
/// millisecond for this many keys).
const MOST_PER_BATCH: usize = 1_000;

/// The leases that renewal keeps, by when each is due, and the task that extends them.
#[derive(Default)]
pub(crate) struct Renewer {
    queue: Mutex<Queue>,
    /// Wakes the task when a lease is added that may be due before the ones it waits for, and
    /// when the renewer is dropped (the task then ends).
    added: Arc<Notify>,
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.added.notify_one();
    }
}

/// A lease's place in the queue: when it is due, then the order in which leases were added.
pub(super) type Place = (Instant, u64);

#[derive(Default)]
struct Queue {
    /// The queued leases; each one's place is in its state too (for [`Renewer::stop`]).
    due: BTreeMap<Place, Renewing>,
    added: u64,
    /// Whether the task runs.
    working: bool,
}

/// A lease in the queue.
#[derive(Clone)]
struct Renewing {
    held: Arc<Held>,
    /// When `max_hold` ends it, if set.
    hold_until: Option<Instant>,
    /// Whether a node's clock stepped forward since its last extension: unconfirmed, it is lost.
    after_a_clock_jump: bool,
    /// Whether its extension in flight is its last, cut short by `max_hold` (noted when it is
    /// sent, so that settling it reads nothing more of the lease than its state).
    last: bool,
}

impl Renewer {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `held` into renewal's care: queues it for its first renewal, a third of the ttl
    /// after it was taken, or at once if a node's clock stepped since its first vote (which
    /// `clock_jumps`, watched from before then, tells); and starts the task if it does not run.
    ///
    /// From here until it leaves renewal, a step of a node's clock is renewal's to check for the
    /// lease (`renews` says so to the runtime's own check of steps, which loses the leases that
    /// nothing renews). All of this under the queue's lock, where the task handles a step too: a
    /// step either comes before and makes the lease due now, or after and finds it queued.
    fn add(
        self: &Arc<Self>,
        nodes: &Arc<Nodes>,
        held: Arc<Held>,
        hold_until: Option<Instant>,
        clock_jumps: Option<watch::Receiver<u64>>,
    ) {
        let task_clock_jumps = {
            let mut queue = self.queue();
            // Its release has begun: renewal no longer touches it.
            if held.stopped.load(Ordering::SeqCst) {
                return;
            }
            // The task's own watch, made before the step below is looked for: a step after
            // that is one the task handles.
            let start = !std::mem::replace(&mut queue.working, true);
            let task_clock_jumps = start.then(|| nodes.clock_jumps());
            held.renews.store(true, Ordering::SeqCst);
            let jumped = clock_jumps.is_some_and(|jumps| jumps.has_changed().unwrap_or(false));
            let due = if jumped {
                Instant::now()
            } else {
                held.acquired_at + held.ttl / RENEW_AFTER_TTL_DIVISOR
            };
            queue.insert(
                due,
                Renewing {
                    held,
                    hold_until,
                    after_a_clock_jump: jumped,
                    last: false,
                },
            );
            task_clock_jumps
        };
        if let Some(clock_jumps) = task_clock_jumps {
            let work = work(Arc::downgrade(self), Arc::downgrade(nodes), clock_jumps);
            drop(nodes.crate_thread().spawn(work));
        }
        self.added.notify_one();
    }

    /// Takes `held` out of the queue, for good: once this returns, no extension of it is sent
    /// any more, and every one sent before is queued on its connections.
    pub(super) fn stop(&self, held: &Held) {
        let mut queue = self.queue();
        held.stopped.store(true, Ordering::SeqCst);
        held.renews.store(false, Ordering::SeqCst);
        // The lease's last place; gone from the queue already if a round took it since.
        if let Some(place) = held.state().queued.take() {
            queue.due.remove(&place);
        }
    }
}

impl Renewer {
    /// Sends one extension of `held` by a ttl now ([`Lease::extend`]), unless its release has
    /// begun: under the queue's lock, as renewal sends its own (see the module's docs).
    pub(super) fn extend_now(&self, nodes: &Arc<Nodes>, held: &Held) -> Option<Extending> {
        let _queue = self.queue();
        if held.stopped.load(Ordering::SeqCst) {
            return None;
        }
        let extension = held.to_extend_by(held.ttl);
        Some(start_extending(nodes, &[extension], Instant::now()))
    }
}

impl Queue {
    fn insert(&mut self, due: Instant, renewing: Renewing) {
        // Stopping a lease's renewal clears `renews` too (see `Renewer::stop`).
        if !renewing.held.renews() {
            return;
        }
        self.added += 1;
        let place = (due, self.added);
        // Any place it had before was taken out of the queue with it.
        renewing.held.state().queued = Some(place);
        self.due.insert(place, renewing);
    }

    /// Takes the leases due by `by`, at most [`MOST_PER_BATCH`].
    fn take_due(&mut self, by: Instant) -> Vec<Renewing> {
        let mut taken = Vec::new();
        while taken.len() < MOST_PER_BATCH {
            let Some(entry) = self.due.first_entry() else {
                break;
            };
            if entry.key().0 > by {
                break;
            }
            // Its place stays in its state, gone from the queue (no two leases ever share a
            // place): not touching the lease here saves the round a read of memory gone cold
            // since the last round.
            taken.push(entry.remove());
        }
        taken
    }

    /// Makes every queued lease due now, to be confirmed after a node's clock stepped forward.
    fn all_due_after_a_clock_jump(&mut self, now: Instant) {
        let queued = std::mem::take(&mut self.due);
        for (_, mut renewing) in queued {
            renewing.after_a_clock_jump = true;
            self.insert(now, renewing);
        }
    }
}

impl Lease {
    /// Keeps the lease for a body, for as long as the returned future is polled beside it:
    /// queues it for renewal, unless `options` turn renewal off.
    ///
    /// Nothing is sent until the first renewal is due (a third of the ttl), so a short body costs
    /// a place in the queue. Renewal goes on while the body is busy, on the crate's own thread;
    /// dropping the future stops it, so renewal never outlives the call. (A body that blocks its
    /// thread from before it is first polled starts no renewal: its lease runs out, and the call
    /// says so when the body ends.)
    pub(crate) fn renewal(&self, options: &Options) -> impl Future<Output = Infallible> + 'static {
        let (nodes, renewer, held) = (
            self.nodes.clone(),
            self.held.renewer.clone(),
            self.held.clone(),
        );
        let renew = options.renew;
        let hold_until = options.max_hold.map(|max_hold| held.acquired_at + max_hold);
        // Watched from before the lock was taken: a step seen before renewal begins counts too.
        let clock_jumps = self.clock_jumps.clone();
        async move {
            if renew {
                renewer.add(&nodes, held.clone(), hold_until, clock_jumps);
                let _stop = StopRenewalOnDrop(renewer, held);
                std::future::pending::<()>().await;
            }
            std::future::pending().await
        }
    }
}

/// Stops renewal when the call is done with the lease, however it ends (a release stops it
/// first: see [`Held::stop_renewal`]).
struct StopRenewalOnDrop(Arc<Renewer>, Arc<Held>);

impl Drop for StopRenewalOnDrop {
    fn drop(&mut self) {
        self.0.stop(&self.1);
    }
}

/// Works off the queue while the runtime lives: waits until the first lease is due (or a node's
/// clock steps, which makes every lease due), extends every lease due within
/// [`BATCH_WINDOW`] in one round, and hands the answers to a task of their own, so that a slow
/// node delays no other batch.
async fn work(
    renewer_of_runtime: Weak<Renewer>,
    nodes_of_runtime: Weak<Nodes>,
    mut clock_jumps: Option<watch::Receiver<u64>>,
) {
    loop {
        let (Some(renewer), Some(nodes)) =
            (renewer_of_runtime.upgrade(), nodes_of_runtime.upgrade())
        else {
            return;
        };
        let added = renewer.added.clone();
        let first_due = renewer
            .queue()
            .due
            .first_key_value()
            .map(|(place, _)| place.0);
        let now = Instant::now();
        match first_due {
            Some(due) if due <= now => {}
            first_due => {
                let until = first_due.unwrap_or(now + Duration::from_secs(3600));
                let crate_thread = nodes.crate_thread().clone();
                drop((renewer, nodes));
                tokio::select! {
                    () = driver::sleep_until(&crate_thread, until) => {}
                    () = added.notified() => {}
                    () = clock_jumped(&mut clock_jumps) => {
                        if let Some(renewer) = renewer_of_runtime.upgrade() {
                            renewer.queue().all_due_after_a_clock_jump(Instant::now());
                        }
                    }
                }
                continue;
            }
        }
        // Opened first, outside the lock: the round's commands never wait for a connection.
        nodes.open_connections().await;
        let (batch, mut extending, steps) = {
            let mut queue = renewer.queue();
            let steps = StepsSince::taken(clock_jumps.clone());
            let now = Instant::now();
            // Each lease with what it is extended by, now: a ttl, cut short by `max_hold`; none
            // when the lease is over, lost, or at its `max_hold` (it then runs out for it).
            let due = queue.take_due(now + BATCH_WINDOW).into_iter();
            let batch: Vec<(Renewing, Duration)> = due
                .filter_map(|mut renewing| {
                    let keep = renewing.held.extension_due(renewing.hold_until, now)?;
                    renewing.last = keep < renewing.held.ttl;
                    Some((renewing, keep))
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            // Queued on the connections before the lock is let go (see the module's docs).
            let extending = start_extending(&nodes, &to_extend(&batch), now);
            (batch, extending, steps)
        };
        let started = extending.started();
        let weak = Arc::downgrade(&renewer);
        drop(nodes.crate_thread().spawn(async move {
            let leases = to_extend(&batch);
            // Each lease settled as soon as the answers decide it: one left undecided waits for
            // the slowest node, and must not make the others wait with it past their deadlines.
            while let Some(decided) = extending.next_decided(&leases).await {
                let Some(renewer) = weak.upgrade() else {
                    return;
                };
                settle(&renewer, &batch, decided, started, &steps);
            }
            let rest = extending.rest(&leases);
            if let Some(renewer) = weak.upgrade() {
                settle(&renewer, &batch, rest, started, &steps);
            }
        }));
    }
}

/// The extensions of a round's leases.
fn to_extend(batch: &[(Renewing, Duration)]) -> Vec<LeaseToExtend<'_>> {
    batch
        .iter()
        .map(|(renewing, keep)| renewing.held.to_extend_by(*keep))
        .collect()
}

/// Applies the extensions of some of a round's leases (`decided`, by their index in `batch`),
/// and queues those that go on: a third of the ttl after the round began, or, when too few nodes
/// answered, a tenth of the ttl from now. The deadline itself is kept by [`Held`], not here: an
/// extension still waiting for answers cannot make the loss late. A lease whose last extension
/// (at its `max_hold`) was confirmed leaves renewal's care.
fn settle(
    renewer: &Renewer,
    batch: &[(Renewing, Duration)],
    decided: Vec<(usize, Extension)>,
    started: Instant,
    steps: &StepsSince,
) {
    let mut again = Vec::new();
    let mut leaving = Vec::new();
    for (index, extension) in decided {
        let mut renewing = batch[index].0.clone();
        let (held, last) = (&renewing.held, renewing.last);
        match extension {
            Extension::Extended { valid_until } => {
                // Sent after the steps seen at the take, each handled by then (see
                // `StepsSince`): the nodes that stepped gave no answer to it.
                if !held.extend_to(valid_until, steps.confirms()) {
                    continue;
                }
                if last {
                    held.if_it_runs_out(LostReason::MaxHold);
                    leaving.push(renewing);
                    continue;
                }
                renewing.after_a_clock_jump = false;
                again.push((started + held.ttl / RENEW_AFTER_TTL_DIVISOR, renewing));
            }
            Extension::Gone => {
                tracing::warn!(
                    key = held.claim.key(),
                    "lease lost: a majority of nodes no longer holds our token"
                );
                held.lose(LostReason::TakenOver);
            }
            Extension::Undecided(no_quorum) if renewing.after_a_clock_jump => {
                tracing::warn!(key = held.claim.key(), error = %no_quorum, "lease lost: a node's clock stepped forward, and the other nodes did not confirm the lease");
                held.lose(LostReason::ClockJumped);
            }
            Extension::Undecided(no_quorum) => {
                tracing::debug!(key = held.claim.key(), error = %no_quorum, "renewal failed; retrying while the lease lasts");
                again.push((
                    Instant::now() + held.ttl / RENEW_RETRY_TTL_DIVISOR,
                    renewing,
                ));
            }
        }
    }
    if again.is_empty() && leaving.is_empty() {
        return;
    }
    let mut queue = renewer.queue();
    // Valid until their last deadline, with no round left to confirm them: from now on a step is
    // the runtime's to check, which loses every lease that nothing renews. Cleared before the
    // steps are read below, so that a step either comes before and is found here, or after and
    // finds these leases unrenewed.
    for renewing in &leaving {
        renewing.held.renews.store(false, Ordering::SeqCst);
    }
    // A step seen while the round was out passed these leases by, out of the queue: each going
    // on is confirmed at once, as the queued ones are, and each leaving is lost. (Read under the
    // queue's lock: a step seen after this finds the others queued.)
    let stepped = steps.seen();
    if stepped {
        for renewing in leaving {
            let held = &renewing.held;
            tracing::warn!(key = held.claim.key(), "lease lost: a node's clock stepped forward after its last renewal was sent, and no renewal is left to confirm it");
            held.lose(LostReason::ClockJumped);
        }
    }
    let now = Instant::now();
    for (due, mut renewing) in again {
        if stepped {
            renewing.after_a_clock_jump = true;
        }
        // A lease whose renewal stopped meanwhile is not queued again (see `Queue::insert`).
        queue.insert(if stepped { now } else { due }, renewing);
    }
    drop(queue);
    renewer.added.notify_one();
}

/// Whether a node's clock was seen to step forward since a round took its leases out of the
/// queue, where a step would have made them due at once.
struct StepsSince {
    jumps: Option<watch::Receiver<u64>>,
    /// Steps seen by then, and whether one of them was not yet handled by the queue (the task
    /// handles a step when it next waits, after this round is out).
    at_take: u64,
    unhandled: bool,
}

impl StepsSince {
    /// Taken with the queue locked, from the task's own receiver (a clone keeps what it saw).
    fn taken(jumps: Option<watch::Receiver<u64>>) -> Self {
        let (at_take, unhandled) = jumps.as_ref().map_or((0, false), |jumps| {
            (*jumps.borrow(), jumps.has_changed().unwrap_or(false))
        });
        StepsSince {
            jumps,
            at_take,
            unhandled,
        }
    }

    /// The steps a round taken then confirms its leases through, when it is extended: those
    /// seen by then, if each was handled (a step not yet handled may have come after the round
    /// counted a stepped node's answer).
    fn confirms(&self) -> Option<u64> {
        (self.jumps.is_some() && !self.unhandled).then_some(self.at_take)
    }

    fn seen(&self) -> bool {
        self.unhandled
            || self
                .jumps
                .as_ref()
                .is_some_and(|jumps| *jumps.borrow() != self.at_take)
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
