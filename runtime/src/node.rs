//! One Redis node: its connection, what we know of the server behind it, and the two commands a
//! lock sends it.
//!
//! The connection is one multiplexed connection per node, opened on first use and opened again
//! after it breaks (or after the runtime that drove it shut down: see [`crate::driver`]). Each
//! opening reads `INFO server`: its `uptime_in_seconds` tells how long the server has been up
//! (see [`Node::set_nx`] for why that matters). A restart usually breaks the connection, but not
//! behind a proxy that keeps clients connected across it, so [`Node::check`] reads `INFO server`
//! again every second and takes a changed `run_id` for a restart; the same check replaces a
//! connection that stopped answering (a flow black-holed on the way), which TCP alone would keep
//! for a quarter of an hour. Every reading of a node, and every vote, also reads the node's
//! clock, to notice it stepping (see [`crate::clock`]).
//!
//! The commands of a lock ([`Node::set_nx`], [`Node::release`], ...) have no deadline of their
//! own: the round that sends one to every node bounds them all with one (see
//! `redlock::Round`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, InfoDict, RedisError, Script};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::clock::{
    drift_allowance, ClockAgreement, ClockMove, ClockReader, ClockReading, ClockTable, ClockWatch,
};
use crate::config::redact;
use crate::{driver, keys, memory, telemetry};
use crate::{Config, Error, FailureKind, NodeFailure};

mod operator;
pub(crate) use operator::Checkup;

/// Compare-and-expire: only while the key still holds our token, deletes it (`ARGV[2]` is 0) or
/// sets it to expire in `ARGV[2]` milliseconds; returns 1 when the key was ours. Release, renewal
/// and `min_hold` are all this one script, so none of them ever touches a lock that someone else
/// took after ours ran out.
static EXPIRE_IF_OURS: LazyLock<Script> = LazyLock::new(|| Script::new(EXPIRE_IF_OURS_LUA));

/// The text of [`EXPIRE_IF_OURS`], for `SCRIPT LOAD`.
const EXPIRE_IF_OURS_LUA: &str = r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == "0" then
    return redis.call("DEL", KEYS[1])
end
return redis.call("PEXPIRE", KEYS[1], ARGV[2])"#;

/// The done marker of a period (`slot`): only while the lock `KEYS[1]` still holds our token,
/// sets the marker `KEYS[2]` to it, expiring in `ARGV[2]` milliseconds; returns 1 when it did.
static MARK_DONE_IF_OURS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
return 1"#,
    )
});

/// Each node's epoch (see [`FleetGrace`]): written, when the node has none, as `ARGV[1]` (a random
/// value) followed by `:` and the node's own time in microseconds; returns the epoch and the
/// node's time now, so that every client can tell how long ago it was written.
static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local time = redis.call("TIME")
local now = time[1] .. string.format("%06d", tonumber(time[2]))
redis.call("SET", KEYS[1], ARGV[1] .. ":" .. now, "NX")
return {redis.call("GET", KEYS[1]), now}"#,
    )
});

/// A machine's announcement of its `Config::max_ttl` (`ARGV[1]`, milliseconds): kept, with an
/// expiry of `ARGV[2]` milliseconds, when it is at least the largest one there; returns the
/// largest announced. Each announcer renews its own every second, so the largest lasts as long
/// as its machine may hold a lock of that ttl, and a little longer.
static ANNOUNCE_MAX_TTL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local largest = tonumber(redis.call("GET", KEYS[1]) or "0")
local ours = tonumber(ARGV[1])
if ours >= largest then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return ours
end
return largest"#,
    )
});

/// Renewal: while the key holds our token, sets it to expire in `ARGV[2]` milliseconds and
/// returns 1; where the key is absent (a node that missed our SET, or lost it), puts our token
/// back with that expiry and returns 2, so that a lease taken on a bare quorum regains its fault
/// tolerance; where another token holds it, returns 0 and touches nothing. With an epoch key
/// (`KEYS[2]`), returns -1 and touches nothing when the node no longer has the epoch `ARGV[3]`
/// (see [`FleetGrace`]).
static EXTEND_OR_REPAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if KEYS[2] and redis.call("GET", KEYS[2]) ~= ARGV[3] then
    return -1
end
local value = redis.call("GET", KEYS[1])
if value == ARGV[1] then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return 1
end
if not value then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return 2
end
return 0"#,
    )
});

/// `SET key token NX PX ttl` that also reads the key's fencing counter when it grants: the
/// counter read and the grant are one atomic step, which the fencing argument relies on. Returns
/// whether the node still has the epoch `ARGV[3]` at `KEYS[3]` (when given; see [`FleetGrace`]),
/// the counter as a decimal string ("0" when there is none yet) or nil when the key was already
/// set, and the node's `TIME` (seconds, microseconds). Counters stay strings: Lua numbers are
/// doubles, exact only up to 2^53.
static SET_NX_READ_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local time = redis.call("TIME")
if KEYS[3] and redis.call("GET", KEYS[3]) ~= ARGV[3] then
    return {0, false, time[1], time[2]}
end
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return {1, false, time[1], time[2]}
end
return {1, redis.call("GET", KEYS[2]) or "0", time[1], time[2]}"#,
    )
});

/// Raises the key's fencing counter to `ARGV[2]`, only while the lock still holds our token;
/// returns 1 when the lock was ours. Counters are compared as decimal strings without leading
/// zeros (longer is larger, then by characters), so they stay exact over all of `u64`.
static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
local current = redis.call("GET", KEYS[2]) or "0"
local raised = ARGV[2]
if #current < #raised or (#current == #raised and current < raised) then
    redis.call("SET", KEYS[2], raised)
end
return 1"#,
    )
});

/// After a failed attempt to connect, calls fail at once with its cause for this long before the
/// next attempt, so that a dead node costs nothing per call and is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How coarse Redis's `uptime_in_seconds` is: whole seconds, from a start time and a clock that
/// are both whole seconds, so it can be ahead of the truth by up to this much.
const UPTIME_RESOLUTION: Duration = Duration::from_secs(1);

/// Commands a connection queues before a sender must wait (see `open`).
const PIPELINE_QUEUE: usize = 4096;

