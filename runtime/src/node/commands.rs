//! The commands a lock sends a node: the vote, its renewal and release, the fencing counter
//! and the done markers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::{RedisError, Script};

use crate::clock::ClockReading;

use super::connection::Session;
use super::error::is_no_script;
use super::scripts::{
    EXPIRE_IF_OURS, EXTEND_OR_REPAIR_EACH, MARK_DONE_IF_OURS, RAISE_FENCE, SET_NX_READ_FENCE,
};
use super::{millis, Node, NodeError};

/// A restarted node's "no done marker" counts for a period only if the node started this long
/// before the period began by our clock: room for the clock of the machine that wrote the marker
/// being ahead of ours.
const SLOT_CLOCK_SKEW: Duration = Duration::from_secs(1);

/// The shortest expiry an extension sets: `PEXPIRE key 0` would delete the key.
const MILLISECOND: Duration = Duration::from_millis(1);

/// One lease in a renewal: its key and token, and how long from now its key should live.
pub(crate) struct LeaseToExtend<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) keep: Duration,
}

/// A renewal on one node, ready to send (see [`Node::extension_call`]).
pub(crate) struct ExtensionCall(Prepared);

enum Prepared {
    /// `memory://`: already done, with what it did to each lease.
    Done(Vec<Renewed>),
    /// The script call, built whole, and the session to send it on.
    Script {
        session: Arc<Session>,
        call: redis::Cmd,
        leases: usize,
    },
}

/// What renewing a lease did on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewed {
    /// The key held our token; its expiry is set anew.
    Kept,
    /// The key was absent; our token is back, with the new expiry.
    Repaired,
    /// Another token holds the key.
    NotOurs,
}

