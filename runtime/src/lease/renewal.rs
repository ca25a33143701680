//! Renewal: while a body runs, its lease is extended every third of the ttl, by a task on the
//! crate's own thread.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Held, Lease};
use crate::nodes::Nodes;
use crate::redlock::{extend, Extension};
use crate::LostReason;
use crate::{driver, Options};

/// Renewal extends the lease after this fraction of the ttl: at a third, two more tries fit in
/// before the lease would run out.
const RENEW_AFTER_TTL_DIVISOR: u32 = 3;

/// After a renewal that could not reach a quorum, the next try comes this fraction of the ttl
/// later, for as long as the lease is still valid.
const RENEW_RETRY_TTL_DIVISOR: u32 = 10;

impl Lease {
    /// Keeps the lease for a body, for as long as the returned future is polled beside it:
    /// renews it, unless `options` turn renewal off.
    ///
    /// Nothing happens until the first renewal is due (a third of the ttl), so a short body costs
    /// one timer. From then on a task on the crate's own runtime does the work, so that renewal
    /// goes on while the body is busy; dropping the future stops it, so renewal never outlives
    /// the call. (A body that blocks its thread from before that point, never yielding, starts
    /// no renewal: its lease runs out, and the call says so when the body ends.)
    pub(crate) fn renewal(&self, options: &Options) -> impl Future<Output = Infallible> + 'static {
        let (nodes, held, options) = (self.nodes.clone(), self.held.clone(), *options);
        let due = held.acquired_at + held.ttl / RENEW_AFTER_TTL_DIVISOR;
        // Watched from before the lock was taken: a step seen before renewal begins counts too.
        let mut clock_jumps = self.clock_jumps.clone();
        held.renews.store(options.renew, Ordering::SeqCst);
        async move {
            if options.renew {
                let jumped = tokio::select! {
                    () = driver::sleep_until(nodes.crate_thread(), due) => false,
                    () = clock_jumped(&mut clock_jumps) => true,
                };
                let crate_thread = nodes.crate_thread().clone();
                let renewal = renew(nodes, held.clone(), options, clock_jumps, jumped);
                let task = crate_thread.spawn(renewal);
                *held
                    .renewal
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
                let _stop = StopRenewalOnDrop(held);
                std::future::pending::<()>().await;
            }
            std::future::pending().await
        }
    }
}

/// Stops the renewal task when the call is done with the lease, however it ends (a release stops
/// it first, and waits for it: see [`Held::stop_renewal`]).
struct StopRenewalOnDrop(Arc<Held>);

impl Drop for StopRenewalOnDrop {
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
async fn renew(
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