/// TCP keepalive on every connection: an idle connection whose peer vanished is found within
/// about `KEEPALIVE_IDLE + 3 × KEEPALIVE_INTERVAL`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long sent data may go unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`): a request that left on a black-holed flow arrives within this long, or
/// never.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than its `max_ttl` an announcement lives without being renewed: its machine
/// renews it every second, and any lock of that machine runs out within `max_ttl` of its last
/// renewal.
const ANNOUNCEMENT_OUTLIVES_ITS_LOCKS: Duration = Duration::from_secs(60);

/// The once-a-second check replaces a connection that gives no answer within the node timeout, or
/// this long if that is shorter: a node that is only slow for a moment, on a loaded machine,
/// keeps its connection (and the order of the commands on it).
const CHECK_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// A restarted node's "no done marker" counts for a period only if the node started this long
/// before the period began by our clock: room for the clock of the machine that wrote the marker
/// being ahead of ours.
const SLOT_CLOCK_SKEW: Duration = Duration::from_secs(1);

/// The shortest expiry an extension sets: `PEXPIRE key 0` would delete the key.
const MILLISECOND: Duration = Duration::from_millis(1);

/// The server this process last saw behind a node.
struct Seen {
    /// Its `run_id` and epoch.
    identity: Option<(String, Option<String>)>,
    /// When this process last saw the node restart, lose its data or step its clock forward,
    /// if it did: no reading of the node makes it older than that.
    young_from: Option<(Instant, SystemTime)>,
    /// The earliest start read of the server now behind the node (by its uptime and epoch): a
    /// later reading that makes it younger was read by a clock that stepped back.
    started: Option<(Instant, SystemTime)>,
    /// The node's clock over time.
    clock: ClockWatch,
    /// Whether the node's clock was last seen ahead of the other nodes' clocks.
    ahead: bool,
    /// Whether the node's clock was compared with the other nodes' clocks yet (see
    /// [`Node::take_clock_reading`]).
    compared: bool,
    /// The last forward step of the node's clock this process saw.
    jump: Option<Jump>,
}

impl Seen {
    /// The node may have forgotten locks since now: it is young from now on, as after a
    /// restart, and its clock stepped forward by `by`.
    fn young_from_a_jump(&mut self, by: Duration) -> Jump {
        let now = (Instant::now(), SystemTime::now());
        let jump = Jump { at: now.0, by };
        self.young_from = Some(
            self.young_from
                .map_or(now, |(instant, wall)| (instant.max(now.0), wall.max(now.1))),
        );
        self.jump = Some(jump);
        jump
    }
}

/// What a reading of a node's clock says of its votes.
enum ClockVerdict {
    /// Nothing against them, but a step forward of up to `blind_spot` could have gone unseen.
    Trusted { blind_spot: Duration },
    /// The clock stepped forward, or was newly seen ahead of the other nodes': the node is young
    /// from now.
    Jumped(Jump),
    /// Too few other nodes' clocks read yet to tell whether this one is ahead of them.
    NotCompared,
}

/// A step of a node's clock forward, seen by this process at `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Jump {
    at: Instant,
    by: Duration,
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

/// How a runtime tells that a node may have forgotten locks, and how long it then refuses its
/// votes: the restart grace, the configured one raised to the longest ttl that any machine
/// using the nodes announces, and the node's epoch.
///
/// Every runtime announces its `Config::max_ttl` on every node (at each connect, and with each
/// check, once a second), where a script keeps the largest announced, for as long as its
/// announcer may still hold a lock of that ttl; every runtime reads the largest back and counts
/// votes only after that long. So a machine given a shorter `max_ttl` than another's (a deploy
/// that raised it on some machines first) still waits long enough for the other's locks.
///
/// The epoch is a random value at one key of each node, written by the first client that finds
/// none, and read with the server's `run_id`. Every vote reads it back in the same round trip
/// (a `GET` after the `SET`, or inside the script): a node that no longer has the epoch this
/// client read has lost its data since (a restart behind a proxy that kept the connection open,
/// a `FLUSHALL`), and its vote does not count; the node is young again from that moment.
pub(crate) struct FleetGrace {
    configured: Duration,
    /// The key the announcements go to.
    key: String,
    /// The key of each node's epoch.
    epoch_key: String,
    /// Our own `Config::max_ttl`, in milliseconds.
    max_ttl_ms: u64,
    /// The longest `max_ttl` seen announced by any machine, in milliseconds. It only grows for
    /// the life of the process: lowering `max_ttl` fleet-wide takes effect on restart.
    announced_ms: AtomicU64,
    /// Whether a node's clock stepping forward makes it young (`Config::detect_clock_jumps`).
    detect_clock_jumps: bool,
    /// `Config::drift_factor`: a vote must rule out a step larger than a lock's allowance.
    drift_factor: f64,
    /// How many forward steps of a node's clock this process has seen, so that leases being
    /// renewed are checked at once.
    clock_jumps: watch::Sender<u64>,
    /// Every node's clock against ours, to tell one that is ahead of the others'.
    clocks: ClockTable,
}

impl FleetGrace {
    /// The grace `configured` (at least `config.max_ttl`) for `config`'s nodes.
    pub(crate) fn new(configured: Duration, config: &Config) -> Arc<FleetGrace> {
        let max_ttl_ms = millis(config.max_ttl);
        Arc::new(FleetGrace {
            configured,
            key: keys::max_ttl(&config.key_prefix),
            epoch_key: keys::epoch(&config.key_prefix),
            max_ttl_ms,
            announced_ms: AtomicU64::new(max_ttl_ms),
            detect_clock_jumps: config.detect_clock_jumps,
            drift_factor: config.drift_factor,
            clock_jumps: watch::Sender::new(0),
            clocks: ClockTable::new(config.urls.len()),
        })
    }

    /// Changes each time a node's clock is seen to step forward.
    pub(crate) fn clock_jumps(&self) -> watch::Receiver<u64> {
        self.clock_jumps.subscribe()
    }

    /// The grace in force now.
    fn current(&self) -> Duration {
        self.configured.max(Duration::from_millis(
            self.announced_ms.load(Ordering::Relaxed),
        ))
    }

