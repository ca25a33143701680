//! Whether a node's vote counts: its restart grace, its epoch and its clock.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::RedisError;
use tokio::sync::watch;

use crate::clock::{
    drift_allowance, ClockAgreement, ClockMove, ClockReader, ClockReading, ClockTable, ClockWatch,
};
use crate::{keys, telemetry, Config};

use super::connection::Session;
use super::scripts::ANNOUNCE;
use super::server::{NodeCounts, Server};
use super::{millis, Node, NodeError};

/// How much longer than its `max_ttl` an announcement lives without being renewed: its machine
/// renews it every second, and any lock of that machine runs out within `max_ttl` of its last
/// renewal.
const ANNOUNCEMENT_OUTLIVES_ITS_LOCKS: Duration = Duration::from_secs(60);

/// The server this process last saw behind a node.
pub(super) struct Seen {
    /// Its `run_id` and epoch.
    pub(super) identity: Option<(String, Option<String>)>,
    /// When this process last saw the node restart, lose its data or step its clock forward,
    /// if it did: no reading of the node makes it older than that.
    pub(super) young_from: Option<(Instant, SystemTime)>,
    /// The earliest start read of the server now behind the node (by its uptime and epoch): a
    /// later reading that makes it younger was read by a clock that stepped back.
    pub(super) started: Option<(Instant, SystemTime)>,
    /// The node's clock over time.
    pub(super) clock: ClockWatch,
    /// Whether the node's clock was last seen ahead of the other nodes' clocks, or stepped
    /// forward since it was last seen agreeing with them: either way the node was made young
    /// for it once, and a step is announced once, not again when the check next finds the node
    /// ahead.
    pub(super) ahead: bool,
    /// Whether the node's clock was compared with the other nodes' clocks yet (see
    /// [`Node::take_clock_reading`]).
    pub(super) compared: bool,
    /// The last forward step of the node's clock this process saw.
    pub(super) jump: Option<Jump>,
    /// How many nodes the machines using this one lock on, as last read there.
    pub(super) node_counts: Option<NodeCounts>,
    /// Whether this server was read in the same script that announced our own node count (see
    /// [`Node::voting_session`]).
    pub(super) lists_read: bool,
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
pub(super) struct Jump {
    at: Instant,
    by: Duration,
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
/// A runtime that locks also announces how many nodes it locks on (before its first attempt, then
/// with its `max_ttl`), and reads back the fewest and the most announced on each node. Quorums
/// exclude each other only among machines that lock on the same nodes: a runtime that read
/// different numbers on any of its nodes (a node added or removed by a rolling deploy, a machine
/// left with an old list) counts no node's vote, until the odd announcements have expired, a
/// minute after their announcers' `max_ttl`.
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
    pub(super) epoch_key: String,
    /// Our own `Config::max_ttl`, in milliseconds.
    max_ttl_ms: u64,
    /// The longest `max_ttl` seen announced by any machine, in milliseconds. It only grows for
    /// the life of the process: lowering `max_ttl` fleet-wide takes effect on restart.
    announced_ms: AtomicU64,
    /// The keys the fewest and the most nodes are announced at.
    node_count_keys: [String; 2],
    /// How many nodes this runtime locks on.
    node_count: u64,
    /// Whether the runtime has begun to lock: it announces its node count from then on. A
    /// runtime that only looks (`health`, `inspect`, `list`, the command-line tool) never does,
    /// so that one pointed at some of the nodes does not count as a machine with another list.
    locking: AtomicBool,
    /// Done once the node count was first announced where it could be, before the first lock
    /// attempt.
    first_announced: tokio::sync::OnceCell<()>,
    /// Per node, the fewest and the most nodes announced there, as last read, and when.
    node_lists: Mutex<Vec<Option<(NodeCounts, Instant)>>>,
    /// The fewest and the most over every node and this runtime, packed (see
    /// `NodeCounts::packed`), when they differ; 0 while they agree. Read by every vote.
    node_lists_differ: AtomicU64,
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
            node_count_keys: keys::node_counts(&config.key_prefix),
            node_count: config.urls.len() as u64,
            locking: AtomicBool::new(false),
            first_announced: tokio::sync::OnceCell::new(),
            node_lists: Mutex::new(vec![None; config.urls.len()]),
            node_lists_differ: AtomicU64::new(0),
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

