//! One timer for the deadlines of every lease that something waits to see lost.
//!
//! A lease is lost, at the latest, at its deadline (see [`Held`]), and whatever waits for that
//! ([`LeaseInfo::lost`](crate::LeaseInfo::lost), the body's cancellation) must wake then. A timer
//! per waiter would fire at a deadline that renewal has since moved, about once per lease and
//! renewal, each firing a wake-up of the waiter's task on another thread. Instead, the leases
//! being waited on are queued here, and one task on the crate's own thread sleeps until the
//! earliest entry: when a lease's deadline has passed, it is marked lost, which wakes its
//! waiters. An entry is never later than its lease's deadline, but may be earlier: an extension
//! leaves it in place, and the task, finding the deadline moved, enters the lease again at the
//! new one.
//!
//! Lock order: a lease's state, then this queue; the task never locks a lease's state while it
//! holds the queue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::Held;
use crate::driver;

/// A lease's entry in the queue: its deadline, then the order in which entries were made.
pub(super) type Entry = (Instant, u64);

/// The deadlines of the leases being waited on, and the task that marks them lost.
pub(crate) struct Deadlines {
    queue: Mutex<Queue>,
    /// Wakes the task when an entry is made before the one it sleeps until, and when the
    /// deadlines are dropped (the task then ends).
    earlier: Arc<Notify>,
    crate_thread: Handle,
}

#[derive(Default)]
struct Queue {
    leases: BTreeMap<Entry, Weak<Held>>,
    made: u64,
    /// Whether the task runs.
    working: bool,
    /// The entry the task sleeps until, while it sleeps: an earlier one must wake it.
    sleeping_until: Option<Instant>,
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.earlier.notify_one();
    }
}

impl Deadlines {
    pub(crate) fn new(crate_thread: Handle) -> Self {
        Deadlines {
            queue: Mutex::default(),
            earlier: Arc::default(),
            crate_thread,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `held` at `deadline` (taking `replacing` out, if given), and starts the task if it
    /// does not run. Called with the lease's state locked.
    pub(super) fn enter(
        self: &Arc<Self>,
        held: &Arc<Held>,
        deadline: Instant,
        replacing: Option<Entry>,
    ) -> Entry {
        let (entry, earlier, start) = {
            let mut queue = self.queue();
            if let Some(old) = replacing {
                queue.leases.remove(&old);
            }
            queue.made += 1;
            let entry = (deadline, queue.made);
            queue.leases.insert(entry, Arc::downgrade(held));
            let earlier = queue.sleeping_until.is_some_and(|until| deadline < until);
            (entry, earlier, !std::mem::replace(&mut queue.working, true))
        };
        if start {
            drop(
                self.crate_thread
                    .spawn(mark_lost_at_deadlines(Arc::downgrade(self))),
            );
        }
        if earlier {
            self.earlier.notify_one();
        }
        entry
    }

    /// Takes `entry` out: its lease is lost, or over, or nothing waits for it any more.
    pub(super) fn leave(&self, entry: Entry) {
        self.queue().leases.remove(&entry);
    }

    /// Takes out the entries whose deadline has passed by `now`.
    fn take_passed(&self, now: Instant) -> Vec<(Entry, Weak<Held>)> {
        let mut queue = self.queue();
        queue.sleeping_until = None;
        let mut passed = Vec::new();
        while let Some(first) = queue.leases.first_entry() {
            if first.key().0 > now {
                break;
            }
            passed.push(first.remove_entry());
        }
        passed
    }
}

/// Sleeps until the earliest deadline, and marks each lease whose deadline passed lost (which
/// wakes its waiters), for as long as the deadlines live.
async fn mark_lost_at_deadlines(deadlines_of_runtime: Weak<Deadlines>) {
    loop {
        let Some(deadlines) = deadlines_of_runtime.upgrade() else {
            return;
        };
        let now = Instant::now();
        for (entry, held) in deadlines.take_passed(now) {
            if let Some(held) = held.upgrade() {
                held.deadline_passed(entry);
            }
        }
        let earlier = deadlines.earlier.clone();
        let notified = earlier.notified();
        let until = {
            let mut queue = deadlines.queue();
            let first = queue.leases.first_key_value().map(|(first, _)| first.0);
            let until = first.unwrap_or(now + Duration::from_secs(3600));
            queue.sleeping_until = Some(until);
            until
        };
        let crate_thread = deadlines.crate_thread.clone();
        drop(deadlines);
        tokio::select! {
            () = driver::sleep_until(&crate_thread, until) => {}
            () = notified => {}
        }
    }
}