    /// Announces our `max_ttl` on `connection`'s node and takes in the largest announced there.
    async fn announce(&self, connection: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let mut invocation = ANNOUNCE_MAX_TTL.key(&self.key);
        invocation.arg(self.max_ttl_ms).arg(
            self.max_ttl_ms
                .saturating_add(millis(ANNOUNCEMENT_OUTLIVES_ITS_LOCKS)),
        );
        let largest: u64 = invocation.invoke_async(connection).await?;
        self.announced_ms.fetch_max(largest, Ordering::Relaxed);
        Ok(())
    }
}

/// One Redis node, named by its URL with the password hidden.
pub(crate) struct Node {
    /// Its place among the nodes, from 0.
    index: usize,
    name: String,
    backend: Backend,
    timeout: Duration,
    connect_timeout: Duration,
    /// `None` skips reading the server's uptime: every vote counts at once.
    grace: Option<Arc<FleetGrace>>,
    /// Read on every command, written only when the connection opens or breaks: a read lock
    /// costs no wait while other threads send on the same connection.
    link: RwLock<Link>,
    /// The server last seen behind this node, to tell a restart from a reconnect.
    seen: Mutex<Seen>,
    /// The crate's own runtime, which drives connections opened outside a multi-threaded one.
    engine: Handle,
}

/// Where a node's commands go.
enum Backend {
    /// Boxed: with TLS set up, a client is larger than the rest of the node.
    Redis(Box<redis::Client>),
    /// In process, for tests (`memory://`): the same commands, answered by [`memory::Store`].
    Memory(Arc<memory::Store>),
}

/// The state of the connection to a node.
enum Link {
    Up(Arc<Session>),
    /// An attempt to connect, running as a task of its own so that it goes on (up to the connect
    /// timeout) when the calls waiting for it give up at their shorter per-node deadline.
    Connecting(Shared<BoxFuture<'static, Opened>>),
    Down {
        cause: ConnectFailure,
        retry_after: Instant,
    },
}

/// A connection attempt's result: the session, or why it failed.
type Opened = Result<Arc<Session>, ConnectFailure>;

/// Why a connection could not be opened, and whether the server refused it (a wrong password,
/// a missing permission) rather than being out of reach.
#[derive(Clone, Debug)]
pub(crate) struct ConnectFailure {
    cause: String,
    refused: bool,
}

/// One open connection and the server behind it.
struct Session {
    connection: MultiplexedConnection,
    /// The server behind the connection; `None` when not read (restart grace off).
    server: Mutex<Option<Server>>,
    /// Cleared when the runtime that drives the connection shuts down (see [`crate::driver`]).
    driver_alive: Option<Arc<AtomicBool>>,
}

/// What `INFO server` said of the server behind a connection, and the node's epoch.
#[derive(Clone, Debug, PartialEq)]
struct Server {
    run_id: String,
    /// The node's epoch as read with `run_id` (see [`FleetGrace`]); `None` when the node was
    /// seen to have lost it, until the next check reads it again.
    epoch: Option<String>,
    /// When it started, on our monotonic clock, on the late side (see `Server::read`).
    up_since: Instant,
    /// When it started, on our wall clock, on the late side: for comparing with periods.
    started_at: SystemTime,
    /// Its clock, as read with the epoch.
    clock: ClockReading,
}

impl Session {
    /// Whether the runtime that drives the connection still runs.
    fn is_usable(&self) -> bool {
        driver::is_alive(self.driver_alive.as_ref())
    }

    fn server(&self) -> Option<Server> {
        self.with_server(Option::clone)
    }

    /// Looks at the server without copying it: every vote does.
    fn with_server<R>(&self, look: impl FnOnce(&Option<Server>) -> R) -> R {
        look(
            &self
                .server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn set_server(&self, server: Server) {
        *self
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(server);
    }
}

impl Server {
    /// Reads `INFO server` on `connection`, and the node's epoch at `epoch_key`, writing one
    /// first if the node has none (it started since anyone last did).
    async fn read(
        connection: &mut MultiplexedConnection,
        epoch_key: &str,
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

/// Why one node gave no vote.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// No reply within the per-node timeout; the command may still have been applied.
    Timeout(Duration),
    /// Not connected: the last attempt failed for this reason.
    Down(ConnectFailure),
    /// The connection failed or the server answered with an error.
    Redis(RedisError),
    /// The server restarted too recently for its vote to count.
    Restarted { up: Duration, grace: Duration },
    /// The server started after the period began (`slot`), so its "no marker" may be a marker
    /// it forgot.
    StartedInPeriod,
    /// No answer yet when the round's outcome was decided without it.
    Unanswered,
    /// The node no longer has the epoch read when it was last checked: it lost its data.
    LostData,
    /// Too few other nodes' clocks were read yet to compare the node's clock with.
    ClockNotCompared,
    /// The readings of the node's clock were too slow to rule out a step of more than
    /// `allowance`, the lock's allowance for clocks: one of up to `blind_spot` (and the
    /// tolerances) could be unseen.
    ClockUncertain {
        blind_spot: Duration,
        allowance: Duration,
    },
    /// The node's clock stepped forward `ago`, by `by`: keys on it may have expired early.
    ClockJumped {
        by: Duration,
        ago: Duration,
        grace: Duration,
    },
}

impl NodeError {
    /// The kind of failure, as [`NodeFailure`] reports it.
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            NodeError::Timeout(_) => FailureKind::Timeout,
            NodeError::Down(failure) if failure.refused => FailureKind::Refused,
            NodeError::Down(_) => FailureKind::Unreachable,
            NodeError::Redis(err) if is_refusal(err) => FailureKind::Refused,
            NodeError::Redis(_) => FailureKind::Unreachable,
            NodeError::Restarted { .. }
            | NodeError::StartedInPeriod
            | NodeError::LostData
            | NodeError::ClockJumped { .. } => FailureKind::Restarted,
            NodeError::ClockNotCompared | NodeError::ClockUncertain { .. } => {
                FailureKind::Unverified
            }
            NodeError::Unanswered => FailureKind::Unanswered,
        }
    }
}

/// Whether the server answered `err` (it is up, and refused the command), rather than the
/// connection failing or the server being busy loading its data or failing over.
fn is_refusal(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown,
        ) => false,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::AuthenticationFailed
        | ErrorKind::UnexpectedReturnType => true,
        _ => false,
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Timeout(after) => write!(f, "no answer within {after:?}"),
            NodeError::Down(failure) => write!(f, "cannot connect: {}", failure.cause),
            NodeError::Redis(err) => write!(f, "{err}"),
            NodeError::Restarted { up, grace } => write!(
                f,
                "the server has been up (and held its data) for {}s only; its vote counts once it \
                 has been up for {grace:?}, so that it cannot grant a lock it forgot when it \
                 restarted (see `Config::restart_grace`)",
                up.as_secs()
            ),
            NodeError::StartedInPeriod => f.write_str(
                "the server started after the period began, so it may have forgotten the period's \
                 done marker; its \"not done\" counts from the next period on",
            ),
            NodeError::Unanswered => {
                f.write_str("no answer yet when the call's outcome was decided without it")
            }
            NodeError::LostData => f.write_str(
                "the node has lost its data since it was last checked (a restart, or a flush): it \
                 may have forgotten a lock, so its vote counts again once the restart grace has \
                 passed from now (see `Config::restart_grace`)",
            ),
            NodeError::ClockNotCompared => f.write_str(
                "the node's clock could not be compared with the other nodes' clocks yet (their \
                 connections are still opening), so its vote cannot be trusted yet: a clock \
                 stepped forward would have let a lock expire early; it counts once they answer \
                 (see `Config::detect_clock_jumps`)",
            ),
            NodeError::ClockUncertain {
                blind_spot,
                allowance,
            } => write!(
                f,
                "the node answered too slowly to tell whether its clock stepped: a step of up to \
                 {blind_spot:?} could have gone unseen, more than the lock's allowance for clocks \
                 ({allowance:?}, `ttl × drift_factor + 2 ms`); a lock with a longer ttl allows \
                 more (see `Config::detect_clock_jumps`)"
            ),
            NodeError::ClockJumped { by, ago, grace } => write!(
                f,
                "the node's clock stepped forward (or was seen ahead of the other nodes') by \
                 {by:?} {}s ago, so keys on it may have expired early; its vote counts once the \
                 restart grace ({grace:?}) has passed since (see `Config::detect_clock_jumps`)",
                ago.as_secs()
            ),
        }
    }
}

