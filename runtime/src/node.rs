//! One Redis node: its connection and the two commands a lock sends it.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use crate::config::redact;
use crate::{Config, Error};

/// Compare-and-delete: removes the key only while it still holds our token, so a release that
/// comes after our ttl ran out never deletes the lock that someone else took since.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end"#,
    )
});

/// How many times the connection manager retries a failed connect before the command that
/// waited for it fails; later commands start a fresh attempt. Kept low because a Redlock vote
/// that waits for reconnects is a vote that misses its deadline anyway.
const CONNECT_RETRIES: usize = 1;

/// The first back-off between connect retries.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// One Redis node, named by its URL with the password hidden.
pub(crate) struct Node {
    name: String,
    connection: ConnectionManager,
    timeout: Duration,
    connect_timeout: Duration,
}

/// Why one node gave no answer.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// No reply within the per-node timeout; the command may still have been applied.
    Timeout(Duration),
    /// The connection failed or the server answered with an error.
    Redis(RedisError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Timeout(after) => write!(f, "no answer within {after:?}"),
            NodeError::Redis(err) => write!(f, "{err}"),
        }
    }
}

impl Node {
    /// Checks `url` (the `position`-th of the configuration, counted from 1) and prepares its
    /// connection, without connecting. Must run inside the engine's tokio context: the
    /// connection manager spawns its tasks on the runtime it was made in.
    pub(crate) fn new(position: usize, url: &str, config: &Config) -> Result<Node, Error> {
        let name = redact(url);
        let client = redis::Client::open(url).map_err(|err| {
            Error::InvalidConfig(format!(
                "Redis URL #{position} ({name}) is not valid: {err}; \
                 expected `redis://[user:password@]host[:port][/db]`"
            ))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.node_timeout))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(CONNECT_RETRY_DELAY)
            .set_max_delay(config.connect_timeout);
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|err| {
                Error::InvalidConfig(format!("Redis URL #{position} ({name}): {err}"))
            })?;
        Ok(Node {
            name,
            connection,
            timeout: config.node_timeout,
            connect_timeout: config.connect_timeout,
        })
    }

    /// The identity of the server a URL points at, to find the same node listed twice.
    pub(crate) fn identity(url: &str) -> Option<String> {
        let client = redis::Client::open(url).ok()?;
        let info = client.get_connection_info();
        Some(format!("{}/{}", info.addr(), info.redis_settings().db()))
    }

    /// The node's URL with its password hidden.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `SET key token NX PX ttl`: `Ok(true)` when this node granted the lock, `Ok(false)` when
    /// the key was already set.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, NodeError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(token).arg("NX").arg("PX").arg(millis(ttl));
        let reply: Option<String> =
            within(self.timeout, cmd.query_async(&mut self.connection.clone())).await?;
        Ok(reply.is_some())
    }

    /// The compare-and-delete script: `Ok(true)` when our key was deleted, `Ok(false)` when the
    /// key was gone or held another token.
    pub(crate) async fn release(&self, key: &str, token: &str) -> Result<bool, NodeError> {
        let mut invocation = RELEASE.key(key);
        invocation.arg(token);
        let deleted: i64 = within(
            self.timeout,
            invocation.invoke_async(&mut self.connection.clone()),
        )
        .await?;
        Ok(deleted == 1)
    }

    /// Opens the connection now rather than on the first lock, so that the first lock is as fast
    /// as the others; a failure here is retried on the next command.
    pub(crate) async fn connect(&self) -> Result<(), NodeError> {
        let ping = redis::cmd("PING");
        let _pong: String = within(
            self.connect_timeout,
            ping.query_async(&mut self.connection.clone()),
        )
        .await?;
        Ok(())
    }
}

/// Bounds one command by a deadline, whatever the connection is doing (connecting,
/// reconnecting, waiting on a frozen server).
async fn within<T>(
    timeout: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(NodeError::Redis(err)),
        Err(_elapsed) => Err(NodeError::Timeout(timeout)),
    }
}

/// A duration as whole milliseconds for `PX`, saturating far beyond any real ttl.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