impl Node {
    /// `SET key token NX PX ttl`: `Ok(true)` when this node granted the lock, `Ok(false)` when
    /// the key was already set.
    ///
    /// A node that restarted without persistence has forgotten the locks it held, and its fresh
    /// vote could hand a second caller a majority while the first still holds the lock. So a
    /// node that has been up for less than the restart grace (by default `Config::max_ttl`) is
    /// not asked at all: it answers [`NodeError::Restarted`], a missing vote.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.set_nx(key, token, ttl));
        }
        let session = self.voting_session()?;
        let mut cmd = redis::Cmd::with_capacity(6, 48 + key.len() + token.len());
        cmd.arg("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let Some(epoch_key) = self.epoch_key(&session) else {
            // `OK`, or nil when the key is set; `()` reads either without allocating.
            let reply: Option<()> = self
                .query(&session, cmd.query_async(&mut session.connection.clone()))
                .await?;
            return Ok(reply.is_some());
        };
        // The epoch is read after the SET, in the same round trip: if it is still the one read
        // with the server, the SET ran on a node that had not lost its data. So is the node's
        // clock, to tell whether it stepped since the last reading.
        let mut pipeline = redis::Pipeline::with_capacity(3);
        pipeline.add_command(cmd).cmd("GET").arg(epoch_key);
        let sent = Instant::now();
        let (reply, epoch, clock) = if self.detects_clock_jumps() {
            pipeline.cmd("TIME");
            let (reply, epoch, time): (Option<()>, Option<Vec<u8>>, (u64, u64)) = self
                .query(
                    &session,
                    pipeline.query_async(&mut session.connection.clone()),
                )
                .await?;
            (reply, epoch, Some(ClockReading::of_time(time, sent)))
        } else {
            let (reply, epoch): (Option<()>, Option<Vec<u8>>) = self
                .query(
                    &session,
                    pipeline.query_async(&mut session.connection.clone()),
                )
                .await?;
            (reply, epoch, None)
        };
        self.same_epoch(&session, epoch.as_deref())?;
        if let Some(clock) = clock {
            self.vote_clock(&session, clock, ttl)?;
        }
        Ok(reply.is_some())
    }

    /// [`Node::set_nx`] that also reads the fencing counter at `fence_key` when it grants:
    /// `Ok(Some(counter))` when granted, `Ok(None)` when the key was already set.
    pub(crate) async fn set_nx_reading_fence(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.set_nx_reading_fence(key, fence_key, token, ttl));
        }
        let session = self.voting_session()?;
        let keys = [key, fence_key].into_iter();
        let args = (2, token.len() + 20);
        let call = self.script_call(&session, &SET_NX_READ_FENCE, keys, args, |call| {
            call.arg(token).arg(millis(ttl));
        });
        let sent = Instant::now();
        let (epoch_held, counter, seconds, micros): (bool, Option<String>, u64, u64) = self
            .run_script_once(&session, &SET_NX_READ_FENCE, &call)
            .await?;
        if !epoch_held {
            return Err(self.lost_data(&session));
        }
        if self.detects_clock_jumps() && self.epoch_key(&session).is_some() {
            self.vote_clock(
                &session,
                ClockReading::of_time((seconds, micros), sent),
                ttl,
            )?;
        }
        counter
            .map(|counter| {
                counter.parse().map_err(|_| {
                    NodeError::Redis(RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "the fencing counter is not a number",
                        format!("{fence_key} holds {counter:?}"),
                    )))
                })
            })
            .transpose()
    }

    /// Raises the fencing counter at `fence_key` to `fence` while `key` still holds our token:
    /// `Ok(true)` when it did.
    pub(crate) async fn raise_fence(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        fence: u64,
    ) -> Result<bool, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.raise_fence(key, fence_key, token, fence));
        }
        let session = self.voting_session()?;
        let mut invocation = RAISE_FENCE.key(key);
        invocation.key(fence_key).arg(token).arg(fence);
        let ours: i64 = self.run_script(&session, &invocation).await?;
        Ok(ours == 1)
    }

    /// `EVALSHA` of `script` with `keys`, then the arguments `args` adds, and the epoch check
    /// (the epoch key last among the keys, the epoch last among the arguments) when the node has
    /// one: built whole, to be sent once (see [`Node::run_script_once`]), in a command sized for
    /// `args_bytes` of arguments besides the keys.
    fn script_call<'k>(
        &self,
        session: &Session,
        script: &Script,
        keys: impl ExactSizeIterator<Item = &'k str> + Clone,
        (args, args_bytes): (usize, usize),
        add_args: impl FnOnce(&mut redis::Cmd),
    ) -> redis::Cmd {
        let epoch = self.epoch_check(session);
        let keys_bytes: usize = keys.clone().map(str::len).sum();
        let mut call = redis::Cmd::with_capacity(
            5 + keys.len() + args,
            // The command, the script's hash, the number of keys, the epoch key and epoch.
            128 + keys_bytes + args_bytes,
        );
        call.arg("EVALSHA")
            .arg(script.get_hash())
            .arg(keys.len() + usize::from(epoch.is_some()));
        for key in keys {
            call.arg(key);
        }
        if let Some((epoch_key, _)) = &epoch {
            call.arg(*epoch_key);
        }
        add_args(&mut call);
        if let Some((_, epoch)) = epoch {
            call.arg(epoch);
        }
        call
    }

    /// The renewal of `leases` on this node, ready to send with [`Node::extend_each`]: each to
    /// expire its `keep` from now where its key still holds its token, its token put back (with
    /// that expiry) where the key is absent, in one script call ([`EXTEND_OR_REPAIR_EACH`]).
    /// Built now, from borrowed keys and tokens, so that what is sent owns nothing of the leases.
    /// Like a vote, it counts only from a node up for longer than the restart grace, which is not
    /// asked at all: a restarted node has forgotten our tokens, and may have forgotten others',
    /// which a repair would then overwrite in its eyes.
    pub(crate) fn extension_call(
        &self,
        leases: &[LeaseToExtend<'_>],
    ) -> Result<ExtensionCall, NodeError> {
        let keep = |lease: &LeaseToExtend<'_>| lease.keep.max(MILLISECOND);
        if let Some(store) = self.memory() {
            let renew = |lease: &LeaseToExtend<'_>| {
                store.extend_or_repair(lease.key, lease.token, keep(lease))
            };
            return Ok(ExtensionCall(Prepared::Done(
                leases.iter().map(renew).collect(),
            )));
        }
        let session = self.voting_session()?;
        let tokens_bytes: usize = leases.iter().map(|lease| lease.token.len()).sum();
        let keys = leases.iter().map(|lease| lease.key);
        let args = (2 * leases.len(), tokens_bytes + 8 * leases.len());
        let call = self.script_call(&session, &EXTEND_OR_REPAIR_EACH, keys, args, |call| {
            for lease in leases {
                call.arg(lease.token);
            }
            for lease in leases {
                call.arg(millis(keep(lease)));
            }
        });
        Ok(ExtensionCall(Prepared::Script {
            session,
            call,
            leases: leases.len(),
        }))
    }

    /// Sends a renewal built by [`Node::extension_call`]: what it did to each lease, in their order.
    pub(crate) async fn extend_each(&self, call: ExtensionCall) -> Result<Vec<Renewed>, NodeError> {
        let (session, call, leases) = match call.0 {
            Prepared::Done(renewed) => return Ok(renewed),
            Prepared::Script {
                session,
                call,
                leases,
            } => (session, call, leases),
        };
        let reply: redis::Value = self
            .run_script_once(&session, &EXTEND_OR_REPAIR_EACH, &call)
            .await?;
        let renewed = match reply {
            redis::Value::BulkString(each) if each.len() == leases => each,
            redis::Value::Int(-1) => return Err(self.lost_data(&session)),
            other => {
                return Err(NodeError::Redis(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the renewal script answered something else than one digit per lease",
                    format!("{other:?}"),
                ))))
            }
        };
        Ok(renewed
            .into_iter()
            .map(|each| match each {
                b'1' => Renewed::Kept,
                b'2' => Renewed::Repaired,
                _ => Renewed::NotOurs,
            })
            .collect())
    }

    /// Gives back our lock on `key`: deletes it, or with a non-zero `keep` lets it expire that
    /// long from now. `Ok(true)` when the key was ours, `Ok(false)` when it was gone or held
    /// another token.
    pub(crate) async fn release(
        &self,
        key: &str,
        token: &str,
        keep: Duration,
    ) -> Result<bool, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.expire_if_ours(key, token, keep));
        }
        // A release may wait for a connection to open: what it deletes is already there.
        let session = self.session().await?;
        self.expire_if_ours(&session, key, token, keep).await
    }

    /// [`EXPIRE_IF_OURS`] by its SHA1, in a command built at its final size (it runs on every
    /// release and renewal); the script is loaded when the node lacks it (a restart, a
    /// `SCRIPT FLUSH`) and the command sent again.
    async fn expire_if_ours(
        &self,
        session: &Arc<Session>,
        key: &str,
        token: &str,
        keep: Duration,
    ) -> Result<bool, NodeError> {
        let mut eval = redis::Cmd::with_capacity(6, 80 + key.len() + token.len());
        eval.arg("EVALSHA")
            .arg(EXPIRE_IF_OURS.get_hash())
            .arg(1)
            .arg(key)
            .arg(token)
            .arg(millis(keep));
        let sent = self
            .query(session, eval.query_async(&mut session.connection.clone()))
            .await;
        let ours: i64 = match sent {
            Err(NodeError::Redis(err)) if is_no_script(&err) => {
                self.load_script(session, &EXPIRE_IF_OURS).await?;
                self.query(session, eval.query_async(&mut session.connection.clone()))
                    .await?
            }
            sent => sent?,
        };
        Ok(ours == 1)
    }

    /// `GET marker` for a done marker of the period that began at `period_start`: a value is
    /// proof of a run; "none" counts only from a node that cannot have forgotten a marker written
    /// since the period began, that is, one that started before it (by our clock, with room
    /// for the writer's clock being ahead), or whose every write persists (restart grace off).
    pub(crate) async fn get_marker(
        &self,
        marker: &str,
        period_start: SystemTime,
    ) -> Result<Option<String>, NodeError> {
        if let Some(store) = self.memory() {
            return Ok(store.get(marker));
        }
        let session = self.voting_session()?;
        let mut pipeline = redis::Pipeline::with_capacity(2);
        pipeline.cmd("GET").arg(marker);
        let epoch_key = self.epoch_key(&session);
        if let Some(epoch_key) = epoch_key {
            pipeline.cmd("GET").arg(epoch_key);
        }
        let mut replies: Vec<Option<String>> = self
            .query(
                &session,
                pipeline.query_async(&mut session.connection.clone()),
            )
            .await?;
        if epoch_key.is_some() {
            let epoch = replies.pop().flatten();
            self.same_epoch(&session, epoch.as_deref().map(str::as_bytes))?;
        }
        let value = replies.pop().flatten();
        let remembers_the_period = session
            .server()
            .is_none_or(|server| server.started_at + SLOT_CLOCK_SKEW <= period_start);
        match value {
            None if !remembers_the_period => Err(NodeError::StartedInPeriod),
            value => Ok(value),
        }
    }

    /// Writes the done marker `marker`, expiring after `expiry`, while the lock `lock_key` still
    /// holds `token` (see [`MARK_DONE_IF_OURS`]): `Ok(true)` when it did.
    pub(crate) async fn mark_done(
        &self,
        lock_key: &str,
        token: &str,
        marker: &str,
        expiry: Duration,
    ) -> Result<bool, NodeError> {
        let expiry = expiry.max(MILLISECOND);
        if let Some(store) = self.memory() {
            return Ok(store.mark_done_if_ours(lock_key, token, marker, expiry));
        }
        let session = self.connected_session()?;
        let mut invocation = MARK_DONE_IF_OURS.key(lock_key);
        invocation.key(marker).arg(token).arg(millis(expiry));
        let marked: i64 = self.run_script(&session, &invocation).await?;
        Ok(marked == 1)
    }
}