    /// Announces our `max_ttl` and, once this runtime locks, how many nodes we lock on, on
    /// `connection`'s node; takes in the largest `max_ttl` announced there, and returns the fewest
    /// and the most nodes, and whether our own count was announced with them.
    pub(super) async fn announce(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(NodeCounts, bool), RedisError> {
        let ours = self.announced_node_count();
        let mut invocation = ANNOUNCE.key(&self.key);
        let [fewest_key, most_key] = &self.node_count_keys;
        invocation
            .key(fewest_key)
            .key(most_key)
            .arg(self.max_ttl_ms)
            .arg(
                self.max_ttl_ms
                    .saturating_add(millis(ANNOUNCEMENT_OUTLIVES_ITS_LOCKS)),
            )
            .arg(ours.unwrap_or(0));
        let (largest, fewest, most): (u64, u64, u64) = invocation.invoke_async(connection).await?;
        self.announced_ms.fetch_max(largest, Ordering::Relaxed);
        Ok((NodeCounts { fewest, most }, ours.is_some()))
    }

    /// The node count this runtime announces: its own once it locks, none before.
    fn announced_node_count(&self) -> Option<u64> {
        self.locking
            .load(Ordering::SeqCst)
            .then_some(self.node_count)
    }

    /// Before the runtime's first lock attempt: from now on it announces how many nodes it
    /// locks on, and `check` (every node's check, which announces it) has done so where it can,
    /// so that a machine with another list that tries next finds it. Every other attempt waits
    /// for the first one's announcement.
    pub(crate) async fn begin_locking<F: Future<Output = ()>>(&self, check: impl FnOnce() -> F) {
        if self.first_announced.initialized() {
            return;
        }
        self.locking.store(true, Ordering::SeqCst);
        self.first_announced.get_or_init(check).await;
    }

    /// Takes in what node `node` said of the machines' lists, read now, and works out again
    /// whether they differ: over every node, not only those where the odd announcement was read,
    /// since a machine with another list may have announced it only where this one is cut off.
    /// A reading counts for as long as an announcement in it may last.
    fn note_node_counts(&self, node: usize, counts: NodeCounts) {
        let lasts = self.current() + ANNOUNCEMENT_OUTLIVES_ITS_LOCKS;
        let mut lists = self
            .node_lists
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lists[node] = Some((counts, Instant::now()));
        let all = lists
            .iter()
            .flatten()
            .filter(|(_, read)| read.elapsed() < lasts)
            .fold(NodeCounts::NONE, |all, (counts, _)| all.with(*counts))
            .with_ours(self.announced_node_count());
        let differ = if all.differ() { all.packed() } else { 0 };
        self.node_lists_differ.store(differ, Ordering::SeqCst);
    }

    /// Why no node gives a vote: machines announced different numbers of nodes on one of them,
    /// or this runtime locks on another number than they do (see `note_node_counts`).
    fn node_lists_differ(&self) -> Option<NodeError> {
        let counts = NodeCounts::unpacked(self.node_lists_differ.load(Ordering::SeqCst))?;
        Some(NodeError::NodeListsDiffer {
            ours: self.announced_node_count(),
            fewest: counts.fewest,
            most: counts.most,
        })
    }
}

impl Node {
    /// The session, if the server behind it has been up for the restart grace, so that its vote
    /// counts.
    pub(super) fn voting_session(&self) -> Result<Arc<Session>, NodeError> {
        let session = self.connected_session()?;
        let Some(grace) = &self.grace else {
            return Ok(session);
        };
        // What this process saw of the node since, on any connection: a step seen by a vote on
        // another connection counts here at once.
        let (seen_young, jump, lists_read) = {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (
                seen.young_from.map(|(instant, _)| instant),
                seen.jump,
                seen.lists_read,
            )
        };
        // Looked at after `lists_read`: the reading that set it had already taken its counts in
        // (see `Node::witness`), so a difference it found is seen here.
        if let Some(err) = grace.node_lists_differ() {
            return Err(err);
        }
        // The lists count only as read from a reading that announced our own: a machine with
        // another list that announced on the node before it is in it, one that announces later
        // finds ours. A reading that timed out (a stalled link at the first lock) never came.
        if grace.announced_node_count().is_some() && !lists_read {
            return Err(NodeError::NodeListsUnread);
        }
        let up_since = session.with_server(|server| match server {
            Some(Server {
                epoch: Some(_),
                up_since,
                ..
            }) => Ok(Some(*up_since)),
            Some(_) => Err(NodeError::LostData),
            None => Ok(None),
        })?;
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

    /// `server` as a vote counts it: when it is not the server last seen behind this node (a new
    /// `run_id`, or a new epoch: the node lost its data), this process has witnessed a restart,
    /// and the node is young from now on, whatever uptime the new server reports (a replica
    /// promoted in its place reports its own). Every later reading of the same server keeps
    /// that start: it is a floor of the node, not of one reading.
    pub(super) fn witness(&self, mut server: Server) -> Server {
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
            seen.lists_read = false;
        }
        seen.started = Some((server.up_since, server.started_at));
        seen.identity = Some(identity);
        let ours = self
            .grace
            .as_ref()
            .and_then(|grace| grace.announced_node_count());
        let counts = server.node_counts.with_ours(ours);
        // The counts first, then `lists_read`, both under the lock of `seen`: a vote that finds
        // the node read finds what the reading said (see `Node::voting_session`).
        if let Some(grace) = &self.grace {
            grace.note_node_counts(self.index, server.node_counts);
        }
        seen.lists_read |= server.announced_ours;
        match seen.node_counts.replace(counts) {
            Some(last) if last == counts => {}
            _ if counts.differ() => tracing::error!(
                node = self.name,
                fewest = counts.fewest,
                most = counts.most,
                ours,
                "machines using this Redis node lock on different numbers of nodes: their \
                 majorities need not overlap, so two of them could hold one key; no node gives \
                 this runtime a vote until every machine lists the same nodes and the other \
                 announcements have expired (see docs/deployment.md, \"Changing the nodes\")"
            ),
            Some(last) if last.differ() => tracing::warn!(
                node = self.name,
                nodes = counts.most,
                "machines using this Redis node lock on the same number of nodes again"
            ),
            _ => {}
        }
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
    pub(super) fn detects_clock_jumps(&self) -> bool {
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
                seen.ahead = true;
            }
            ClockMove::Unordered(by) => {
                tracing::warn!(
                    node = self.name,
                    jumped_by = ?by,
                    "Redis node's clock stepped, forward or back (a reading handled out of order \
                     cannot tell): keys on it may have expired early, so its votes count again \
                     once the restart grace has passed from now"
                );
                telemetry::clock_jumped(&self.name, "unknown");
                // Not `seen.ahead`: that says a step forward was seen, whose clock the check's
                // next comparison with the other nodes would find ahead again.
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
    pub(super) fn vote_clock(
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
    pub(super) fn epoch_key(&self, session: &Session) -> Option<&str> {
        let grace = self.grace.as_ref()?;
        session
            .with_server(Option::is_some)
            .then_some(grace.epoch_key.as_str())
    }

    /// The epoch key and the epoch the node should still have, for a script's check; `None`
    /// when the restart grace is off.
    pub(super) fn epoch_check(&self, session: &Session) -> Option<(&str, String)> {
        let epoch_key = self.epoch_key(session)?;
        let epoch = session.with_server(|server| {
            server
                .as_ref()
                .and_then(|server| server.epoch.clone())
                .unwrap_or_default()
        });
        Some((epoch_key, epoch))
    }

    /// The node lost its data: see [`Node::same_epoch`].
    pub(super) fn lost_data(&self, session: &Session) -> NodeError {
        match self.same_epoch(session, None) {
            Err(err) => err,
            Ok(()) => NodeError::LostData,
        }
    }

    /// Checks that the node still has the epoch read with `session`'s server (`observed` is what
    /// the vote read back): otherwise the node lost its data since, and is young again from now.
    pub(super) fn same_epoch(
        &self,
        session: &Session,
        observed: Option<&[u8]>,
    ) -> Result<(), NodeError> {
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
