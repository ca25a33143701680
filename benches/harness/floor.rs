//! The floor: Redlock with nothing but redis-rs, as little as a lock can do.
//!
//! `SET key token NX PX ttl` to every node at once, waiting only until a quorum granted (or
//! cannot); then the compare-and-delete script (`EVALSHA`) to every node at once, waiting only
//! for a quorum of answers. One `MultiplexedConnection` per node, driven by the caller's own
//! tokio runtime. No validity check, no renewal, no background task, no tracing: one round trip
//! to take the lock and one to give it back, which is what every other contender is measured
//! against.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, RedisResult, Value};

use super::drive::Attempt;

/// `CLIENT SETNAME` of the floor's connections, so that `CLIENT LIST` tells them from the
/// runtime's, which live in the same process.
pub const CLIENT_NAME: &str = "bench-floor";

/// The usual Redlock release: delete the key only while it holds our token.
const COMPARE_AND_DELETE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0"#;

/// The hold row's floor renews each key with the same work on the node as the runtime's renewal
/// script (without its epoch check): `PEXPIRE` where the key holds our token, one digit per key
/// in one string for the answer.
const EXTEND_EACH: &str = r#"local n = #KEYS
local renewed = {}
for i = 1, n do
    if redis.call("GET", KEYS[i]) == ARGV[i] then
        redis.call("PEXPIRE", KEYS[i], ARGV[n + i])
        renewed[i] = "1"
    else
        renewed[i] = "0"
    end
end
return table.concat(renewed)"#;

/// Keys per renewal call of the hold row's floor: the most the runtime puts in one.
const KEYS_PER_RENEWAL: usize = 1_000;

/// The answers a round waits for, tagged with the round they belong to.
type Answers = FuturesUnordered<BoxFuture<'static, (u64, RedisResult<Value>)>>;

pub struct Floor {
    connections: Vec<MultiplexedConnection>,
    quorum: usize,
    ttl_ms: u64,
    /// The SHA1 of [`COMPARE_AND_DELETE`], loaded on every node when connecting.
    release_sha: String,
    /// The SHA1 of [`EXTEND_EACH`], likewise.
    extend_sha: String,
    /// Per task (by index): its answers still outstanding, see [`Stragglers`].
    stragglers: Mutex<Vec<Stragglers>>,
}

/// A task's commands that were still unanswered when their round was decided: they stay with
/// the task and are polled along with its next rounds. Dropped, redis-rs would not even send
/// those it had not written yet (it skips a request whose caller is gone), so the lock would be
/// taken, or released, on a quorum of the nodes rather than on every one; spawned, each would
/// cost a task of its own.
struct Stragglers {
    answers: Answers,
    round: u64,
}

impl Default for Stragglers {
    fn default() -> Self {
        let answers = Answers::new();
        // A future that never completes, so that the set never polls all of its futures in one
        // go: when it does, `FuturesUnordered` wakes its task and yields "to avoid starving
        // others", which on a multi-threaded tokio runtime sends the task to another worker
        // thread: three more context switches per lock, a third slower than rslock's
        // `join_all` at one node and one task.
        answers.push(boxed(std::future::pending()));
        Stragglers { answers, round: 0 }
    }
}

