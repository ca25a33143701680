//! How a call takes and keeps its lock: what `#[singleton(...)]`'s arguments set.

use std::time::Duration;

use crate::checks::{check_duration, check_millis};
use crate::clock::drift_allowance;
use crate::Error;

/// How a call takes and keeps its lock; `#[singleton(...)]` builds one from its arguments, and
/// [`Runtime::run_with`](crate::Runtime::run_with) takes one directly.
///
/// ```
/// use std::time::Duration;
/// use cluster_singleton::runtime::{OnLost, Options};
///
/// let options = Options::new(Duration::from_secs(60))
///     .wait(Duration::from_secs(30))
///     .min_hold(Duration::from_secs(50))
///     .on_lost(OnLost::Continue);
/// assert_eq!(options.ttl(), Duration::from_secs(60));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
    pub(crate) renew: bool,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) on_lost: OnLost,
    pub(crate) min_hold: Option<Duration>,
    pub(crate) slot: Option<Duration>,
    pub(crate) fencing: bool,
    pub(crate) key_template: Option<&'static str>,
}

/// What happens to a body whose lease is lost while it runs: renewal could not keep a quorum (a
/// majority of nodes down or unreachable), the key was taken over, or `max_hold` ran out.
///
/// Either way the call returns [`Error::LeaseLost`], never `Ran`: the
/// body did not run (entirely) under the lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnLost {
    /// Drop the body at its next `.await`, so that it stops before another holder's run starts
    /// overlapping with it. The default: mutual exclusion is the promise, and a body that goes
    /// on without the lock breaks it.
    #[default]
    Cancel,
    /// Let the body run to its end (for work that must not stop half-way); it learns of the loss
    /// through [`lease()`](crate::lease()), and the caller through the error.
    Continue,
}

impl Options {
    /// One attempt at the lock, which lives for `ttl` and is renewed while the body runs, with
    /// the body cancelled if the lease is lost and the key deleted as soon as the body is done.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cluster_singleton::runtime::Options::new(Duration::from_secs(600));
    /// ```
    pub const fn new(ttl: Duration) -> Self {
        Options {
            ttl,
            wait: None,
            renew: true,
            max_hold: None,
            on_lost: OnLost::Cancel,
            min_hold: None,
            slot: None,
            fencing: false,
            key_template: None,
        }
    }

    /// The lock's ttl.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// assert_eq!(Options::new(Duration::from_secs(5)).ttl(), Duration::from_secs(5));
    /// ```
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Instead of skipping at once when the lock is busy, try again (with random pauses) until
    /// `wait` has passed. Off by default: a busy lock usually means another machine is doing the
    /// job, and running it again once that machine is done would be the duplicate run the lock
    /// is there to prevent. Use it for work that every caller needs done, one at a time.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let options = Options::new(Duration::from_secs(60)).wait(Duration::from_secs(30));
    /// ```
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Whether to extend the lease while the body runs (default on): every third of the ttl,
    /// on a quorum, only while the key still holds our token. A body longer than the ttl then
    /// keeps its lock, and a holder that crashes stops renewing and frees the key within one
    /// ttl. Off, a body that outlives its ttl loses the lease.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let options = Options::new(Duration::from_secs(60)).renew(false);
    /// ```
    pub const fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// The longest the lock may be held in all, renewals included (default: no bound). When it
    /// has passed, renewal stops, and the lease is lost when its last renewal runs out.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let options = Options::new(Duration::from_secs(60)).max_hold(Duration::from_secs(3600));
    /// ```
    pub const fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// What happens to the body if the lease is lost while it runs (default
    /// [`OnLost::Cancel`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::{OnLost, Options};
    /// let options = Options::new(Duration::from_secs(60)).on_lost(OnLost::Continue);
    /// ```
    pub const fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Keep the key after a successful body until at least `min_hold` after the lock was taken
    /// (the key is given the rest of that time to live instead of being deleted), so that a
    /// machine whose cron fires a little late finds it busy instead of running the job again.
    /// Must not exceed the ttl. A body that panics, is cancelled or returns `Err` deletes the
    /// key at once, so that another machine may retry.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let options = Options::new(Duration::from_secs(60)).min_hold(Duration::from_secs(50));
    /// ```
    pub const fn min_hold(mut self, min_hold: Duration) -> Self {
        self.min_hold = Some(min_hold);
        self
    }

    /// Run at most once per period: periods of this length, aligned to the Unix epoch in UTC
    /// (`"1d"` is midnight to midnight UTC, `"1h"` each hour). A body that succeeds writes a done
    /// marker for its period on the nodes; a later call in the same period, on any machine,
    /// returns [`Skip::AlreadyDone`](crate::Skip::AlreadyDone). A body that panics, is
    /// cancelled, loses its lease or returns `Err` writes no marker, so another call may retry.
    ///
    /// The marker lives until one period after its own ends, and at least a period and a minute
    /// after it was written, so machines whose clocks disagree by less than a period (or a
    /// minute, for shorter periods) agree on it. It is written, in one step with a check that the lock
    /// is still ours, on every node, while renewal goes on; the lease is checked again after it,
    /// so a holder that lost its lock meanwhile marks nothing and returns `LeaseLost`. It is
    /// looked for on every node that answers; "no marker" counts only from a node that started
    /// before the period began (one started since may have forgotten it), and needs a quorum.
    ///
    /// The guarantee, then: at most one successful run per period while a majority of nodes is
    /// up, restarts included, provided the marker reached a quorum (else a warning says the
    /// period may run again) and the machine did not crash between the body's end and the
    /// marker (then the period runs again: at least once, not exactly once). The cost: right
    /// after a cluster starts, or a majority of its nodes restarts without persistence, calls
    /// fail with `NoQuorum` until the next period begins (unless the restart grace is off).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let daily = Options::new(Duration::from_secs(600)).slot(Duration::from_secs(24 * 3600));
    /// ```
    pub const fn slot(mut self, period: Duration) -> Self {
        self.slot = Some(period);
        self
    }