impl Node {
    /// Checks `url` (the `position`-th of the configuration, counted from 1), without
    /// connecting.
    pub(crate) fn new(
        position: usize,
        url: &str,
        config: &Config,
        grace: Option<Arc<FleetGrace>>,
        engine: &Handle,
    ) -> Result<Node, Error> {
        let name = redact(url);
        let backend = if url.starts_with(memory::SCHEME) {
            Backend::Memory(memory::store(url))
        } else {
            Backend::Redis(Box::new(client(position, &name, url, config)?))
        };
        Ok(Node {
            index: position - 1,
            name,
            backend,
            timeout: config.node_timeout,
            connect_timeout: config.connect_timeout,
            grace,
            link: RwLock::new(Link::Down {
                cause: ConnectFailure {
                    cause: "not connected yet".into(),
                    refused: false,
                },
                retry_after: Instant::now(),
            }),
            seen: Mutex::new(Seen {
                identity: None,
                young_from: None,
                started: None,
                clock: ClockWatch::default(),
                ahead: false,
                compared: false,
                jump: None,
            }),
            engine: engine.clone(),
        })
    }

    /// The identity of the server a URL points at, to find the same node listed twice.
    pub(crate) fn identity(url: &str) -> Option<String> {
        if url.starts_with(memory::SCHEME) {
            return Some(url.to_owned());
        }
        let client = redis::Client::open(url).ok()?;
        let info = client.get_connection_info();
        Some(format!("{}/{}", info.addr(), info.redis_settings().db()))
    }

    /// The node's URL with its password hidden.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What a caller is told of this node's `err`; each call counts it in the node's metrics, so
    /// call it once per failure.
    pub(crate) fn failure(&self, err: &NodeError) -> NodeFailure {
        telemetry::node_failed(&self.name, err);
        NodeFailure {
            node: self.name.clone(),
            cause: err.to_string(),
            kind: err.kind(),
        }
    }

    /// Whether the connection to this node is open, and the runtime that drives it runs: a
    /// command started on it now is queued there at its first poll, ahead of any started later.
    pub(crate) fn is_connected(&self) -> bool {
        self.open_session().is_some()
    }

