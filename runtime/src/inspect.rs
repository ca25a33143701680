//! Looking into the locks from outside a call, for operators: who holds a key and for how long
//! ([`Runtime::inspect`]), which keys are held ([`Runtime::list`]), each node's health
//! ([`Runtime::health`]), and the forced unlock ([`Runtime::force_unlock`]).
//!
//! None of these take part in locking: they read what the nodes hold now, which may change the
//! moment after.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::node::{Checkup, NodeError};
use crate::nodes::Nodes;
use crate::random::holder_of;
use crate::round::{Round, Tally, Vote};
use crate::slot::Period;
use crate::{keys, Error, NodeFailure, Runtime};

/// How long `list` waits for a node to walk its keys: `SCAN` takes many round trips on a node
/// with many keys (each bounded by the node timeout).
const LIST_WITHIN: Duration = Duration::from_secs(300);

/// What the nodes hold of one lock now: [`Runtime::inspect`]'s answer.
///
/// ```
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// use std::time::Duration;
/// use cluster_singleton::runtime::Config;
///
/// let runtime = Config::new(["memory://lock-state-doc"]).holder_id("reporter-1").build()?;
/// assert!(!runtime.inspect("report").await?.is_held());
///
/// let lease = runtime.lock("report", Duration::from_secs(30)).await?.expect("free");
/// let state = runtime.inspect("report").await?;
/// let holder = state.holder().expect("held");
/// assert_eq!(holder.holder_id.as_deref(), Some("reporter-1"));
/// assert_eq!(holder.nodes, 1);
/// assert!(holder.time_left <= Duration::from_secs(30));
/// # lease.release().await?;
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    /// The key as the job names it (`daily-email`).
    pub key: String,
    /// The key in Redis, with the prefix (`singleton:lock:daily-email`).
    pub redis_key: String,
    /// How many nodes the runtime locks on, and how many must hold a token for it to be held.
    pub nodes: usize,
    /// See [`LockState::nodes`].
    pub quorum: usize,
    /// Each distinct value found on the nodes, most widely held first. More than one means a
    /// lock being taken, or leftovers of an attempt that lost, which expire with their ttl.
    pub copies: Vec<LockCopy>,
    /// The nodes that did not answer, and why.
    pub unanswered: Vec<NodeFailure>,
    /// The key's fencing counter (the highest on the nodes that answered): the fencing token of
    /// the last holder that took it with `fencing`; `None` if it was never fenced.
    pub fencing_counter: Option<u64>,
    /// From [`Runtime::inspect_slot`]: whether a done marker for the current period was found
    /// on any node (a run of this period succeeded). `None` from [`Runtime::inspect`].
    pub done_this_period: Option<bool>,
}

impl LockState {
    /// The copy held on a quorum of nodes, if any: the holder, as far as the nodes can tell.
    pub fn holder(&self) -> Option<&LockCopy> {
        self.copies.first().filter(|copy| copy.nodes >= self.quorum)
    }

    /// Whether a quorum of nodes holds one token: someone holds the lock.
    pub fn is_held(&self) -> bool {
        self.holder().is_some()
    }
}

/// One value of a lock key, and the nodes that hold it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockCopy {
    /// The holder's id ([`Config::holder_id`](crate::Config::holder_id)), read from
    /// the value; `None` for a value this crate did not write (an older version, or another
    /// program using the key).
    pub holder_id: Option<String>,
    /// The whole value: the holder's token, the credential its release checks. Handle it as
    /// you would the Redis password.
    pub token: String,
    /// On how many nodes.
    pub nodes: usize,
    /// How long until fewer than a quorum of nodes hold it (when a quorum does), or until the
    /// last copy expires (when fewer do), as the nodes' expiries say; renewal moves it on.
    pub time_left: Duration,
}

/// One node's state: [`Runtime::health`]'s answer, per node.
///
/// ```
/// # async fn demo() -> Result<(), cluster_singleton::Error> {
/// let runtime = cluster_singleton::runtime::Config::new(["memory://health-doc"]).build()?;
/// for node in runtime.health().await {
///     assert!(node.reachable && node.votes);
///     println!("{}: ping {:?}, Redis {}", node.node, node.ping.unwrap(), node.version.unwrap());
/// }
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node's URL, password hidden.
    pub node: String,
    /// Whether it answered a `PING` within the node timeout.
    pub reachable: bool,
    /// How long the `PING` took.
    pub ping: Option<Duration>,
    /// `redis_version` from `INFO server` (`memory` for the in-process store).
    pub version: Option<String>,
    /// `run_id` from `INFO server`: it changes when the server restarts.
    pub run_id: Option<String>,
    /// Whether a lock would count its vote now.
    pub votes: bool,
    /// When it does not vote because it started recently (or lost its data, or its clock
    /// stepped): how long until it does, as far as this process knows.
    pub grace_left: Option<Duration>,
    /// Why it is unreachable, or why its vote does not count; `None` when all is well.
    pub problem: Option<String>,
}

