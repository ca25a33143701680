//! Commands a caller no longer waits for, kept until their nodes have answered.
//!
//! A lock waits only for a quorum: the slower nodes' answers come after the caller has moved on.
//! Those commands must not be dropped, since redis-rs skips a command whose caller has gone
//! before it was written, and the node would then miss a SET or a release. Nor need they be
//! polled to be sent: once a command is queued on its connection (its first poll does that), the
//! connection's own task writes it, as long as somebody still holds the future. So they wait
//! here, and a look at them now and then drops those that are done: every park looks when
//! the backlog has doubled since the last look, and a janitor on the crate's own thread looks
//! every few milliseconds while anything waits. A task per straggler would cost a spawn, and
//! often a wake-up of another thread, on every lock.
//!
//! A look polls only the futures that were woken since they were last polled (each has a waker
//! of its own that just raises a flag), and drops, unpolled, those past their time. Behind a
//! frozen node, thousands of commands wait at once for an answer that does not come: polling
//! them all on every look kept the crate's thread half busy.
//!
//! The janitor's looks also drive what a parked future does after its answer (a release where a
//! late node granted), so background work here is never more than a look's interval late.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Notify;

/// How often the janitor looks while anything waits.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// The backlog is looked at when a park finds it this long, or twice as long as after the last
/// look: the cost of looking stays a constant per park.
const FIRST_LOOK_AT: usize = 64;

/// Futures waited for in the background.
pub(crate) struct Backlog {
    waiting: Mutex<Waiting>,
    /// Wakes the janitor when the backlog stops being empty, and when it is dropped.
    janitor: Arc<Notify>,
    crate_thread: Handle,
}

#[derive(Default)]
struct Waiting {
    futures: Vec<Parked>,
    /// Park looks when there are this many.
    look_at: usize,
    /// Whether the janitor is looking every few milliseconds (else it waits to be woken).
    janitor_busy: bool,
}

struct Parked {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Dropped after this, done or not: its node has had far more than its timeout.
    until: Instant,
    /// Raised by `waker`: the future has something to do, and the next look polls it.
    woken: Arc<Woken>,
    waker: Waker,
}

/// A waker's flag: raised when the future it was given to is woken.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

impl Parked {
    /// Polls the future if it was woken since its last poll (or was never polled here), with
    /// its own waker; whether it is still pending.
    fn poll_if_woken(&mut self) -> bool {
        if !self.woken.0.swap(false, Ordering::AcqRel) {
            return true;
        }
        let mut cx = Context::from_waker(&self.waker);
        self.future.as_mut().poll(&mut cx).is_pending()
    }
}

impl Backlog {
    pub(crate) fn new(crate_thread: Handle) -> Arc<Backlog> {
        let backlog = Arc::new(Backlog {
            waiting: Mutex::new(Waiting {
                look_at: FIRST_LOOK_AT,
                ..Waiting::default()
            }),
            janitor: Arc::new(Notify::new()),
            crate_thread,
        });
        let (weak, wake) = (Arc::downgrade(&backlog), backlog.janitor.clone());
        drop(backlog.crate_thread.spawn(janitor(weak, wake)));
        backlog
    }

    /// Keeps `future` until it is done, or until `until`. It must have been polled once already
    /// if it holds commands, so that they are queued on their connections.
    pub(crate) fn park(&self, until: Instant, future: impl Future<Output = ()> + Send + 'static) {
        let due = {
            let mut waiting = self.lock();
            // Raised, so that the first look polls it: until then, it would wake whoever
            // polled it last.
            let woken = Arc::new(Woken(AtomicBool::new(true)));
            waiting.futures.push(Parked {
                future: Box::pin(future),
                until,
                waker: Waker::from(woken.clone()),
                woken,
            });
            if !waiting.janitor_busy {
                waiting.janitor_busy = true;
                self.janitor.notify_one();
            }
            (waiting.futures.len() >= waiting.look_at).then(|| std::mem::take(&mut waiting.futures))
        };
        if let Some(futures) = due {
            self.look(futures, false);
        }
    }

    /// Whether nothing waits here (nothing parked, and no look in progress).
    pub(crate) fn is_empty(&self) -> bool {
        let waiting = self.lock();
        waiting.futures.is_empty() && !waiting.janitor_busy
    }

    /// Polls those of `futures` that were woken, outside the lock (polling one may park
    /// another), and puts back those that are neither done nor past their time. For the
    /// janitor, says whether nothing is left, in which case it is marked idle under the same
    /// lock (a park after that wakes it).
    fn look(&self, mut futures: Vec<Parked>, by_janitor: bool) -> bool {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        // Unconstrained: polling many futures must not spend the budget of the task that parks
        // (tokio would then make that task's own next poll yield).
        let mut poll_all = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|_| {
            futures.retain_mut(|parked| parked.until > now && parked.poll_if_woken());
            Poll::Ready(())
        })));
        let _ = poll_all.as_mut().poll(&mut cx);
        let mut waiting = self.lock();
        waiting.futures.append(&mut futures);
        waiting.look_at = (waiting.futures.len() * 2).max(FIRST_LOOK_AT);
        let idle = waiting.futures.is_empty();
        if by_janitor && idle {
            waiting.janitor_busy = false;
        }
        idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // The janitor sees that the backlog is gone, and ends.
        self.janitor.notify_one();
    }
}

/// Looks at the backlog every few milliseconds while anything waits; ends with the backlog.
async fn janitor(backlog: Weak<Backlog>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let Some(backlog) = backlog.upgrade() else {
                return;
            };
            let futures = std::mem::take(&mut backlog.lock().futures);
            let idle = backlog.look(futures, true);
            drop(backlog);
            if idle {
                break;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Never done; counts its polls and keeps the waker of the last one.
    #[derive(Clone, Default)]
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Probe {
        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }

        fn wake(&self) {
            self.waker.lock().unwrap().take().expect("polled").wake();
        }
    }

    /// A look as the janitor takes it (the janitor itself never runs here: its runtime is not
    /// driven).
    fn look(backlog: &Backlog) {
        let futures = std::mem::take(&mut backlog.lock().futures);
        backlog.look(futures, false);
    }

    #[test]
    fn a_look_polls_only_what_was_woken_and_drops_what_is_past_its_time() {
        let crate_thread = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let backlog = Backlog::new(crate_thread.handle().clone());
        let (waiting, expired) = (Probe::default(), Probe::default());
        backlog.park(Instant::now() + Duration::from_secs(60), waiting.clone());
        backlog.park(Instant::now(), expired.clone());

        look(&backlog);
        assert_eq!((waiting.polls(), expired.polls()), (1, 0));
        assert_eq!(backlog.lock().futures.len(), 1, "the expired one is gone");

        look(&backlog);
        assert_eq!(waiting.polls(), 1, "not woken, not polled");

        waiting.wake();
        look(&backlog);
        look(&backlog);
        assert_eq!(waiting.polls(), 2, "polled once per wake");
        assert_eq!(backlog.lock().futures.len(), 1);
    }
}