    /// The open connection, if there is one and the runtime that drives it runs: a read lock,
    /// the path of every command once connected.
    fn open_session(&self) -> Option<Arc<Session>> {
        match &*self
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            Link::Up(session) if session.is_usable() => Some(session.clone()),
            _ => None,
        }
    }

    /// Whether this node is an in-process `memory://` store.
    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// The in-process store, when this node is one: it answers at once, with no connection,
    /// timeout or restart to think of.
    fn memory(&self) -> Option<&memory::Store> {
        match &self.backend {
            Backend::Memory(store) => Some(store),
            Backend::Redis(_) => None,
        }
    }

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
        let session = self.voting_session().await?;
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
        let session = self.voting_session().await?;
        let mut invocation = SET_NX_READ_FENCE.key(key);
        invocation.key(fence_key).arg(token).arg(millis(ttl));
        self.check_epoch_in(&session, &mut invocation);
        let sent = Instant::now();
        let (epoch_held, counter, seconds, micros): (bool, Option<String>, u64, u64) =
            self.run_script(&session, &invocation).await?;
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
        let session = self.voting_session().await?;
        let mut invocation = RAISE_FENCE.key(key);
        invocation.key(fence_key).arg(token).arg(fence);
        let ours: i64 = self.run_script(&session, &invocation).await?;
        Ok(ours == 1)
    }

    /// Extends our lock on `key` to expire `keep` from now where the key still holds our token,
    /// and puts our token back (with that expiry) where the key is absent: see
    /// [`EXTEND_OR_REPAIR`]. Like a vote, it counts only from a node up for longer than the
    /// restart grace, which is not asked at all: a restarted node has forgotten our token, and
    /// may have forgotten another's, which a repair would then overwrite in its eyes.
    pub(crate) async fn extend(
        &self,
        key: &str,
        token: &str,
        keep: Duration,
    ) -> Result<Renewed, NodeError> {
        let keep = keep.max(MILLISECOND);
        if let Some(store) = self.memory() {
            return Ok(store.extend_or_repair(key, token, keep));
        }
        let session = self.voting_session().await?;
        let mut invocation = EXTEND_OR_REPAIR.key(key);
        invocation.arg(token).arg(millis(keep));
        self.check_epoch_in(&session, &mut invocation);
        let renewed: i64 = self.run_script(&session, &invocation).await?;
        Ok(match renewed {
            1 => Renewed::Kept,
            2 => Renewed::Repaired,
            -1 => return Err(self.lost_data(&session)),
            _ => Renewed::NotOurs,
        })
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
            Err(NodeError::Redis(err))
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let load = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(EXPIRE_IF_OURS_LUA)
                    .to_owned();
                self.query::<String>(session, load.query_async(&mut session.connection.clone()))
                    .await?;
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
        within(&self.engine, self.timeout, async {
            let session = self.voting_session().await?;
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
        })
        .await
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
        within(&self.engine, self.timeout, async {
            let session = self.session().await?;
            let mut invocation = MARK_DONE_IF_OURS.key(lock_key);
            invocation.key(marker).arg(token).arg(millis(expiry));
            let marked: i64 = self.run_script(&session, &invocation).await?;
            Ok(marked == 1)
        })
        .await
    }

    /// The session, if the server behind it has been up for the restart grace, so that its vote
    /// counts.
    async fn voting_session(&self) -> Result<Arc<Session>, NodeError> {
        let session = self.session().await?;
        let Some(grace) = &self.grace else {
            return Ok(session);
        };
        let up_since = session.with_server(|server| match server {
            Some(Server {
                epoch: Some(_),
                up_since,
                ..
            }) => Ok(Some(*up_since)),
            Some(_) => Err(NodeError::LostData),
            None => Ok(None),
        })?;
        // What this process saw of the node since, on any connection: a step seen by a vote on
        // another connection counts here at once.
        let (seen_young, jump) = {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (seen.young_from.map(|(instant, _)| instant), seen.jump)
        };
        let young = up_since
            .map(|up_since| up_since.max(seen_young.unwrap_or(up_since)))
            .and_then(|up_since| young_error(up_since, jump, grace.current()));
        match young {
            Some(err) => Err(err),
            None => Ok(session),
        }
    }

    /// When the restart grace of the server behind the open connection ends, if it has not yet:
    /// for telling, at start-up, when locking can begin.
    pub(crate) fn grace_ends(&self) -> Option<Instant> {
        let grace = self.grace.as_ref()?.current();
        let server = self.open_session()?.server()?;
        Some(server.up_since + grace).filter(|ends| *ends > Instant::now())
    }

    /// The check [`crate::Runtime`] runs on every node once a second: announces our longest ttl,
    /// reads `INFO server` and the epoch on the open connection, and takes a changed `run_id` or
    /// epoch for a restart (the node is young again from now), as a reconnect would; a connection
    /// that gives no answer within the node timeout (at least [`CHECK_ANSWER_WITHIN`]) is
    /// replaced by a new one, so that a silently dead flow costs a second or two of votes, not
    /// the quarter of an hour TCP would take to give it up. A link that is down is opened again.
    pub(crate) async fn check(&self) {
        if self.memory().is_some() {
            return;
        }
        let Some(session) = self.open_session() else {
            // Opened again here rather than at the next call, which may be a renewal a third of
            // a ttl away: connecting reads the node's age and announces our longest ttl, which
            // a restarted node has lost.
            let _ = self.session().await;
            return;
        };
        let mut connection = session.connection.clone();
        let within = self.timeout.max(CHECK_ANSWER_WITHIN);
        let read = driver::timeout(&self.engine, within, async {
            match &self.grace {
                Some(grace) => {
                    grace.announce(&mut connection).await?;
                    Server::read(&mut connection, &grace.epoch_key)
                        .await
                        .map(Some)
                }
                None => redis::cmd("PING")
                    .query_async::<()>(&mut connection)
                    .await
                    .map(|()| None),
            }
        })
        .await;
        match read {
            Ok(Ok(Some(server))) => session.set_server(self.witness(server)),
            // The restart grace is off: nothing to compare.
            Ok(Ok(None)) => {}
            Ok(Err(err)) if is_refusal(&err) => {} // `INFO` refused: the calls say so
            Ok(Err(_)) | Err(_) => self.replace_if_a_new_connection_answers(&session).await,
        }
    }

    /// After `session` gave no answer: opens a new connection, and uses it instead if it
    /// answers. A node that answers nothing on a new connection either (frozen, overloaded) keeps
    /// the old one, so that the commands already sent on it, and those sent after them (a
    /// release after its `SET`), stay in order; a flow that a NAT or a firewall dropped is
    /// replaced.
    async fn replace_if_a_new_connection_answers(&self, session: &Arc<Session>) {
        let Backend::Redis(client) = &self.backend else {
            return;
        };
        let opened = connect_on_a_driver(
            redis::Client::clone(client),
            self.connect_timeout,
            self.grace.clone(),
            self.engine.clone(),
        )
        .await;
        let Ok(fresh) = opened else {
            return;
        };
        if let Some(server) = fresh.server() {
            fresh.set_server(self.witness(server));
        }
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(&*link, Link::Up(current) if Arc::ptr_eq(current, session)) {
            telemetry::node_reconnecting(&self.name);
            tracing::warn!(
                node = self.name,
                "Redis node gave no answer on its open connection, and does on a new one: the \
                 new one replaces it"
            );
            *link = Link::Up(fresh);
        }
    }

    /// Drops `session` (if it is still the open one), so that the next call opens a new
    /// connection and reads the server again.
    fn forget(&self, session: &Arc<Session>, cause: &str) {
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(&*link, Link::Up(current) if Arc::ptr_eq(current, session)) {
            telemetry::node_reconnecting(&self.name);
            *link = Link::Down {
                cause: ConnectFailure {
                    cause: cause.to_owned(),
                    refused: false,
                },
                retry_after: Instant::now(),
            };
        }
    }

    /// Opens the connection now rather than on the first lock, so that the first lock is as fast
    /// as the others; a failure here is retried by later calls.
    pub(crate) async fn connect(&self) -> Result<(), NodeError> {
        if self.memory().is_some() {
            return Ok(());
        }
        within(&self.engine, self.connect_timeout, self.session())
            .await
            .map(drop)
    }

    /// The open connection, or the one being opened, or a fresh attempt to open one.
    async fn session(&self) -> Result<Arc<Session>, NodeError> {
        let Backend::Redis(client) = &self.backend else {
            unreachable!("memory nodes answer before asking for a session");
        };
        if let Some(session) = self.open_session() {
            return Ok(session);
        }
        let attempt = {
            let mut link = self
                .link
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*link {
                Link::Up(session) if session.is_usable() => return Ok(session.clone()),
                Link::Connecting(attempt) => attempt.clone(),
                Link::Down { cause, retry_after } if Instant::now() < *retry_after => {
                    return Err(NodeError::Down(cause.clone()));
                }
                // Never opened, broken, or its runtime shut down: open one (again).
                Link::Up(_) | Link::Down { .. } => {
                    let attempt = connect_on_a_driver(
                        redis::Client::clone(client),
                        self.connect_timeout,
                        self.grace.clone(),
                        self.engine.clone(),
                    )
                    .boxed()
                    .shared();
                    *link = Link::Connecting(attempt.clone());
                    attempt
                }
            }
        };
        let opened = attempt.clone().await;
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Whoever sees the attempt end first records its result; later waiters find it there.
        if matches!(&*link, Link::Connecting(current) if current.ptr_eq(&attempt)) {
            *link = match &opened {
                Ok(session) => {
                    if let Some(server) = session.server() {
                        session.set_server(self.witness(server));
                    }
                    Link::Up(session.clone())
                }
                Err(cause) => Link::Down {
                    cause: cause.clone(),
                    retry_after: Instant::now() + RECONNECT_PAUSE,
                },
            };
        }
        opened.map_err(NodeError::Down)
    }

    /// Runs a script on `session` (by its SHA1, loading it when the node lacks it).
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        session: &Arc<Session>,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, NodeError> {
        self.query(
            session,
            invocation.invoke_async(&mut session.connection.clone()),
        )
        .await
    }

    /// Awaits a command on `session`; a broken connection is dropped, so that the next call
    /// opens a fresh one (and reads the server's uptime again: it may have restarted).
    async fn query<T>(
        &self,
        session: &Arc<Session>,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, NodeError> {
        let result = command.await;
        if let Err(err) = &result {
            if err.is_unrecoverable_error() || err.is_connection_dropped() || err.is_io_error() {
                self.forget(session, &err.to_string());
            }
        }
        result.map_err(NodeError::Redis)
    }

    /// `server` as a vote counts it: when it is not the server last seen behind this node (a new
    /// `run_id`, or a new epoch: the node lost its data), this process has witnessed a restart,
    /// and the node is young from now on, whatever uptime the new server reports (a replica
    /// promoted in its place reports its own). Every later reading of the same server keeps
    /// that start: it is a floor of the node, not of one reading.
    fn witness(&self, mut server: Server) -> Server {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let identity = (server.run_id.clone(), server.epoch.clone());
        if seen.identity.as_ref().is_some_and(|last| *last != identity) {
            tracing::warn!(
                node = self.name,
                grace = ?self.grace.as_ref().map(|grace| grace.current()),
                "Redis node restarted or lost its data (new run_id or epoch); its votes count \
                 again once the restart grace has passed from now"
            );
            seen.young_from = Some((Instant::now(), SystemTime::now()));
        }
        if seen.identity.as_ref() == Some(&identity) {
            // The same server, so the same start; a reading that puts it later was taken by a
            // clock that stepped back, which shortens the uptime Redis reports.
            if let Some((up_since, started_at)) = seen.started {
                server.up_since = server.up_since.min(up_since);
                server.started_at = server.started_at.min(started_at);
            }
        } else {
            // Another server, perhaps with another clock: its readings start afresh.
            seen.clock.restart();
            seen.compared = false;
        }
        seen.started = Some((server.up_since, server.started_at));
        seen.identity = Some(identity);
        if let ClockVerdict::Jumped(_) =
            self.take_clock_reading(&mut seen, server.clock, ClockReader::Check)
        {
            self.announce_clock_jump();
        }
        if let Some((up_since, started_at)) = seen.young_from {
            server.up_since = server.up_since.max(up_since);
            server.started_at = server.started_at.max(started_at);
        }
        server
    }

    /// Whether votes read the node's clock (see `Config::detect_clock_jumps`).
    fn detects_clock_jumps(&self) -> bool {
        self.grace
            .as_ref()
            .is_some_and(|grace| grace.detect_clock_jumps)
    }

    /// Takes in a reading of the node's clock (see [`crate::clock`]): compared with the check's
    /// last reading, and with the other nodes' clocks. A step forward, or a clock newly seen
    /// ahead of the others', makes the node young from now.
    ///
    /// Votes compare with the other nodes' clocks only until that was done once: from then on,
    /// a step of this node's clock is seen by the comparison over time, and the check compares
    /// across the nodes every second anyway. (Another node's clock stepping back can make this
    /// one look ahead, which endangers no lock.) So a vote takes no lock shared by the nodes.
    fn take_clock_reading(
        &self,
        seen: &mut Seen,
        reading: ClockReading,
        reader: ClockReader,
    ) -> ClockVerdict {
        let Some(grace) = self.grace.as_ref().filter(|grace| grace.detect_clock_jumps) else {
            return ClockVerdict::Trusted {
                blind_spot: Duration::ZERO,
            };
        };
        let mut jump = None;
        let comparison = seen.clock.read(reading, reader);
        match comparison.moved {
            ClockMove::Steady => {}
            ClockMove::SteppedForward(by) => {
                tracing::warn!(
                    node = self.name,
                    jumped_by = ?by,
                    "Redis node's clock stepped forward: keys on it may have expired early, so \
                     its votes count again once the restart grace has passed from now"
                );
                telemetry::clock_jumped(&self.name, "forward");
                jump = Some(seen.young_from_a_jump(by));
            }
            ClockMove::SteppedBack(by) => {
                tracing::warn!(
                    node = self.name,
                    jumped_by = ?by,
                    "Redis node's clock stepped back: keys on it live longer than asked, until \
                     a release deletes them"
                );
                telemetry::clock_jumped(&self.name, "back");
            }
        }
        let agreement = if reader == ClockReader::Check || !seen.compared {
            grace.clocks.compare(self.index, reading)
        } else {
            ClockAgreement::Agrees
        };
        seen.compared |= agreement != ClockAgreement::Unknown;
        match agreement {
            ClockAgreement::Agrees if reader == ClockReader::Vote => {}
            ClockAgreement::Agrees => seen.ahead = false,
            ClockAgreement::Unknown => {}
            ClockAgreement::Ahead(by) => {
                if !std::mem::replace(&mut seen.ahead, true) && jump.is_none() {
                    tracing::warn!(
                        node = self.name,
                        ahead_by = ?by,
                        "Redis node's clock is ahead of the other nodes' clocks: it may have \
                         stepped forward, and keys on it expired early, so its votes count again \
                         once the restart grace has passed from now; sync the node's clock"
                    );
                    telemetry::clock_jumped(&self.name, "ahead");
                    jump = Some(seen.young_from_a_jump(by));
                }
            }
        }
        match (jump, agreement) {
            (Some(jump), _) => ClockVerdict::Jumped(jump),
            (None, ClockAgreement::Unknown) => ClockVerdict::NotCompared,
            (None, _) => ClockVerdict::Trusted {
                blind_spot: comparison.blind_spot,
            },
        }
    }

    /// Tells the leases being renewed that a node's clock stepped, so that they are checked now.
    fn announce_clock_jump(&self) {
        if let Some(grace) = &self.grace {
            grace.clock_jumps.send_modify(|jumps| *jumps += 1);
        }
    }

    /// Takes in the node's clock as a vote on `session` read it: a step forward since the last
    /// reading makes the node young from now, and the vote does not count.
    ///
    /// Nor does a vote count from a node whose clock could not be compared with the other
    /// nodes' yet (their connections are still opening, in a process that just started): a
    /// clock stepped before this process started is told only by that comparison.
    ///
    /// Nor does a vote from a node seen to restart, lose its data or step its clock (by another
    /// vote, or by the check) since the vote passed [`Node::voting_session`]: it may have been
    /// granted by a node that had forgotten the lock. Nor one whose readings were too slow to rule out a step larger than what a lock
    /// of `ttl` sets aside for clocks.
    fn vote_clock(
        &self,
        session: &Session,
        reading: ClockReading,
        ttl: Duration,
    ) -> Result<(), NodeError> {
        let Some(grace) = &self.grace else {
            return Ok(());
        };
        let (verdict, young) = {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let verdict = self.take_clock_reading(&mut seen, reading, ClockReader::Vote);
            (
                verdict,
                seen.young_from.map(|(instant, _)| (instant, seen.jump)),
            )
        };
        let jump = match verdict {
            ClockVerdict::Trusted { blind_spot } => {
                let grace_now = grace.current();
                if let Some(err) =
                    young.and_then(|(since, jump)| young_error(since, jump, grace_now))
                {
                    return Err(err);
                }
                let allowance = drift_allowance(ttl, grace.drift_factor);
                if blind_spot > allowance {
                    return Err(NodeError::ClockUncertain {
                        blind_spot,
                        allowance,
                    });
                }
                return Ok(());
            }
            ClockVerdict::NotCompared => return Err(NodeError::ClockNotCompared),
            ClockVerdict::Jumped(jump) => jump,
        };
        if let Some(server) = session
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            server.up_since = server.up_since.max(jump.at);
            server.started_at = server.started_at.max(SystemTime::now());
        }
        self.announce_clock_jump();
        Err(NodeError::ClockJumped {
            by: jump.by,
            ago: Duration::ZERO,
            grace: grace.current(),
        })
    }

    /// The key of the node's epoch, when votes check it (the restart grace is on).
    fn epoch_key(&self, session: &Session) -> Option<&str> {
        let grace = self.grace.as_ref()?;
        session
            .with_server(Option::is_some)
            .then_some(grace.epoch_key.as_str())
    }

    /// Adds the epoch check to a script that takes it as its last key and argument.
    fn check_epoch_in(&self, session: &Session, invocation: &mut redis::ScriptInvocation<'_>) {
        let Some(epoch_key) = self.epoch_key(session) else {
            return;
        };
        let epoch = session.with_server(|server| {
            server
                .as_ref()
                .and_then(|server| server.epoch.clone())
                .unwrap_or_default()
        });
        invocation.key(epoch_key).arg(epoch);
    }

    /// The node lost its data: see [`Node::same_epoch`].
    fn lost_data(&self, session: &Session) -> NodeError {
        match self.same_epoch(session, None) {
            Err(err) => err,
            Ok(()) => NodeError::LostData,
        }
    }

    /// Checks that the node still has the epoch read with `session`'s server (`observed` is what
    /// the vote read back): otherwise the node lost its data since, and is young again from now.
    fn same_epoch(&self, session: &Session, observed: Option<&[u8]>) -> Result<(), NodeError> {
        let mut server = session
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(server) = server.as_mut() else {
            return Ok(());
        };
        let known = server.epoch.as_deref().map(str::as_bytes);
        if known.is_some() && known == observed {
            return Ok(());
        }
        if server.epoch.take().is_some() {
            tracing::warn!(
                node = self.name,
                "Redis node lost its data (its epoch is gone or new): a restart or a flush; its \
                 votes count again once the restart grace has passed from now"
            );
        }
        let now = (Instant::now(), SystemTime::now());
        server.up_since = server.up_since.max(now.0);
        server.started_at = server.started_at.max(now.1);
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .young_from = Some(now);
        Err(NodeError::LostData)
    }
}

