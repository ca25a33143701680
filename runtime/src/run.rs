//! Running a body under the lock: [`Runtime::run`] and [`Runtime::run_with`], what
//! `#[singleton]` functions call.

use std::borrow::Borrow;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::redlock::{Acquired, SplitVoteRetries};
use crate::slot::{self, DoneMarker};
use crate::{keys, telemetry};
use crate::{Error, LostReason, OnLost, Options, Outcome, Runtime, Skip};

impl Runtime {
    /// Runs `body` only if this call takes the lock on `key` for `ttl`, with every other option
    /// at its default (see [`Options::new`]); [`Runtime::run_with`] takes options.
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # use cluster_singleton::Outcome;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let outcome = runtime.run("cache-warmup", Duration::from_secs(300), async { 7 }).await?;
    /// if let Outcome::Ran(warmed) = outcome {
    ///     println!("warmed {warmed} entries");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn run<'a, F: Future + 'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        body: F,
    ) -> impl Future<Output = Result<Outcome<F::Output>, Error>> + 'a {
        self.run_with(key, Options::new(ttl), body, |_| true)
    }

    /// Runs `body` only if this call takes the lock on `key`, as `options` say; what
    /// `#[singleton]` functions do.
    ///
    /// While the body runs, the lease is renewed (unless `options` turn that off) and the body
    /// sees it through [`lease()`](crate::lease()). When the body is done, the lock is released, or
    /// kept until `min_hold` when `succeeded` says the body's output is a success
    /// (`Result::is_ok` for a `Result`, `|_| true` for anything else). If the body panics or the
    /// returned future is dropped, the lock is released in the background at once.
    ///
    /// Returns `Ok(Outcome::Ran(..))` when the body ran under the lock to its end,
    /// `Ok(Outcome::Skipped(..))` when another holder has it (after `wait`, if set), and
    /// [`Error::LeaseLost`] when the lease was lost while the body ran.
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # use cluster_singleton::runtime::Options;
    /// # use cluster_singleton::Outcome;
    /// # async fn invoice() -> Result<u32, std::io::Error> { Ok(3) }
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let options = Options::new(Duration::from_secs(60)).min_hold(Duration::from_secs(50));
    /// match runtime.run_with("invoices", options, invoice(), Result::is_ok).await? {
    ///     Outcome::Ran(result) => println!("ran: {result:?}"),
    ///     Outcome::Skipped(why) => println!("skipped: {why}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_with<'a, F, S>(
        &'a self,
        key: &'a str,
        options: Options,
        body: F,
        succeeded: S,
    ) -> impl Future<Output = Result<Outcome<F::Output>, Error>> + 'a
    where
        F: Future + 'a,
        S: FnOnce(&F::Output) -> bool + 'a,
    {
        // Boxed before any future holds it: each future that holds a value keeps bytes of its
        // own for it for as long as it lives, and the call's futures live as long as the body
        // runs (for a lease held for hours, and for each of thousands held at once).
        Runtime::run_boxed(self, key, options, Box::pin(body), succeeded)
    }

    /// [`Runtime::run_with`] on `runtime` (borrowed by `run_with`; owned by `#[singleton]`
    /// functions, which find it when they call this), with the body already boxed.
    ///
    /// The call's future lives as long as the body runs (for a lease held for hours, and for
    /// each of thousands held at once), so it keeps each value once: the arguments stay here,
    /// and the call borrows them. The call's span is made when the call is first polled (under
    /// the span and the subscriber in effect then); when something listens to it, the traced
    /// call is a boxed future of its own, since entering a span on every poll costs even when
    /// nothing listens, and a span kept in this future would take its bytes for every call.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub(crate) fn run_boxed<'a, R, F, S>(
        runtime: R,
        key: &'a str,
        options: Options,
        body: Pin<Box<F>>,
        succeeded: S,
    ) -> impl Future<Output = Result<Outcome<F::Output>, Error>> + 'a
    where
        R: Borrow<Runtime> + 'a,
        F: Future + 'a,
        S: FnOnce(&F::Output) -> bool + 'a,
    {
        async move {
            let call = Runtime::run_untraced(runtime.borrow(), key, &options, body, succeeded);
            // Made in a block of its own, so that this future keeps no bytes for the span.
            let call = {
                // One span per call; the votes and the validity are recorded on it by the
                // attempt, and the body's own spans and events nest under it.
                let span = tracing::info_span!(
                    "singleton",
                    key,
                    nodes = runtime.borrow().node_count(),
                    granted = tracing::field::Empty,
                    busy = tracing::field::Empty,
                    failed = tracing::field::Empty,
                    validity_ms = tracing::field::Empty,
                    held_ms = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                    elapsed_ms = tracing::field::Empty,
                );
                if span.is_disabled() {
                    Either::Left(call.inspect(log_outcome))
                } else {
                    let started = Instant::now();
                    let traced = call.instrument(span.clone()).map(move |result| {
                        span.record("outcome", telemetry::outcome_name(&result));
                        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
                        span.in_scope(|| log_outcome(&result));
                        result
                    });
                    Either::Right(Box::pin(traced))
                }
            };
            let result = call.await;
            // Worked out again rather than kept from the call's own: kept in this future, it
            // would take its bytes for as long as the body runs.
            let label = telemetry::key_label(runtime.borrow().metrics_key_label(), key, &options);
            telemetry::finished(label, telemetry::outcome_name(&result));
            result
        }
    }

    /// `run_with` without its span and log event. An `async` block rather than an `async fn`:
    /// an `async fn` keeps each argument twice in its future (as given, and as its own
    /// variable).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    fn run_untraced<'a, F, S>(
        &'a self,
        key: &'a str,
        options: &'a Options,
        body: Pin<Box<F>>,
        succeeded: S,
    ) -> impl Future<Output = Result<Outcome<F::Output>, Error>> + 'a
    where
        F: Future + 'a,
        S: FnOnce(&F::Output) -> bool + 'a,
    {
        async move {
            // The key as the metrics name it.
            let label = telemetry::key_label(self.metrics_key_label(), key, options);
            self.check_options(options)?;
            // The attempt's and the release's futures are boxed, and so is the done marker: the
            // call's own future, which lives as long as the body runs, then keeps only what the
            // body's run needs (a lease held for hours costs its bytes for hours, and so does each
            // of thousands held at once; the attempt's is a heap allocation for a round trip).
            let acquired = {
                // A call for a period retries a split vote until the period ends (see
                // `redlock::acquire`). Made here, so that the call's future does not keep it
                // while the body runs.
                let period_ends = slot::period_of(options.slot)?
                    .map(|period| Instant::now() + period.time_left());
                let retries = SplitVoteRetries::new(period_ends, self.shutting_down());
                let attempt_started = Instant::now();
                let acquired = Box::pin(self.take(key, options, &retries)).await;
                telemetry::attempted(
                    label,
                    attempt_started.elapsed(),
                    matches!(acquired, Ok(Acquired::Taken(_))),
                );
                acquired
            };
            let lease = match acquired? {
                Acquired::Taken(lease) => lease,
                Acquired::Busy => return Ok(Outcome::Skipped(Skip::Busy)),
                Acquired::SplitVote { attempts } => {
                    return Ok(Outcome::Skipped(Skip::SplitVote { attempts }))
                }
            };
            let done_marker = slot::period_of(options.slot)?.map(|period| {
                let key = keys::done_marker(self.key_prefix(), key, period.index());
                Box::new(DoneMarker { period, key })
            });
            if let Some(DoneMarker {
                period,
                key: marker,
            }) = done_marker.as_deref()
            {
                if Box::pin(slot::done(self.nodes(), marker, period)).await? {
                    Box::pin(lease.release()).await?;
                    return Ok(Outcome::Skipped(Skip::AlreadyDone {
                        period_start: period.start(),
                    }));
                }
            }
            // Looking for the marker waits for every node (a frozen one for its whole timeout),
            // with nothing renewing yet: a lease that ran out meanwhile must not start the body.
            if let Some(reason) = lease.lost() {
                return Err(lease.give_up(reason, false));
            }
            // Renewal runs beside the body, and beside the done marker's write after it; it stops
            // before the release, so that it cannot extend a key we are deleting.
            let mut renewal = std::pin::pin!(lease.renewal(options));
            let body = lease.info().scope(body);
            let value = match options.on_lost {
                OnLost::Cancel => {
                    let lost = lease.info().lost();
                    tokio::select! {
                        biased;
                        value = body => Some(value),
                        _ = lost => None,
                        never = &mut renewal => match never {},
                    }
                }
                OnLost::Continue => tokio::select! {
                    biased;
                    value = body => Some(value),
                    never = &mut renewal => match never {},
                },
            };
            // `Ran` only if the lease is still valid now that the body has ended: a body that
            // outlived it (blocked its thread, or was paused, past the deadline) may have run beside
            // another holder.
            let value = match (value, lease.lost()) {
                (Some(value), None) => value,
                (value, Some(reason)) => return Err(lease.give_up(reason, value.is_some())),
                (None, None) => unreachable!("the body is only cut short by a lost lease"),
            };
            let succeeded = succeeded(&value);
            if let (
                Some(DoneMarker {
                    period,
                    key: marker,
                }),
                true,
            ) = (done_marker.as_deref(), succeeded)
            {
                // Written only where the lock is still ours, while renewal goes on; then the lease
                // is checked again, so that `Ran` means the period was marked under the lock.
                let marking =
                    Box::pin(slot::mark_done(self.nodes(), marker, lease.claim(), period));
                let marked = tokio::select! {
                    marked = marking => marked,
                    never = &mut renewal => match never {},
                };
                match marked {
                    Ok(()) => {}
                    Err(slot::NotMarked::NotOurs) => lease.lose(LostReason::TakenOver),
                    Err(slot::NotMarked::NoQuorum(err)) => tracing::warn!(
                        error = %err,
                        "the done marker reached too few nodes; this period may run again"
                    ),
                }
                if let Some(reason) = lease.lost() {
                    return Err(lease.give_up(reason, true));
                }
            }
            let keep = match options.min_hold {
                Some(min_hold) if succeeded => min_hold.saturating_sub(lease.held_for()),
                _ => Duration::ZERO,
            };
            let held = lease.held_for();
            tracing::Span::current().record("held_ms", held.as_millis() as u64);
            let released = Box::pin(lease.release_keeping(keep)).await;
            telemetry::released(label, held, released.is_ok());
            if let Err(err) = released {
                // The body ran; a release that could not reach a quorum leaves copies that expire
                // with the ttl, which is worth a warning but is not an error of the call.
                tracing::warn!(error = %err, "releasing the lock failed; it expires with its ttl");
            }
            Ok(Outcome::Ran(value))
        }
    }
}

/// The one event of a call, at the level that says whether someone should look: `INFO` when the
/// body ran, `DEBUG` when another holder had the key (contention is the normal case, never
/// worth a page), `WARN` when the nodes could not decide or the lease was lost, `ERROR` when the
/// program itself is wrong (a bad setting, no `init`). A call cut short by `shutdown` is `INFO`.
fn log_outcome<T>(result: &Result<Outcome<T>, Error>) {
    match result {
        Ok(Outcome::Ran(_)) => tracing::info!("the body ran under the lock"),
        Ok(Outcome::Skipped(why)) => tracing::debug!("skipped: {why}"),
        Err(
            err @ (Error::ShutDown
            | Error::LeaseLost {
                reason: LostReason::Shutdown,
                ..
            }),
        ) => tracing::info!(error = %err, "the call ended with the shutdown"),
        Err(err @ (Error::InvalidConfig(_) | Error::NotInitialised | Error::Internal(_))) => {
            tracing::error!(error = %err, "the call could not run")
        }
        Err(err) => tracing::warn!(error = %err, "the call failed"),
    }
}
