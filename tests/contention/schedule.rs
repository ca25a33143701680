//! The faults and their schedule: a plan drawn from a seed before the run, so that the same seed
//! replays the same faults on the same nodes at the same offsets.
//!
//! The plan never makes more than a minority of the nodes faulty at once, counting a node as
//! faulty from the fault until it is undone and, after a node starts again empty, until its votes
//! count again (the restart grace).

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a node; start it again (empty) after a while.
    KillNode,
    /// SIGSTOP a node; SIGCONT it after a while.
    FreezeNode,
    /// Kill a node and start it again at once, without persistence: it forgets every lock.
    RestartNode,
    /// SIGKILL a worker while it runs a body under a lock; start a replacement.
    KillHolder,
    /// Cut a node off from every client (its proxy holds all traffic); heal after a while.
    Partition,
    /// Delay everything to and from a node; remove the delay after a while.
    Latency,
    /// Drop every client connection to a node at once (the node stays up).
    Disconnect,
    /// Silence every open connection to a node for good, without closing it (a flow a NAT
    /// forgot); new connections work.
    BlackHole,
    /// Start a program that makes one call per task and exits right after, without `shutdown`.
    ShortLivedProcess,
    /// Step a node's wall clock forward past the ttl: every key on it expires at once.
    ClockJump,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::KillNode,
        Fault::FreezeNode,
        Fault::RestartNode,
        Fault::KillHolder,
        Fault::Partition,
        Fault::Latency,
        Fault::Disconnect,
        Fault::BlackHole,
        Fault::ShortLivedProcess,
        Fault::ClockJump,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "kill-node",
            Fault::FreezeNode => "freeze-node",
            Fault::RestartNode => "restart-node",
            Fault::KillHolder => "kill-holder",
            Fault::Partition => "partition",
            Fault::Latency => "latency",
            Fault::Disconnect => "disconnect",
            Fault::BlackHole => "black-hole",
            Fault::ShortLivedProcess => "short-lived-process",
            Fault::ClockJump => "clock-jump",
        }
    }

    /// Whether the fault takes a node out (so counts towards the faulty minority).
    fn on_node(self) -> bool {
        !matches!(self, Fault::KillHolder | Fault::ShortLivedProcess)
    }

    /// Whether the fault lasts until undone, rather than happening at an instant.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            Fault::KillNode | Fault::FreezeNode | Fault::Partition | Fault::Latency
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Time between the starts of two faults.
const GAP: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_millis(700);
/// Time between two kills of a lock holder: each kill blocks its key for a ttl, and starting the
/// replacement takes a moment, so they come less often than node faults.
const HOLDER_GAP: RangeInclusive<Duration> =
    Duration::from_millis(500)..=Duration::from_millis(1500);
/// How long a freeze, partition or added latency lasts: from a blip to most of a ttl.
const HOLD: RangeInclusive<Duration> = Duration::from_millis(200)..=Duration::from_millis(1500);
/// How long a killed node stays down when restarted nodes' votes are refused for a grace: any
/// time will do, and the grace keeps it out for longer anyway.
const DOWNTIME: RangeInclusive<Duration> = Duration::from_millis(200)..=Duration::from_millis(1500);
/// How long a killed node stays down when nothing refuses restarted nodes' votes: at least the
/// ttl and a margin, the Redlock paper's "delayed restart", without which a node that comes back
/// empty can hand out a lock that is still held (that case is `RestartNode`'s).
const DELAYED_DOWNTIME_BEYOND_TTL: RangeInclusive<Duration> =
    Duration::from_millis(500)..=Duration::from_millis(1500);
/// The delay added by a latency fault, each way: from a slow network to beyond the node timeout
/// for a round trip.
const LATENCY: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_millis(150);
/// How long a node counts as faulty after its connections were dropped: the clients reconnect
/// at once.
const RECONNECT: Duration = Duration::from_millis(300);
/// How long a node counts as faulty after its open connections went silent: the clients' check
/// (every second) notices within its node timeout, and opens a new connection.
const REPLACE_SILENT_CONNECTION: Duration = Duration::from_millis(2500);
/// How long starting a node again takes, as planned: a node answers within tens of milliseconds.
/// A start that runs later only delays the next faults, since the run checks the faulty nodes
/// again as it goes and skips a fault that would make a majority faulty.
const STARTING: Duration = Duration::from_millis(300);
/// Added to the restart grace: the clients learn a node's age from its `uptime_in_seconds`,
/// which is rounded down, so its votes may count up to a second later than the grace says.
const UPTIME_ROUNDING: Duration = Duration::from_secs(1);

