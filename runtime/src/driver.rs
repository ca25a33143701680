//! Which tokio runtime drives a connection, and the crate thread's clock.
//!
//! A lock costs two round trips, and on a fast network a thread hand-off costs about as much as
//! a round trip. So a connection is driven by the caller's own runtime when that is a
//! multi-threaded one (a program's `#[tokio::main]`): taking and releasing a lock then never
//! leaves the caller's threads, as with a plain redis-rs client. Elsewhere (no runtime, a
//! current-thread runtime that may stop being driven at any moment, as each `#[tokio::test]`
//! does) the crate's own one-thread runtime, the crate thread, drives it.
//!
//! A runtime can shut down while the process goes on (tests, programs that build runtimes of
//! their own), taking the connection tasks it drives with it. Each runtime that drives a
//! connection gets a sentinel task that never finishes: the runtime drops it when it shuts down,
//! which marks that runtime gone, and connections driven there are opened again on the next
//! call instead of failing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

/// The runtime that drives a connection.
pub(crate) struct Driver {
    /// Where to spawn the connection's tasks.
    pub(crate) handle: Handle,
    /// Cleared when that runtime shuts down; `None` for the crate thread, which never does.
    pub(crate) alive: Option<Arc<AtomicBool>>,
}

/// Whether a connection driven as `alive` says can still be used.
pub(crate) fn is_alive(alive: Option<&Arc<AtomicBool>>) -> bool {
    alive.is_none_or(|alive| alive.load(Ordering::Acquire))
}

/// The runtime that should drive a connection opened now: the caller's, when it is a
/// multi-threaded runtime other than the crate thread; otherwise the crate thread.
pub(crate) fn for_connection(crate_thread: &Handle) -> Driver {
    match callers_runtime(crate_thread) {
        Some(handle) => Driver {
            alive: Some(sentinel(&handle)),
            handle,
        },
        None => Driver {
            handle: crate_thread.clone(),
            alive: None,
        },
    }
}

/// A timer on the crate thread's clock: it works whether or not the caller's runtime has timers
/// enabled, and its wake-up costs the caller nothing until it fires.
pub(crate) fn sleep_until(crate_thread: &Handle, deadline: Instant) -> tokio::time::Sleep {
    let _on_engine = crate_thread.enter();
    tokio::time::sleep_until(deadline.into())
}

/// Bounds `future` by `timeout`, on the crate thread's clock (see [`sleep_until`]).
pub(crate) async fn timeout<F: Future>(
    crate_thread: &Handle,
    timeout: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let bounded = {
        let _on_engine = crate_thread.enter();
        tokio::time::timeout(timeout, future)
    };
    bounded.await
}

/// The caller's runtime, if it is multi-threaded, not the crate thread, and not known to lack I/O or
/// timers.
fn callers_runtime(crate_thread: &Handle) -> Option<Handle> {
    let current = Handle::try_current().ok()?;
    let usable = current.runtime_flavor() == RuntimeFlavor::MultiThread
        && current.id() != crate_thread.id()
        && !lock(&UNABLE).contains(&current.id());
    usable.then_some(current)
}

/// Runtimes found unable to drive a connection (built without I/O or timers).
static UNABLE: Mutex<Vec<tokio::runtime::Id>> = Mutex::new(Vec::new());

/// Notes that `runtime` cannot drive connections: the crate thread drives those opened on it.
pub(crate) fn cannot_drive(runtime: &Handle) {
    lock(&UNABLE).push(runtime.id());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The runtimes that have a sentinel, with the flag each one clears.
static SENTINELS: Mutex<Vec<(tokio::runtime::Id, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

/// The flag that `runtime`'s sentinel clears when the runtime shuts down; the sentinel is
/// spawned on first use.
fn sentinel(runtime: &Handle) -> Arc<AtomicBool> {
    let mut sentinels = lock(&SENTINELS);
    sentinels.retain(|(_, alive)| alive.load(Ordering::Acquire));
    if let Some((_, alive)) = sentinels.iter().find(|(id, _)| *id == runtime.id()) {
        return alive.clone();
    }
    let alive = Arc::new(AtomicBool::new(true));
    let guard = ClearOnDrop(alive.clone());
    // A runtime that is shutting down drops the task at once, which clears the flag at once.
    drop(runtime.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    }));
    sentinels.push((runtime.id(), alive.clone()));
    alive
}

/// Clears its flag when dropped.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