impl Runtime {
    /// What the nodes hold of the lock `key` now: whether it is held, by whom (see
    /// [`Config::holder_id`](crate::Config::holder_id)), on how many nodes, for how much
    /// longer, and the key's fencing counter.
    ///
    /// Reads every node at once, young nodes included (their copies are real, even if their
    /// votes do not count yet). Fails with [`Error::NoQuorum`] when fewer than a quorum of
    /// nodes answer, since the answer could then be wrong either way.
    ///
    /// ```no_run
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let state = runtime.inspect("daily-email").await?;
    /// match state.holder() {
    ///     Some(holder) => println!(
    ///         "held by {} on {} of {} nodes, {:?} left",
    ///         holder.holder_id.as_deref().unwrap_or("?"), holder.nodes, state.nodes, holder.time_left
    ///     ),
    ///     None => println!("free"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn inspect(&self, key: &str) -> Result<LockState, Error> {
        self.read_lock(key, None).await
    }

    /// [`Runtime::inspect`], and whether a done marker exists for the current period of a job
    /// with this `slot` ([`LockState::done_this_period`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let state = runtime.inspect_slot("daily-email", Duration::from_secs(24 * 3600)).await?;
    /// println!("done today: {:?}", state.done_this_period);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn inspect_slot(&self, key: &str, slot: Duration) -> Result<LockState, Error> {
        crate::checks::check_millis("slot", slot)?;
        let period = Period::now(slot)?;
        self.read_lock(key, Some(period)).await
    }

    async fn read_lock(&self, key: &str, period: Option<Period>) -> Result<LockState, Error> {
        let prefix = self.key_prefix();
        let redis_key = keys::lock(prefix, key);
        let fence_key = keys::fence(prefix, key);
        let marker = period.map(|period| Arc::from(keys::done_marker(prefix, key, period.index())));
        let (lock_key, fence_key): (Arc<str>, Arc<str>) =
            (redis_key.as_str().into(), fence_key.into());
        let wait = self.nodes().timeout();
        let (copies, unanswered) = self
            .ask_every_node(&redis_key, wait, |nodes, node| {
                let (lock_key, fence_key, marker) =
                    (lock_key.clone(), fence_key.clone(), marker.clone());
                async move {
                    let copy = nodes
                        .node(node)
                        .copy_of(&lock_key, &fence_key, marker.as_deref());
                    copy.await
                }
            })
            .await?;
        let mut state = LockState {
            key: key.to_owned(),
            redis_key,
            nodes: self.node_count(),
            quorum: self.quorum(),
            copies: Vec::new(),
            unanswered,
            fencing_counter: copies.iter().filter_map(|copy| copy.fence).max(),
            done_this_period: period.map(|_| copies.iter().any(|copy| copy.marker.is_some())),
        };
        let mut by_value: Vec<(String, Vec<Duration>)> = Vec::new();
        for copy in copies {
            let Some(value) = copy.value else { continue };
            let left = copy.time_left.unwrap_or(Duration::MAX);
            match by_value.iter_mut().find(|(seen, _)| *seen == value) {
                Some((_, lefts)) => lefts.push(left),
                None => by_value.push((value, vec![left])),
            }
        }
        state.copies = by_value
            .into_iter()
            .map(|(token, mut lefts)| {
                lefts.sort_unstable_by_key(|left| std::cmp::Reverse(*left));
                let nodes = lefts.len();
                // Held until the quorum-th longest copy expires; a minority, until its longest.
                let until = if nodes >= self.quorum() {
                    self.quorum() - 1
                } else {
                    0
                };
                LockCopy {
                    holder_id: holder_of(&token).map(str::to_owned),
                    token,
                    nodes,
                    time_left: lefts[until],
                }
            })
            .collect();
        state
            .copies
            .sort_by_key(|copy| std::cmp::Reverse(copy.nodes));
        Ok(state)
    }

    /// The locks whose key (as jobs name it) matches the glob `pattern` (`*` for all,
    /// `invoice:*` for the keys of one job template), found with `SCAN` on every node, each as
    /// [`Runtime::inspect`] sees it; keys found free by the time they are read are left out.
    ///
    /// Fails with [`Error::NoQuorum`] when fewer than a quorum of nodes answer.
    ///
    /// ```no_run
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// for state in runtime.list("invoice:*").await? {
    ///     let holder = state.holder().and_then(|holder| holder.holder_id.clone());
    ///     println!("{} held by {}", state.key, holder.unwrap_or_else(|| "nobody (leftovers)".into()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&self, pattern: &str) -> Result<Vec<LockState>, Error> {
        let lock_prefix = keys::lock(self.key_prefix(), "");
        let redis_pattern = format!("{}{pattern}", glob_escape(&lock_prefix));
        let pattern: Arc<str> = redis_pattern.as_str().into();
        let (found, _) = self
            .ask_every_node(&redis_pattern, LIST_WITHIN, |nodes, node| {
                let pattern = pattern.clone();
                async move { nodes.node(node).scan(&pattern).await }
            })
            .await?;
        let mut keys: Vec<String> = found
            .into_iter()
            .flatten()
            .filter_map(|redis_key| redis_key.strip_prefix(&lock_prefix).map(str::to_owned))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            let state = self.inspect(&key).await?;
            if !state.copies.is_empty() {
                states.push(state);
            }
        }
        Ok(states)
    }

    /// **Operator action**: deletes the lock `key` on every node, whoever holds it, and returns
    /// on how many nodes a copy was deleted.
    ///
    /// This breaks mutual exclusion on purpose: a holder still running keeps running, and the
    /// next caller runs beside it. Use it only for a key you know is abandoned (its holder is
    /// gone, and the ttl is long). A holder that is still renewing puts its token back where the
    /// key is missing at its next renewal, so forcing out a live holder may not even free the
    /// key; if another caller took it in between, that renewal finds the key taken and the old
    /// holder's lease is lost. The crate never calls it. The fencing counter is left alone,
    /// so the next holder's fencing token is still larger than the forced-out holder's. Logged
    /// as a warning, with the holders it removed.
    ///
    /// Fails with [`Error::NoQuorum`] when fewer than a quorum of nodes answered: copies on the
    /// others may still hold the key.
    ///
    /// ```no_run
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) -> Result<(), cluster_singleton::Error> {
    /// let deleted = runtime.force_unlock("daily-email").await?;
    /// println!("deleted on {deleted} nodes");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn force_unlock(&self, key: &str) -> Result<usize, Error> {
        let redis_key = keys::lock(self.key_prefix(), key);
        let lock_key: Arc<str> = redis_key.as_str().into();
        let wait = self.nodes().timeout();
        let (deleted, unanswered) = self
            .ask_every_node(&redis_key, wait, |nodes, node| {
                let lock_key = lock_key.clone();
                async move { nodes.node(node).force_delete(&lock_key).await }
            })
            .await?;
        let mut holders: Vec<&str> = deleted
            .iter()
            .flatten()
            .map(|value| holder_of(value).unwrap_or("(not a token of this crate)"))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        let deleted_on = deleted.iter().flatten().count();
        tracing::warn!(
            key = redis_key,
            deleted_on,
            holders = ?holders,
            unanswered = unanswered.len(),
            "lock forced open by an operator: a holder still running keeps running beside the next"
        );
        Ok(deleted_on)
    }

    /// Each node's health, in the order of the configuration: whether it answers a `PING` and
    /// how fast, its Redis version and `run_id`, and whether its vote counts now (a node that
    /// started less than the restart grace ago does not vote yet, see
    /// [`Config::restart_grace`](crate::Config::restart_grace)). Never fails: an
    /// unreachable node is reported as such.
    ///
    /// ```no_run
    /// # async fn demo(runtime: cluster_singleton::runtime::Runtime) {
    /// for node in runtime.health().await {
    ///     match (&node.problem, node.ping) {
    ///         (None, Some(ping)) => println!("{}: up, ping {ping:?}", node.node),
    ///         (Some(problem), _) => println!("{}: {problem}", node.node),
    ///         (None, None) => unreachable!(),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn health(&self) -> Vec<NodeHealth> {
        let nodes = self.nodes();
        let checkups = join_all(nodes.iter().map(|node| node.checkup())).await;
        nodes
            .iter()
            .zip(checkups)
            .map(|(node, checkup)| {
                let grace_left = node
                    .grace_ends()
                    .map(|ends| ends.saturating_duration_since(Instant::now()));
                match checkup {
                    Ok(Checkup {
                        ping,
                        version,
                        run_id,
                        no_vote,
                    }) => NodeHealth {
                        node: node.name().to_owned(),
                        reachable: true,
                        ping: Some(ping),
                        version: Some(version),
                        run_id: Some(run_id),
                        votes: no_vote.is_none(),
                        grace_left: grace_left.filter(|_| no_vote.is_some()),
                        problem: no_vote.map(|err| err.to_string()),
                    },
                    Err(err) => NodeHealth {
                        node: node.name().to_owned(),
                        reachable: false,
                        ping: None,
                        version: None,
                        run_id: None,
                        votes: false,
                        grace_left: None,
                        problem: Some(err.to_string()),
                    },
                }
            })
            .collect()
    }

    /// Runs `ask` on every node in one round, waiting up to `wait` for each: the answers, and
    /// the failures of the nodes that gave none; [`Error::NoQuorum`] about `what` when fewer
    /// than a quorum answered.
    async fn ask_every_node<T, F>(
        &self,
        what: &str,
        wait: Duration,
        ask: impl FnMut(Arc<Nodes>, usize) -> F,
    ) -> Result<(Vec<T>, Vec<NodeFailure>), Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, NodeError>> + Send + 'static,
    {
        let nodes = self.nodes();
        let mut round = Round::start_within(nodes, 0..nodes.len(), wait, ask);
        let mut tally = Tally::new(nodes);
        let mut answers = Vec::with_capacity(nodes.len());
        let answered = |_node, answer| {
            answers.push(answer);
            Vote::Yes
        };
        round.count(&mut tally, answered, |_| false).await;
        if tally.answered() < nodes.quorum() {
            return Err(tally.no_quorum(what, nodes).into_error());
        }
        Ok((answers, tally.failures().to_vec()))
    }
}

/// `text` with the characters a Redis glob treats specially escaped, so that it matches itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