/// Why a node that is young since `young_since` (it restarted, lost its data or its clock stepped
/// forward then) gives no vote, or `None` once the restart grace `grace` has passed since.
fn young_error(young_since: Instant, jump: Option<Jump>, grace: Duration) -> Option<NodeError> {
    let up = young_since.elapsed();
    if up >= grace {
        return None;
    }
    Some(match jump {
        // The step is what the node's age counts from.
        Some(jump) if jump.at >= young_since => NodeError::ClockJumped {
            by: jump.by,
            ago: up,
            grace,
        },
        _ => NodeError::Restarted { up, grace },
    })
}

/// The client for the Redis URL `url` (the `position`-th, named `name`), set up for TLS when
/// the URL is `rediss://`.
#[cfg_attr(
    not(feature = "tls"),
    expect(unused_variables, reason = "only TLS reads the configuration here")
)]
fn client(position: usize, name: &str, url: &str, config: &Config) -> Result<redis::Client, Error> {
    // Checked before redis-rs sees the URL: another crate in the program may have turned on
    // redis-rs's own TLS support, and `rediss://` would then connect without this crate's TLS
    // set-up (the crypto provider, the root certificate).
    #[cfg(not(feature = "tls"))]
    if is_tls_url(url) {
        return Err(Error::InvalidConfig(format!(
            "Redis URL #{position} ({name}) asks for TLS, which needs the `tls` feature: \
             `cluster-singleton = {{ version = \"0.1\", features = [\"tls\"] }}`"
        )));
    }
    let client = redis::Client::open(url).map_err(|err| {
        Error::InvalidConfig(format!(
            "Redis URL #{position} ({name}) is not valid: {err}; \
             expected `redis://[user:password@]host[:port][/db]`{} (or `memory://` for tests)",
            if cfg!(feature = "tls") {
                ", or `rediss://` for TLS"
            } else {
                ""
            }
        ))
    })?;
    #[cfg(feature = "tls")]
    let client = crate::tls::client(client, position, name, url, config)?;
    with_tcp_settings(client)
}