    /// Give the lease a fencing token ([`Lease::fencing_token`](crate::Lease::fencing_token),
    /// [`LeaseInfo::fencing_token`](crate::LeaseInfo::fencing_token)): a number larger than that
    /// of every earlier holder of the key, for the storage the job writes to, which can then
    /// refuse the writes of a holder that was paused past the end of its lease. Costs a second
    /// round trip per acquisition, and a counter key (`{prefix}fence:{key}`, no expiry) per lock
    /// key.
    ///
    /// Why the tokens increase, and under which assumptions:
    ///
    /// 1. Taking the lock reads each granting node's counter in the same atomic step as the
    ///    `SET NX`. The holder then picks a token above the highest of them, and above the wall
    ///    clock in microseconds, and raises the counter on every node where the lock is still
    ///    its own; the token is used only once a quorum raised it.
    /// 2. A later holder is granted a node only after the earlier key there is gone, hence after
    ///    the earlier raise there. Any two quorums share a node, so the later holder reads a
    ///    counter at least as high as the earlier token, and picks a higher one.
    /// 3. A node that restarts without persistence loses its counter. Then step 2 can fail if
    ///    the shared node is that one, and the clock floor takes over: the later token is still
    ///    higher if the later holder's clock is ahead of the earlier holder's clock at the
    ///    earlier acquisition, which holds when machines' clocks agree to better than the time
    ///    between the two acquisitions (at least the earlier lease's validity, when it was not
    ///    released early). That is every machine's clock: a token picked by a machine whose clock
    ///    ran ahead raises the floor that every later token needs. Persistence
    ///    (`appendfsync always`) removes this assumption.
    ///
    /// Counters are compared and stored as decimal strings, exact over all of `u64`; a counter
    /// at `u64::MAX` makes the acquisition fail with an error rather than wrap.
    ///
    /// This is the guarantee that Martin Kleppmann's critique of Redlock says a lock needs and
    /// Redlock alone lacks: a holder paused past its lease (a GC pause, a frozen VM) is fenced
    /// off by the storage, whatever its own clock believes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// let options = Options::new(Duration::from_secs(60)).fencing(true);
    /// ```
    pub const fn fencing(mut self, fencing: bool) -> Self {
        self.fencing = fencing;
        self
    }

    /// The key as written before its placeholders were filled in, for the metrics' `key` label
    /// when [`Config::metrics_key_label`](crate::Config::metrics_key_label) asks for
    /// [`KeyLabel::Template`](crate::KeyLabel::Template): then every call of
    /// `"invoice:{customer_id}"` is one series, not one per customer. `#[singleton]` sets it for
    /// keys with placeholders; give it to [`Runtime::run_with`](crate::Runtime::run_with) for keys
    /// you format yourself. It changes nothing else: the lock is still the key's.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cluster_singleton::runtime::Options;
    /// # async fn invoice() {}
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime, customer_id: u64) -> Result<(), cluster_singleton::Error> {
    /// let options = Options::new(Duration::from_secs(60)).key_template("invoice:{customer_id}");
    /// runtime.run_with(&format!("invoice:{customer_id}"), options, invoice(), |_| true).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub const fn key_template(mut self, template: &'static str) -> Self {
        self.key_template = Some(template);
        self
    }
}

impl Options {
    /// Checks the options against each other, against `max_ttl` (`Config::max_ttl`) and
    /// against what a lock sets aside for clocks (`Config::drift_factor`), before anything is
    /// sent: each mistake is an [`Error::InvalidConfig`] that names the option.
    pub(crate) fn check(&self, max_ttl: Duration, drift_factor: f64) -> Result<(), Error> {
        if self.ttl > max_ttl {
            return Err(Error::InvalidConfig(format!(
                "the ttl ({:?}) is longer than `Config::max_ttl` ({:?}), the longest ttl the \
                 restart grace covers; raise `max_ttl` on every machine of the fleet, or keep \
                 the ttl short and let renewal extend the lease",
                self.ttl, max_ttl
            )));
        }
        check_millis("ttl", self.ttl)?;
        let allowance = drift_allowance(self.ttl, drift_factor);
        if self.ttl <= allowance {
            return Err(Error::InvalidConfig(format!(
                "the ttl ({:?}) leaves no validity after what a lock sets aside for clocks \
                 (ttl × drift factor + 2 ms = {allowance:?}), so no lock could ever be held; use \
                 a ttl well above the round trip to the nodes",
                self.ttl
            )));
        }
        if let Some(wait) = self.wait {
            check_duration("wait", wait, true)?;
        }
        if let Some(period) = self.slot {
            check_millis("slot", period)?;
        }
        if let Some(min_hold) = self.min_hold {
            check_millis("min_hold", min_hold)?;
            if min_hold > self.ttl {
                return Err(Error::InvalidConfig(format!(
                    "`min_hold` ({min_hold:?}) must not exceed the ttl ({:?}): the key lives \
                     for one ttl after the last renewal",
                    self.ttl
                )));
            }
        }
        if let Some(max_hold) = self.max_hold {
            check_duration("max_hold", max_hold, false)?;
            if max_hold < self.ttl {
                return Err(Error::InvalidConfig(format!(
                    "`max_hold` ({max_hold:?}) must be at least the ttl ({:?})",
                    self.ttl
                )));
            }
        }
        Ok(())
    }
}