impl Floor {
    /// Connects to every node; must run on the runtime that will drive the connections.
    pub async fn connect(urls: &[String], ttl: Duration) -> RedisResult<Floor> {
        let mut connections = Vec::with_capacity(urls.len());
        let (mut release_sha, mut extend_sha) = (String::new(), String::new());
        for url in urls {
            let mut connection = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CLIENT_NAME)
                .query_async::<()>(&mut connection)
                .await?;
            // Loaded up front, so that every release is a plain EVALSHA; the nodes never
            // restart during a run, so NOSCRIPT cannot come back.
            release_sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(COMPARE_AND_DELETE)
                .query_async(&mut connection)
                .await?;
            extend_sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(EXTEND_EACH)
                .query_async(&mut connection)
                .await?;
            connections.push(connection);
        }
        Ok(Floor {
            quorum: urls.len() / 2 + 1,
            connections,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            release_sha,
            extend_sha,
            stragglers: Mutex::new(Vec::new()),
        })
    }

    /// One attempt by task `task`: lock, and release at once when that worked. With the key held
    /// by someone else this is the raw `SET NX` loop of the contended row: one round, no release.
    pub async fn attempt(&self, task: usize, key: &str) -> Attempt {
        let mut stragglers = self.take_stragglers(task);
        // Any fresh, unguessable-enough value does for the floor; the OS random source would
        // cost a system call per lock.
        let token = format!("{:032x}", fastrand::u128(..));
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms);
        let (mut granted, mut busy, mut failed) = (0, 0, 0);
        let nodes = self.connections.len();
        self.round(&mut stragglers, &set, |answer| {
            match answer {
                Ok(Value::Nil) => busy += 1,
                Ok(_) => granted += 1,
                Err(_) => failed += 1,
            }
            let pending = nodes - granted - busy - failed;
            granted >= self.quorum || granted + pending < self.quorum
        })
        .await;

        let attempt = if granted >= self.quorum {
            match self.release(&mut stragglers, key, &token).await {
                true => Attempt::Locked,
                false => Attempt::Failed,
            }
        } else {
            if granted > 0 {
                // A split vote: give back what we won, as Redlock says.
                self.release(&mut stragglers, key, &token).await;
            }
            match failed == 0 && busy > 0 {
                true => Attempt::Busy,
                false => Attempt::Failed,
            }
        };
        self.put_back_stragglers(task, stragglers);
        attempt
    }

    /// Sets every one of `leases` (key, token) on every node, with `ttl`: the leases that
    /// [`Floor::renew`] then keeps.
    pub async fn put(&self, leases: &[(String, String)], ttl: Duration) -> RedisResult<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for chunk in leases.chunks(KEYS_PER_RENEWAL) {
            let mut pipeline = redis::pipe();
            for (key, token) in chunk {
                pipeline.set(key, token).arg("PX").arg(ttl_ms).ignore();
            }
            for connection in &self.connections {
                pipeline.query_async::<()>(&mut connection.clone()).await?;
            }
        }
        Ok(())
    }

    /// One renewal of every one of `leases` to `ttl` on every node, all calls at once, each of
    /// at most [`KEYS_PER_RENEWAL`] keys: the least a renewal round can cost the client. How
    /// many of the keys a node did not renew (another token, or gone).
    pub async fn renew(&self, leases: &[(String, String)], ttl: Duration) -> RedisResult<u64> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let calls: FuturesUnordered<_> = leases
            .chunks(KEYS_PER_RENEWAL)
            .flat_map(|chunk| {
                let mut call = redis::cmd("EVALSHA");
                call.arg(&self.extend_sha).arg(chunk.len());
                for (key, _) in chunk {
                    call.arg(key);
                }
                for (_, token) in chunk {
                    call.arg(token);
                }
                for _ in chunk {
                    call.arg(ttl_ms);
                }
                self.connections.iter().map(move |connection| {
                    let (mut connection, call) = (connection.clone(), call.clone());
                    async move { call.query_async::<Vec<u8>>(&mut connection).await }
                })
            })
            .collect();
        let answers: Vec<RedisResult<Vec<u8>>> = calls.collect().await;
        let mut not_renewed = 0;
        for answer in answers {
            not_renewed += answer?.iter().filter(|&&digit| digit != b'1').count() as u64;
        }
        Ok(not_renewed)
    }

    /// Deletes every one of `leases`' keys on every node.
    pub async fn delete(&self, leases: &[(String, String)]) -> RedisResult<()> {
        for chunk in leases.chunks(KEYS_PER_RENEWAL) {
            let keys: Vec<&str> = chunk.iter().map(|(key, _)| key.as_str()).collect();
            for connection in &self.connections {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection.clone())
                    .await?;
            }
        }
        Ok(())
    }

    /// The compare-and-delete script on every node at once, until a quorum answered; whether
    /// one did.
    async fn release(&self, stragglers: &mut Stragglers, key: &str, token: &str) -> bool {
        let mut release = redis::cmd("EVALSHA");
        release.arg(&self.release_sha).arg(1).arg(key).arg(token);
        let (mut answered, mut all) = (0, 0);
        self.round(stragglers, &release, |answer| {
            all += 1;
            if answer.is_ok() {
                answered += 1;
            }
            answered >= self.quorum || all == self.connections.len()
        })
        .await;
        answered >= self.quorum
    }

    /// Sends `command` to every node at once, and feeds this round's answers to `decided` until
    /// it says that the round is decided. Answers to earlier rounds are collected on the way.
    async fn round(
        &self,
        stragglers: &mut Stragglers,
        command: &Cmd,
        mut decided: impl FnMut(&RedisResult<Value>) -> bool,
    ) {
        stragglers.round += 1;
        let round = stragglers.round;
        for connection in &self.connections {
            let (mut connection, command) = (connection.clone(), command.clone());
            stragglers.answers.push(boxed(async move {
                (round, command.query_async(&mut connection).await)
            }));
        }
        while let Some((of, answer)) = stragglers.answers.next().await {
            if of == round && decided(&answer) {
                return;
            }
        }
    }

    fn take_stragglers(&self, task: usize) -> Stragglers {
        let mut all = self.stragglers.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() <= task {
            all.resize_with(task + 1, Stragglers::default);
        }
        std::mem::take(&mut all[task])
    }

    fn put_back_stragglers(&self, task: usize, stragglers: Stragglers) {
        let mut all = self.stragglers.lock().unwrap_or_else(|p| p.into_inner());
        all[task] = stragglers;
    }
}

fn boxed<F>(future: F) -> BoxFuture<'static, F::Output>
where
    F: Future + Send + 'static,
{
    Box::pin(future)
}