/// `client`, with TCP keepalive and a user timeout on its connections, so that the kernel too
/// gives up a connection whose peer went silent (see [`Node::check`] for the faster way).
fn with_tcp_settings(client: redis::Client) -> Result<redis::Client, Error> {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let settings = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT);
    let info = client
        .get_connection_info()
        .clone()
        .set_tcp_settings(settings);
    redis::Client::open(info)
        .map_err(|err| Error::Internal(format!("cannot set up the TCP settings: {err}")))
}

/// Whether `url` asks for TLS: `rediss://` (or redis-rs's `valkeys://`).
#[cfg(not(feature = "tls"))]
fn is_tls_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|parsed| matches!(parsed.scheme(), "rediss" | "valkeys"))
}

/// Why opening a connection failed, with advice for the failures that have one.
fn connect_failure(err: &RedisError) -> String {
    #[cfg(feature = "tls")]
    if let Some(advice) = crate::tls::advice(err) {
        return format!("{err} ({advice})");
    }
    err.to_string()
}

/// Opens a connection as a task of its own, on the runtime that should drive it (see
/// [`crate::driver`]). A caller's runtime without I/O or timers enabled makes that task panic;
/// the connection is then opened on the crate's own runtime, as are all later ones made on it.
async fn connect_on_a_driver(
    client: redis::Client,
    connect_timeout: Duration,
    grace: Option<Arc<FleetGrace>>,
    engine: Handle,
) -> Opened {
    let on = driver::for_connection(&engine);
    let callers = on.alive.is_some();
    let joined = on
        .handle
        .spawn(open(
            client.clone(),
            connect_timeout,
            grace.clone(),
            on.alive,
        ))
        .await;
    let joined = match joined {
        Err(err) if callers && err.is_panic() => {
            driver::cannot_drive(&on.handle);
            tracing::warn!(error = %err, "the caller's tokio runtime cannot drive Redis connections (is it built without `enable_all()`?); the crate's own thread drives them instead");
            engine
                .spawn(open(client, connect_timeout, grace, None))
                .await
        }
        joined => joined,
    };
    joined.unwrap_or_else(|err| {
        Err(ConnectFailure {
            cause: format!("the connect task failed: {err}"),
            refused: false,
        })
    })
}

