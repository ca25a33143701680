//! What an operator asks of one node: the copy of a key it holds, the keys matching a pattern,
//! a forced delete, and the node's health. None of it is a vote: it reads on the connection as
//! it is, whether or not the node's vote counts yet.

use std::time::{Duration, Instant};

use redis::InfoDict;

use super::{within, Node, NodeError};

/// Keys asked for per `SCAN` step: large enough that a node with a million keys is walked in a
/// thousand steps, small enough that no step holds the node up.
const SCAN_COUNT: usize = 1000;

/// What one node holds of a lock.
#[derive(Debug, Default)]
pub(crate) struct KeyCopy {
    /// The lock's value (its holder's token), if the key is set.
    pub(crate) value: Option<String>,
    /// How long until the key expires there.
    pub(crate) time_left: Option<Duration>,
    /// The key's fencing counter there.
    pub(crate) fence: Option<u64>,
    /// The done marker's value there, when one was asked for.
    pub(crate) marker: Option<String>,
}

/// A node's answer to a health check.
#[derive(Debug)]
pub(crate) struct Checkup {
    /// How long a `PING` took.
    pub(crate) ping: Duration,
    /// `redis_version` and `run_id` from `INFO server`.
    pub(crate) version: String,
    pub(crate) run_id: String,
    /// Why the node's vote does not count now, if it does not.
    pub(crate) no_vote: Option<NodeError>,
}

impl Node {
    /// `GET`, `PTTL` of `lock_key`, `GET fence_key` and, when given, `GET marker`, in one round
    /// trip.
    pub(crate) async fn copy_of(
        &self,
        lock_key: &str,
        fence_key: &str,
        marker: Option<&str>,
    ) -> Result<KeyCopy, NodeError> {
        if let Some(store) = self.memory() {
            let (value, time_left) = store.read(lock_key).unzip();
            return Ok(KeyCopy {
                value,
                time_left: time_left.flatten(),
                fence: store.get(fence_key).and_then(|fence| fence.parse().ok()),
                marker: marker.and_then(|marker| store.get(marker)),
            });
        }
        within(&self.crate_thread, self.timeout, async {
            let session = self.session().await?;
            let mut pipeline = redis::Pipeline::with_capacity(4);
            pipeline.cmd("GET").arg(lock_key);
            pipeline.cmd("PTTL").arg(lock_key);
            pipeline.cmd("GET").arg(fence_key);
            pipeline.cmd("GET").arg(marker.unwrap_or(lock_key));
            let (value, pttl, fence, marked): (
                Option<String>,
                i64,
                Option<String>,
                Option<String>,
            ) = self
                .query(
                    &session,
                    pipeline.query_async(&mut session.connection.clone()),
                )
                .await?;
            Ok(KeyCopy {
                // PTTL is -2 when the key expired between the two commands, -1 without expiry.
                time_left: u64::try_from(pttl).ok().map(Duration::from_millis),
                value,
                fence: fence.and_then(|fence| fence.parse().ok()),
                marker: marker.and(marked),
            })
        })
        .await
    }

    /// Every key matching the glob `pattern` (`SCAN ... MATCH`, never `KEYS`, which would stop
    /// the node while it walks them all).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.keys_matching(pattern));
        }
        let session = within(&self.crate_thread, self.timeout, self.session()).await?;
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let step = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned();
            let (next, found): (u64, Vec<String>) = within(
                &self.crate_thread,
                self.timeout,
                self.query(&session, step.query_async(&mut session.connection.clone())),
            )
            .await?;
            keys.extend(found);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Deletes `key` whatever it holds, returning what it held: for an operator's forced unlock
    /// only, never for the crate's own releases, which check the token first.
    pub(crate) async fn force_delete(&self, key: &str) -> Result<Option<String>, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.delete(key));
        }
        within(&self.crate_thread, self.timeout, async {
            let session = self.session().await?;
            let mut pipeline = redis::Pipeline::with_capacity(2);
            pipeline.cmd("GET").arg(key).cmd("DEL").arg(key).ignore();
            let (value,): (Option<String>,) = self
                .query(
                    &session,
                    pipeline.query_async(&mut session.connection.clone()),
                )
                .await?;
            Ok(value)
        })
        .await
    }

    /// `PING` (timed) and `INFO server`, and whether the node's vote counts now. A connection
    /// found broken (the server restarted since it was last used) is opened again once, so that
    /// a node that is up is not reported down for what its old connection says.
    pub(crate) async fn checkup(&self) -> Result<Checkup, NodeError> {
        match self.checkup_once().await {
            Err(NodeError::Redis(err)) if err.is_connection_dropped() || err.is_io_error() => {
                self.checkup_once().await
            }
            checkup => checkup,
        }
    }

    async fn checkup_once(&self) -> Result<Checkup, NodeError> {
        if self.memory().is_some() {
            return Ok(Checkup {
                ping: Duration::ZERO,
                version: "memory".into(),
                run_id: "memory".into(),
                no_vote: None,
            });
        }
        within(&self.crate_thread, self.timeout, async {
            let session = self.session().await?;
            let sent = Instant::now();
            let () = self
                .query(
                    &session,
                    redis::cmd("PING").query_async(&mut session.connection.clone()),
                )
                .await?;
            let ping = sent.elapsed();
            let info: InfoDict = self
                .query(
                    &session,
                    redis::cmd("INFO")
                        .arg("server")
                        .query_async(&mut session.connection.clone()),
                )
                .await?;
            let field = |name: &str| info.get::<String>(name).unwrap_or_else(|| "?".into());
            Ok(Checkup {
                ping,
                version: field("redis_version"),
                run_id: field("run_id"),
                no_vote: self.voting_session().err(),
            })
        })
        .await
    }
}
