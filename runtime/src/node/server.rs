//! What `INFO server` and the epoch say of the server behind a connection.

use std::time::{Duration, Instant, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::{InfoDict, RedisError};

use crate::clock::ClockReading;

use super::scripts::EPOCH;
#[cfg(doc)]
use super::FleetGrace;

/// How coarse Redis's `uptime_in_seconds` is: whole seconds, from a start time and a clock that
/// are both whole seconds, so it can be ahead of the truth by up to this much.
const UPTIME_RESOLUTION: Duration = Duration::from_secs(1);

/// What `INFO server` said of the server behind a connection, and the node's epoch.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Server {
    pub(super) run_id: String,
    /// The node's epoch as read with `run_id` (see [`FleetGrace`]); `None` when the node was
    /// seen to have lost it, until the next check reads it again.
    pub(super) epoch: Option<String>,
    /// When it started, on our monotonic clock, on the late side (see `Server::read`).
    pub(super) up_since: Instant,
    /// When it started, on our wall clock, on the late side: for comparing with periods.
    pub(super) started_at: SystemTime,
    /// Its clock, as read with the epoch.
    pub(super) clock: ClockReading,
    /// How many nodes the machines using it lock on, as announced there.
    pub(super) node_counts: NodeCounts,
    /// Whether this runtime's own count was announced in the same script that read them: a
    /// machine with another list that announces on the node later finds it.
    pub(super) announced_ours: bool,
}

/// The fewest and the most nodes that the machines using a node lock on, as they announced there
/// (see [`FleetGrace`]); both 0 when none announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeCounts {
    pub(crate) fewest: u64,
    pub(crate) most: u64,
}

impl NodeCounts {
    /// None announced.
    pub(crate) const NONE: NodeCounts = NodeCounts { fewest: 0, most: 0 };

    /// The fewest and the most of both.
    pub(crate) fn with(self, other: NodeCounts) -> NodeCounts {
        match (self.fewest, other.fewest) {
            (0, _) => other,
            (_, 0) => self,
            _ => NodeCounts {
                fewest: self.fewest.min(other.fewest),
                most: self.most.max(other.most),
            },
        }
    }

    /// These with `ours`, the nodes this runtime locks on (`None`: it announces none).
    pub(crate) fn with_ours(self, ours: Option<u64>) -> NodeCounts {
        ours.map_or(self, |ours| {
            self.with(NodeCounts {
                fewest: ours,
                most: ours,
            })
        })
    }

    /// Whether machines lock on different numbers of nodes.
    pub(crate) fn differ(self) -> bool {
        self.fewest != self.most
    }

    /// Both in one word, for an atomic: never 0 when any was announced.
    pub(crate) fn packed(self) -> u64 {
        (self.fewest.min(u64::from(u32::MAX)) << 32) | self.most.min(u64::from(u32::MAX))
    }

    /// What [`NodeCounts::packed`] made; `None` for 0.
    pub(crate) fn unpacked(packed: u64) -> Option<NodeCounts> {
        (packed != 0).then(|| NodeCounts {
            fewest: packed >> 32,
            most: packed & u64::from(u32::MAX),
        })
    }
}

impl Server {
    /// Reads `INFO server` on `connection`, and the node's epoch at `epoch_key`, writing one
    /// first if the node has none (it started since anyone last did); `node_counts` is what the
    /// announcement just before read, `announced_ours` whether it announced our own count.
    pub(super) async fn read(
        connection: &mut MultiplexedConnection,
        epoch_key: &str,
        (node_counts, announced_ours): (NodeCounts, bool),
    ) -> Result<Server, RedisError> {
        let info: InfoDict = redis::cmd("INFO")
            .arg("server")
            .query_async(connection)
            .await?;
        // After the answer, so that the server's clock read the uptime no later than this.
        let (answered_at, answered_wall) = (Instant::now(), SystemTime::now());
        let missing = |field| {
            RedisError::from((
                redis::ErrorKind::Client,
                "`INFO server` lacks a field",
                format!("`{field}` is missing"),
            ))
        };
        // Negative when the node's clock stepped back past its start: counted as zero (and the
        // node keeps the earliest start read, see `Node::witness`).
        let uptime = Duration::from_secs(
            info.get::<i64>("uptime_in_seconds")
                .ok_or_else(|| missing("uptime_in_seconds"))?
                .max(0)
                .unsigned_abs(),
        );
        let run_id = info
            .get::<String>("run_id")
            .ok_or_else(|| missing("run_id"))?;
        // Redis counts its uptime from its start in whole seconds to its clock in whole seconds,
        // so it may say 1 s when 1 ms has passed: taking the start a second later than it says
        // errs on the late side, which only makes the grace longer, and a node's "no marker"
        // count for fewer periods.
        let up_since = (answered_at + UPTIME_RESOLUTION)
            .checked_sub(uptime)
            .unwrap_or(answered_at);
        let started_at = answered_wall
            .checked_sub(uptime)
            .map_or(answered_wall, |started| started + UPTIME_RESOLUTION);
        let mut invocation = EPOCH.key(epoch_key);
        invocation.arg(random_hex()?);
        let sent = Instant::now();
        let (epoch, now): (String, String) = invocation.invoke_async(connection).await?;
        let (answered_at, answered_wall) = (Instant::now(), SystemTime::now());
        let node_micros = now.parse::<u64>().map_err(|_| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the node's time is not a number",
                now.clone(),
            ))
        })?;
        // How long ago the epoch was written, by the node's own clock: the node lost its data no
        // later than that, so it is young until then plus the grace, for every client alike.
        let created = epoch
            .rsplit(':')
            .next()
            .and_then(|micros| micros.parse::<u64>().ok());
        let age = match created {
            Some(created) => Duration::from_micros(node_micros.saturating_sub(created)),
            None => Duration::ZERO, // not ours: a node without a readable epoch is young now
        };
        Ok(Server {
            run_id,
            epoch: Some(epoch),
            up_since: up_since.max(answered_at.checked_sub(age).unwrap_or(answered_at)),
            started_at: started_at.max(answered_wall.checked_sub(age).unwrap_or(answered_wall)),
            clock: ClockReading {
                node_micros,
                sent,
                answered: answered_at,
            },
            node_counts,
            announced_ours,
        })
    }
}

/// 128 random bits from the OS, as hex: a node's epoch.
fn random_hex() -> Result<String, RedisError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| {
        RedisError::from((
            redis::ErrorKind::Client,
            "the OS random source failed",
            err.to_string(),
        ))
    })?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}
