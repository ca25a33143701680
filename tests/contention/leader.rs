//! The leader variant: every worker process campaigns for one key (`Runtime::campaign`) and
//! writes down, as a body of the history, each interval in which it believed it led: from the
//! moment `elected` resolved to the first instant `is_leader()` was seen false, or the lease's
//! validity deadline if that came first (a process paused past it cannot act on its belief, and
//! `is_leader()` says false from the deadline on), or its own resignation; a SIGKILLed leader's
//! interval ends at the kill. Since no two processes may believe they lead at once, each
//! interval's "valid until" is the end of time: the checker fails on any overlap at all.
//!
//! Besides the suite's fault schedule, a leader now and then stops its own process (SIGSTOP, then
//! SIGCONT from a child shell) for longer than the ttl, as a GC pause or a frozen VM would: its
//! lease runs out while it cannot renew, and another worker is elected meanwhile. The control
//! (`CACHING`) workers cache `true` from `Elected` until they choose to step down, ignoring
//! `is_leader()` and revocation: those pauses must make the checker find overlaps.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::records::{monotonic_now, Nanos, Record};
use super::run::{assert_clean, run};
use super::schedule::Fault;
use super::worker::{between, bump, nanos, write, Shared};

/// Workers that believe `is_leader()`.
pub const HONEST: u8 = 1;

/// The control: workers that believe they lead from `Elected` until they resign.
pub const CACHING: u8 = 2;

/// The key every worker campaigns for.
const LEADER_KEY: &str = "contention-leader";

/// How long a worker leads before it resigns, to hand over.
const TERM: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(800));

/// After resigning, a worker waits this long before campaigning again, longer than the other
/// candidates' pause between attempts, so that the lead moves between processes.
const REST: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(600));

/// One term in this many is paused (SIGSTOP) for [`PAUSE`], past any lease's validity (the
/// fleet's longest ttl is 2 s).
const PAUSE_ONE_IN: usize = 3;
const PAUSE: Duration = Duration::from_millis(2600);

/// How often a leader looks at `is_leader()`.
const POLL: Duration = Duration::from_millis(1);

const MIXED_RUN: Duration = Duration::from_secs(10);
const CONTROL_RUN: Duration = Duration::from_secs(5);

/// A worker's loop: campaign, believe, step down, again, until told to stop.
pub async fn lead(shared: Arc<Shared>, mode: u8, mut rng: fastrand::Rng) {
    let stopping = || shared.stop.load(Ordering::SeqCst);
    while !stopping() {
        let leadership = shared
            .runtime
            .campaign(LEADER_KEY, shared.ttl)
            .expect("a valid campaign");
        let fencing_token = loop {
            if stopping() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(50), leadership.elected()).await {
                Ok(Some(token)) => break token,
                Ok(None) => panic!("the campaign ended by itself"),
                Err(_elapsed) => {}
            }
        };
        let elected_at = monotonic_now();
        bump(&shared.counters.acquired);
        let token = format!("{}-{fencing_token}", shared.pid);
        write(
            &shared,
            &Record::Enter {
                at: elected_at,
                valid_until: Nanos::MAX,
                pid: shared.pid,
                task: 0,
                key: LEADER_KEY.into(),
                token: token.clone(),
            },
        );
        let term_ends = elected_at + nanos(between(&mut rng, TERM));
        let mut pause_at = (rng.usize(..PAUSE_ONE_IN) == 0)
            .then(|| elected_at + nanos(between(&mut rng, (Duration::ZERO, TERM.0))));
        let mut deadline = elected_at + nanos(leadership.validity());
        let believed_until = loop {
            let now = monotonic_now();
            if mode == CACHING {
                if now >= term_ends || stopping() {
                    break Some(now);
                }
            } else {
                if !leadership.is_leader() {
                    break Some(now.min(deadline));
                }
                deadline = now + nanos(leadership.validity());
                if now >= term_ends || stopping() {
                    break Some(now);
                }
            }
            if pause_at.is_some_and(|at| now >= at) {
                pause_at = None;
                if mode == HONEST {
                    // Written before the pause, so that a kill while stopped does not stretch the
                    // belief to the kill: `is_leader()` is false from `deadline` on, which is
                    // checked on waking.
                    write_exit(&shared, deadline, &token);
                    pause_this_process(shared.pid);
                    // A timer started before the stop fires only once the process runs again.
                    tokio::time::sleep(PAUSE).await;
                    // The paused term must be over; a new one may have begun since, if the
                    // campaign won again on waking (it is resigned unused below).
                    if leadership.fencing_token() == Some(fencing_token) {
                        let message = "the term was still leading after a pause past its validity";
                        write(
                            &shared,
                            &Record::Unexpected {
                                pid: shared.pid,
                                message: message.into(),
                            },
                        );
                    }
                    break None;
                }
                pause_this_process(shared.pid);
            }
            tokio::time::sleep(POLL).await;
        };
        if let Some(at) = believed_until {
            write_exit(&shared, at, &token);
        }
        leadership.resign().await;
        tokio::time::sleep(between(&mut rng, REST)).await;
    }
}

fn write_exit(shared: &Shared, at: Nanos, token: &str) {
    let record = Record::Exit {
        at,
        pid: shared.pid,
        key: LEADER_KEY.into(),
        token: token.into(),
    };
    write(shared, &record);
}

/// Stops this whole process for [`PAUSE`]: a child shell sends SIGSTOP, then SIGCONT.
fn pause_this_process(pid: u32) {
    let script = format!(
        "kill -STOP {pid}; sleep {}; kill -CONT {pid}",
        PAUSE.as_secs_f64()
    );
    let mut shell = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("start the pausing shell");
    // Reaped by a thread of its own: this process is about to be stopped.
    std::thread::spawn(move || shell.wait());
}

fn leader_setup(
    name: &'static str,
    faults: &[Fault],
    length: Duration,
    mode: u8,
) -> super::run::Setup {
    // One-shot programs lock once and exit: they have no part in an election.
    let faults: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|&fault| fault != Fault::ShortLivedProcess)
        .collect();
    let mut setup = super::setup(name, &faults, length);
    setup.tasks = 1;
    setup.keys = 1;
    setup.leader = mode;
    setup
}

#[test]
fn leaders_under_every_fault_mixed_never_overlap() {
    let report = run(leader_setup(
        "leaders under every fault mixed",
        &Fault::ALL,
        MIXED_RUN,
        HONEST,
    ));
    assert_clean(&report);
    assert!(
        report.verdict.bodies() > 3,
        "{report}\ntoo few terms to show anything"
    );
}

/// The control: leaders that cache `true` and ignore revocation believe they lead through their
/// own pauses, while another worker was elected: the checker must find those overlaps.
#[test]
fn the_checker_finds_leaders_that_ignore_revocation() {
    let report = run(leader_setup(
        "leaders that cache `true`",
        &[],
        CONTROL_RUN,
        CACHING,
    ));
    let overlaps = &report.verdict.overlaps;
    assert!(
        !overlaps.is_empty(),
        "{report}\nthe checker missed leaders that believed past their lease"
    );
    for overlap in overlaps {
        assert_ne!(overlap.first.pid, overlap.second.pid);
    }
}