/// Opens a connection (its driver task lives on the runtime this runs on, whose sentinel clears
/// `driver_alive`) and, with a restart grace, reads when the server started and its `run_id`,
/// and announces our longest ttl (see [`FleetGrace`]).
async fn open(
    client: redis::Client,
    connect_timeout: Duration,
    grace: Option<Arc<FleetGrace>>,
    driver_alive: Option<Arc<AtomicBool>>,
) -> Opened {
    let opening = async {
        // No response timeout inside: every command has the node's deadline around it already.
        // A deep queue: a command parked in the backlog is queued by its first poll, which a
        // full queue (redis-rs's default holds 50) would make wait for a later one.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None)
            .set_pipeline_buffer_size(PIPELINE_QUEUE);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let server = match &grace {
            Some(grace) => {
                grace.announce(&mut connection).await?;
                Some(Server::read(&mut connection, &grace.epoch_key).await?)
            }
            None => None,
        };
        Ok::<_, RedisError>(Arc::new(Session {
            connection,
            server: Mutex::new(server),
            driver_alive,
        }))
    };
    match tokio::time::timeout(connect_timeout, opening).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(err)) => Err(ConnectFailure {
            cause: connect_failure(&err),
            refused: is_refusal(&err),
        }),
        Err(_elapsed) => Err(ConnectFailure {
            cause: format!("no connection within {connect_timeout:?}"),
            refused: false,
        }),
    }
}

/// Bounds one call by a deadline, whatever the connection is doing (connecting, waiting on a
/// frozen server).
async fn within<T>(
    engine: &Handle,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    driver::timeout(engine, timeout, call)
        .await
        .unwrap_or(Err(NodeError::Timeout(timeout)))
}

/// A duration as whole milliseconds for `PX`, saturating far beyond any real ttl.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
