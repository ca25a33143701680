//! A held lock, released when it is done with or dropped.

use std::fmt;
use std::time::{Duration, Instant};

use crate::redlock::release;
use tokio::sync::oneshot;

use crate::{Error, NoQuorum, Runtime};

/// A lock held on a quorum of Redis nodes, from [`Runtime::lock`].
///
/// Release it with [`Lease::release`] when the work is done. A lease that is dropped without
/// (the task was cancelled, the code panicked) is released in the background at once, on the
/// crate's own thread, so it never waits for its ttl; only a process that dies leaves the key to
/// expire with the ttl.
///
/// ```no_run
/// use std::time::Duration;
/// use cluster_singleton_runtime::Runtime;
///
/// # async fn job() -> Result<(), cluster_singleton_runtime::Error> {
/// let runtime = Runtime::current()?;
/// if let Some(lease) = runtime.lock("nightly-report", Duration::from_secs(60)).await? {
///     println!("holding {} with token {}", lease.key(), lease.token());
///     // ... the work ...
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Lease {
    runtime: Runtime,
    key: String,
    token: String,
    valid_until: Instant,
    /// Cleared by `release`, so that `Drop` knows there is nothing left to do.
    held: bool,
}

impl Lease {
    pub(crate) fn new(runtime: Runtime, key: String, token: String, valid_until: Instant) -> Self {
        Lease {
            runtime,
            key,
            token,
            valid_until,
            held: true,
        }
    }

    /// The Redis key, with the runtime's prefix (`singleton:daily-email`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This acquisition's random token (128 bits, hex): the value of the key on the nodes, unique
    /// to this acquisition, usable as an idempotency key downstream.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How much longer the lock is safe to rely on: the ttl less the time taking it took and the
    /// clock-drift allowance, counted down since. Zero once it has run out.
    pub fn validity(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Deletes the key on every node where it still holds this lease's token, and waits until a
    /// quorum of nodes has answered (at most the per-node timeout).
    ///
    /// The release runs as a task of its own: if the caller is cancelled while waiting, it still
    /// completes, and it goes on to the slower nodes after this returns. Fails with
    /// [`Error::NoQuorum`] when fewer than a quorum of nodes answered; the copies left behind
    /// expire with the ttl.
    pub async fn release(mut self) -> Result<(), Error> {
        self.held = false;
        let (settled, outcome) = oneshot::channel();
        self.spawn_release(Some(settled));
        match outcome.await {
            Ok(result) => result.map_err(Error::NoQuorum),
            Err(_gone) => Err(Error::Internal(
                "the release task ended without an answer".into(),
            )),
        }
    }

    /// Starts the release on the crate's own runtime, which outlives whichever runtime, task or
    /// panic is dropping the lease.
    fn spawn_release(&mut self, settled: Option<oneshot::Sender<Result<(), NoQuorum>>>) {
        let runtime = self.runtime.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        self.runtime.engine().spawn(async move {
            let all = (0..runtime.node_count()).collect();
            release(&runtime, &key, &token, all, settled).await;
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.held {
            self.spawn_release(None);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("validity", &self.validity())
            .finish()
    }
}