/// How far past the ttl a clock jump steps a node's clock: every key on it expires at once.
const STEP_BEYOND_TTL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_millis(3000);
/// How long a node whose clock stepped counts as faulty when the clients do not watch the
/// clocks: they count its votes at once, so only for the moment of the step.
const UNNOTICED_CLOCK_JUMP: Duration = Duration::from_millis(300);

/// What the plan must know about the run.
#[derive(Clone, Debug)]
pub struct Limits {
    pub nodes: usize,
    /// The lock's ttl.
    pub ttl: Duration,
    /// How long a node that started again must be up before the clients count its votes.
    pub restart_grace: Duration,
    /// Whether the clients treat a node whose clock stepped like a restarted one.
    pub clock_jumps_detected: bool,
}

impl Limits {
    /// How many nodes may be faulty at once: a minority.
    pub fn max_faulty(&self) -> usize {
        (self.nodes - 1) / 2
    }

    /// How long after it is told to start again a node may still not vote.
    pub fn rejoin(&self) -> Duration {
        STARTING + self.rejoin_once_started()
    }

    /// How long after it answers again a node may still not vote.
    pub fn rejoin_once_started(&self) -> Duration {
        self.restart_grace + UPTIME_ROUNDING
    }

    /// How long after its clock stepped a node may still not vote: as after a restart when the
    /// clients see the step (within their once-a-second check at the latest), else a moment.
    pub fn clock_jump_unusable(&self) -> Duration {
        if self.clock_jumps_detected {
            self.rejoin_once_started()
        } else {
            UNNOTICED_CLOCK_JUMP
        }
    }
}

/// One fault in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// From the start of the schedule.
    pub at: Duration,
    pub fault: Fault,
    /// The node, for faults on a node.
    pub node: usize,
    /// How long until it is undone, for held faults.
    pub hold: Duration,
    /// The delay, for `Latency`.
    pub latency: Duration,
    /// How far the clock steps forward, for `ClockJump`.
    pub step: Duration,
    /// How long the node counts as faulty from `at`.
    pub unusable: Duration,
}

impl Episode {
    fn busy_between(&self) -> (Duration, Duration) {
        (self.at, self.at + self.unusable)
    }
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fault)?;
        if self.fault.on_node() {
            write!(f, " node {}", self.node)?;
        }
        if self.fault == Fault::Latency {
            write!(f, " +{:?}", self.latency)?;
        }
        if self.fault == Fault::ClockJump {
            write!(f, " +{:?}", self.step)?;
        }
        if self.fault.is_held() {
            write!(f, " for {:?}", self.hold)?;
        }
        write!(f, " (planned at {:.3}s)", self.at.as_secs_f64())
    }
}

/// Draws a plan of faults of the kinds in `faults` over `length`, from `seed`.
pub fn plan(seed: u64, faults: &[Fault], length: Duration, limits: &Limits) -> Vec<Episode> {
    assert!(
        !faults.is_empty(),
        "a schedule needs at least one kind of fault"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut episodes: Vec<Episode> = Vec::new();
    let only_holder_kills = faults == [Fault::KillHolder];
    let mut at = draw(&mut rng, &GAP);
    while at < length {
        let fault = faults[rng.usize(..faults.len())];
        if let Some(episode) = place(&mut rng, fault, at, &episodes, limits) {
            episodes.push(episode);
        }
        at += if only_holder_kills {
            draw(&mut rng, &HOLDER_GAP)
        } else {
            draw(&mut rng, &GAP)
        };
    }
    episodes
}

/// An episode of `fault` at `at` on a node that can take it, or `None` when every node that is
/// not faulty is needed for the majority.
fn place(
    rng: &mut fastrand::Rng,
    fault: Fault,
    at: Duration,
    planned: &[Episode],
    limits: &Limits,
) -> Option<Episode> {
    let mut episode = Episode {
        at,
        fault,
        node: 0,
        hold: Duration::ZERO,
        latency: Duration::ZERO,
        step: Duration::ZERO,
        unusable: Duration::ZERO,
    };
    match fault {
        Fault::KillNode => {
            episode.hold = if limits.restart_grace >= limits.ttl {
                draw(rng, &DOWNTIME)
            } else {
                limits.ttl + draw(rng, &DELAYED_DOWNTIME_BEYOND_TTL)
            };
            episode.unusable = episode.hold + limits.rejoin();
        }
        Fault::RestartNode => episode.unusable = limits.rejoin(),
        Fault::FreezeNode | Fault::Partition => {
            episode.hold = draw(rng, &HOLD);
            episode.unusable = episode.hold;
        }
        Fault::Latency => {
            episode.hold = draw(rng, &HOLD);
            episode.latency = draw(rng, &LATENCY);
            episode.unusable = episode.hold;
        }
        Fault::Disconnect => episode.unusable = RECONNECT,
        Fault::BlackHole => episode.unusable = REPLACE_SILENT_CONNECTION,
        Fault::ClockJump => {
            episode.step = limits.ttl + draw(rng, &STEP_BEYOND_TTL);
            episode.unusable = limits.clock_jump_unusable();
        }
        Fault::KillHolder | Fault::ShortLivedProcess => return Some(episode),
    }
    let (start, end) = episode.busy_between();
    // Nodes faulty at some point of [start, end): conservatively, any overlap counts.
    let mut busy = vec![false; limits.nodes];
    for other in planned.iter().filter(|other| other.fault.on_node()) {
        let (other_start, other_end) = other.busy_between();
        if other_start < end && start < other_end {
            busy[other.node] = true;
        }
    }
    if busy.iter().filter(|busy| **busy).count() >= limits.max_faulty() {
        return None;
    }
    let free: Vec<usize> = (0..limits.nodes).filter(|&node| !busy[node]).collect();
    episode.node = free[rng.usize(..free.len())];
    Some(episode)
}

fn draw(rng: &mut fastrand::Rng, range: &RangeInclusive<Duration>) -> Duration {
    let nanos = |d: &Duration| u64::try_from(d.as_nanos()).expect("short durations");
    Duration::from_nanos(rng.u64(nanos(range.start())..=nanos(range.end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            nodes: 5,
            ttl: Duration::from_secs(2),
            restart_grace: Duration::from_secs(2),
            clock_jumps_detected: true,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let length = Duration::from_secs(60);
        let a = plan(42, &Fault::ALL, length, &limits());
        assert_eq!(a, plan(42, &Fault::ALL, length, &limits()));
        assert_ne!(a, plan(43, &Fault::ALL, length, &limits()));
    }

    #[test]
    fn never_more_than_a_minority_of_nodes_is_faulty() {
        let limits = limits();
        for seed in 0..50 {
            let episodes = plan(seed, &Fault::ALL, Duration::from_secs(60), &limits);
            assert!(
                episodes.len() > 20,
                "seed {seed}: {} episodes",
                episodes.len()
            );
            // Faulty nodes only change at the start or end of an episode: check just after each.
            for probe in episodes.iter().flat_map(|e| {
                let (start, end) = e.busy_between();
                [start, end]
            }) {
                let mut faulty: Vec<usize> = episodes
                    .iter()
                    .filter(|e| e.fault.on_node())
                    .filter(|e| {
                        let (start, end) = e.busy_between();
                        start <= probe && probe < end
                    })
                    .map(|e| e.node)
                    .collect();
                let episodes_at_probe = faulty.len();
                faulty.sort_unstable();
                faulty.dedup();
                assert_eq!(
                    faulty.len(),
                    episodes_at_probe,
                    "seed {seed}: one node, two faults at {probe:?}"
                );
                assert!(
                    faulty.len() <= limits.max_faulty(),
                    "seed {seed}: {faulty:?} faulty at {probe:?}"
                );
            }
        }
    }

    #[test]
    fn every_kind_is_drawn() {
        let episodes = plan(7, &Fault::ALL, Duration::from_secs(120), &limits());
        for fault in Fault::ALL {
            assert!(
                episodes.iter().any(|e| e.fault == fault),
                "{fault} never drawn"
            );
        }
    }

    #[test]
    fn without_a_grace_killed_nodes_stay_down_beyond_the_ttl() {
        let limits = Limits {
            restart_grace: Duration::ZERO,
            ..limits()
        };
        let episodes = plan(3, &[Fault::KillNode], Duration::from_secs(60), &limits);
        assert!(!episodes.is_empty());
        assert!(episodes.iter().all(|e| e.hold > limits.ttl));
    }
}
