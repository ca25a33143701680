//! `cron::Schedule`: every machine keeps the same schedule, and each tick runs once in the fleet,
//! on real Redis nodes; late machines skip a tick that already ran, and a failed tick is run by a
//! later machine. (`cargo test --features cron --test cron`)

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_singleton::cron::{current_tick, Schedule, Scheduled};
use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{singleton, Error, Outcome, Skip};
use cluster_singleton_testkit::{Cluster, Proxy};
use common::{eventually, runtime_for};

const EVERY_SECOND: &str = "* * * * * *";

/// How long a test lets its schedules fire.
const FIRING_FOR: Duration = Duration::from_millis(4_500);

/// How long the calls of the last ticks may take to end once the schedules are stopped.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// A node's "no done marker" counts for a tick only if the node started at least a second
/// before the tick, by a start time that Redis gives in whole seconds (so up to two seconds
/// late): nodes started by the test answer for ticks from three seconds after their start.
const NODES_REMEMBER_TICKS_AFTER: Duration = Duration::from_secs(3);

/// The job every machine schedules: fails when `fails` says so, else succeeds.
#[singleton(key = "tick", ttl = "5s")]
async fn tick_job(fails: bool) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    if fails {
        Err("the warehouse did not answer".into())
    } else {
        Ok(())
    }
}

/// What one machine's call for one tick ended with.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Ran,
    RanAndFailed,
    AlreadyDone { period_start: SystemTime },
    Busy,
    Other(String),
}

impl Seen {
    fn of(outcome: Result<Outcome<Result<(), String>>, Error>) -> Seen {
        match outcome {
            Ok(Outcome::Ran(Ok(()))) => Seen::Ran,
            Ok(Outcome::Ran(Err(_))) => Seen::RanAndFailed,
            Ok(Outcome::Skipped(Skip::AlreadyDone { period_start })) => {
                Seen::AlreadyDone { period_start }
            }
            Ok(Outcome::Skipped(Skip::Busy)) => Seen::Busy,
            other => Seen::Other(format!("{other:?}")),
        }
    }
}

/// Every call of every machine, by tick.
#[derive(Default)]
struct Journal {
    fired: AtomicUsize,
    calls: Mutex<Vec<(SystemTime, usize, Seen)>>,
}

impl Journal {
    fn recorded(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Whether every call that started has recorded its outcome.
    fn settled(&self) -> bool {
        self.fired.load(Ordering::SeqCst) == self.recorded()
    }

    /// What each machine saw, per tick, for the ticks that every one of `machines` fired.
    fn by_tick(&self, machines: usize) -> BTreeMap<SystemTime, BTreeMap<usize, Seen>> {
        let mut ticks: BTreeMap<SystemTime, BTreeMap<usize, Seen>> = BTreeMap::new();
        for (tick, machine, seen) in self.calls.lock().unwrap().iter() {
            let previous = ticks
                .entry(*tick)
                .or_default()
                .insert(*machine, seen.clone());
            assert_eq!(previous, None, "machine {machine} fired a tick twice");
        }
        ticks.retain(|_, seen| seen.len() == machines);
        ticks
    }
}

/// One machine: its own schedule (firing `late` after each tick) on its own runtime.
fn start_machine(
    runtime: &Runtime,
    machine: usize,
    late: Duration,
    fails: bool,
    journal: &Arc<Journal>,
) -> Scheduled {
    schedule_machine(
        Schedule::new().fire_late_by(late),
        runtime,
        machine,
        fails,
        journal,
    )
}

/// `schedule` with the job of every test: it records the tick and the outcome in `journal`.
fn schedule_machine(
    schedule: Schedule,
    runtime: &Runtime,
    machine: usize,
    fails: bool,
    journal: &Arc<Journal>,
) -> Scheduled {
    let journal = journal.clone();
    schedule
        .runtime(runtime.clone())
        .job(EVERY_SECOND, move || {
            let journal = journal.clone();
            async move {
                journal.fired.fetch_add(1, Ordering::SeqCst);
                let tick = current_tick().expect("a job that the schedule called knows its tick");
                let seen = Seen::of(tick_job(fails).await);
                journal.calls.lock().unwrap().push((tick, machine, seen));
            }
        })
        .start()
        .expect("the schedule starts")
}

/// Three nodes and a runtime per machine, once the nodes answer for the ticks to come.
async fn fleet(machines: usize) -> (Cluster, Vec<Runtime>) {
    let started = SystemTime::now();
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let runtimes: Vec<Runtime> = (0..machines).map(|_| runtime_for(&cluster)).collect();
    // Each runtime connects (its first lock) before the wait below begins.
    for runtime in &runtimes {
        let lease = runtime
            .lock("warm-up", Duration::from_secs(1))
            .await
            .expect("the fresh nodes vote")
            .expect("nobody else holds the warm-up key");
        lease.release().await.expect("released");
    }
    // A runtime counts a node as started no earlier than its first connection (which wrote
    // the node's epoch), and its "no marker" from a second after that.
    let remembers_from =
        (started + NODES_REMEMBER_TICKS_AFTER).max(SystemTime::now() + Duration::from_secs(1));
    if let Ok(left) = remembers_from.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    (cluster, runtimes)
}

/// Lets the machines fire for `FIRING_FOR`, stops them, and waits for their last calls.
async fn fire_and_stop(machines: Vec<Scheduled>, journal: &Journal) {
    tokio::time::sleep(FIRING_FOR).await;
    for machine in &machines {
        machine.stop();
    }
    assert!(
        eventually(SETTLE_WITHIN, || journal.settled()).await,
        "the last calls never ended"
    );
}

fn unix_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis()
}

#[tokio::test]
async fn three_machines_firing_together_run_each_tick_once() {
    let (_cluster, runtimes) = fleet(3).await;
    let journal = Arc::new(Journal::default());
    let machines = (0..3)
        .map(|i| start_machine(&runtimes[i], i, Duration::ZERO, false, &journal))
        .collect();
    fire_and_stop(machines, &journal).await;

    let ticks = journal.by_tick(3);
    assert!(ticks.len() >= 3, "too few ticks fired: {ticks:?}");
    for (tick, seen) in &ticks {
        assert_eq!(unix_ms(*tick) % 1000, 0, "ticks are whole seconds");
        let ran = seen.values().filter(|seen| **seen == Seen::Ran).count();
        assert_eq!(ran, 1, "tick {}: {seen:?}", unix_ms(*tick));
        for other in seen.values().filter(|seen| **seen != Seen::Ran) {
            assert!(
                matches!(other, Seen::Busy)
                    || *other
                        == Seen::AlreadyDone {
                            period_start: *tick
                        },
                "tick {}: {seen:?}",
                unix_ms(*tick)
            );
        }
    }
}

#[tokio::test]
async fn machines_that_fire_late_skip_a_tick_that_already_ran() {
    let (_cluster, runtimes) = fleet(3).await;
    let journal = Arc::new(Journal::default());
    // Machine 0 fires on time, 1 and 2 a quarter and a half second late: by then the run is
    // over and its lock released, so only the tick's done marker can stop them.
    let late = [0, 250, 500].map(Duration::from_millis);
    let machines = (0..3)
        .map(|i| start_machine(&runtimes[i], i, late[i], false, &journal))
        .collect();
    fire_and_stop(machines, &journal).await;

    let ticks = journal.by_tick(3);
    assert!(ticks.len() >= 3, "too few ticks fired: {ticks:?}");
    for (tick, seen) in &ticks {
        let done = Seen::AlreadyDone {
            period_start: *tick,
        };
        let expected = BTreeMap::from([(0, Seen::Ran), (1, done.clone()), (2, done)]);
        assert_eq!(*seen, expected, "tick {}", unix_ms(*tick));
    }
}

#[tokio::test]
async fn a_tick_that_failed_on_one_machine_is_run_by_a_later_one() {
    let (_cluster, runtimes) = fleet(3).await;
    let journal = Arc::new(Journal::default());
    // Machine 0 fires first and its runs fail; machine 1 fires later and its runs succeed;
    // machine 2, later still, finds each tick done.
    let late = [0, 250, 500].map(Duration::from_millis);
    let machines = (0..3)
        .map(|i| start_machine(&runtimes[i], i, late[i], i == 0, &journal))
        .collect();
    fire_and_stop(machines, &journal).await;

    let ticks = journal.by_tick(3);
    assert!(ticks.len() >= 3, "too few ticks fired: {ticks:?}");
    for (tick, seen) in &ticks {
        let expected = BTreeMap::from([
            (0, Seen::RanAndFailed),
            (1, Seen::Ran),
            (
                2,
                Seen::AlreadyDone {
                    period_start: *tick,
                },
            ),
        ]);
        assert_eq!(*seen, expected, "tick {}", unix_ms(*tick));
    }
}

/// Two "machines" on one `memory://` store, as a user's unit test has them.
fn memory_machines(store: &str) -> (Runtime, Runtime) {
    let build = || Config::new([store]).build().expect("a memory:// runtime");
    (build(), build())
}

#[tokio::test]
async fn memory_nodes_run_each_tick_once_in_one_process() {
    let (a, b) = memory_machines("memory://cron-each-tick");
    let journal = Arc::new(Journal::default());
    let machines = vec![
        start_machine(&a, 0, Duration::ZERO, false, &journal),
        start_machine(&b, 1, Duration::from_millis(250), false, &journal),
    ];
    fire_and_stop(machines, &journal).await;

    let ticks = journal.by_tick(2);
    assert!(ticks.len() >= 3, "too few ticks fired: {ticks:?}");
    for (tick, seen) in &ticks {
        let done = Seen::AlreadyDone {
            period_start: *tick,
        };
        assert_eq!(*seen, BTreeMap::from([(0, Seen::Ran), (1, done)]));
    }
}

#[tokio::test]
async fn catch_up_runs_the_latest_missed_tick_once() {
    let (a, b) = memory_machines("memory://cron-catch-up");
    let journal = Arc::new(Journal::default());
    let every_two_seconds = "*/2 * * * * *";
    let schedule = |runtime: &Runtime, machine: usize, catch_up: bool| {
        let journal = journal.clone();
        let schedule = Schedule::new()
            .runtime(runtime.clone())
            .job(every_two_seconds, move || {
                let journal = journal.clone();
                async move {
                    journal.fired.fetch_add(1, Ordering::SeqCst);
                    let tick = current_tick().expect("a job knows its tick");
                    let seen = Seen::of(tick_job(false).await);
                    journal.calls.lock().unwrap().push((tick, machine, seen));
                }
            });
        let schedule = if catch_up {
            schedule.catch_up(Duration::from_secs(60))
        } else {
            schedule
        };
        schedule.start().expect("the schedule starts")
    };
    // Start a few hundred milliseconds after a tick that nobody ran, far from the next one.
    let now_ms = unix_ms(SystemTime::now()) as u64;
    let missed_ms = (now_ms / 2000 + 1) * 2000;
    tokio::time::sleep(Duration::from_millis(missed_ms + 300 - now_ms)).await;
    let missed = UNIX_EPOCH + Duration::from_millis(missed_ms);

    let first = schedule(&a, 0, true);
    assert!(eventually(SETTLE_WITHIN, || journal.recorded() == 1).await);
    let second = schedule(&b, 1, true);
    assert!(eventually(SETTLE_WITHIN, || journal.recorded() == 2).await);
    let without = schedule(&b, 2, false);
    // The next tick: all three fire it; the one without catch-up fired nothing before.
    assert!(eventually(Duration::from_secs(4), || journal.recorded() == 5).await);
    for machine in [first, second, without] {
        machine.stop();
    }
    assert!(eventually(SETTLE_WITHIN, || journal.settled()).await);

    let calls = journal.calls.lock().unwrap().clone();
    assert_eq!(calls[0], (missed, 0, Seen::Ran), "{calls:?}");
    assert_eq!(
        calls[1],
        (
            missed,
            1,
            Seen::AlreadyDone {
                period_start: missed
            }
        ),
        "{calls:?}"
    );
    let next = missed + Duration::from_secs(2);
    assert!(
        calls[2..].iter().all(|(tick, _, _)| *tick == next),
        "after the catch-up, only the next tick: {calls:?}"
    );
    assert_eq!(
        calls[2..]
            .iter()
            .filter(|(_, _, seen)| *seen == Seen::Ran)
            .count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test]
async fn in_leader_mode_only_the_leader_fires() {
    let (a, b) = memory_machines("memory://cron-leader");
    let journal = Arc::new(Journal::default());
    let leading = [
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    ];
    let machines: Vec<Scheduled> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(machine, runtime)| {
            let leads = leading[machine].clone();
            let schedule = Schedule::new().leader_only(move || leads.load(Ordering::SeqCst));
            schedule_machine(schedule, runtime, machine, false, &journal)
        })
        .collect();
    assert!(eventually(Duration::from_secs(4), || journal.recorded() >= 2).await);
    // The hand-over: machine 1 leads from here on.
    leading[0].store(false, Ordering::SeqCst);
    leading[1].store(true, Ordering::SeqCst);
    let handed_over = journal.recorded();
    assert!(
        eventually(Duration::from_secs(4), || journal.recorded()
            >= handed_over + 2)
        .await
    );
    for machine in &machines {
        machine.stop();
    }
    assert!(eventually(SETTLE_WITHIN, || journal.settled()).await);

    let calls = journal.calls.lock().unwrap().clone();
    assert!(
        calls.iter().all(|(_, _, seen)| *seen == Seen::Ran),
        "one machine fired each tick, and ran it: {calls:?}"
    );
    let machines_in_order: Vec<usize> = calls.iter().map(|(_, machine, _)| *machine).collect();
    let switch = machines_in_order.iter().position(|machine| *machine == 1);
    assert!(
        switch.is_some_and(|at| at >= 2 && machines_in_order[at..].iter().all(|m| *m == 1)),
        "machine 0 fired while it led, then only machine 1: {machines_in_order:?}"
    );
}

#[singleton(key = "slow-tick", ttl = "5s", wait = "10s")]
async fn slow_waiting_job() {
    tokio::time::sleep(Duration::from_millis(2_500)).await;
}

#[tokio::test]
async fn a_call_for_a_tick_waits_no_longer_than_the_tick() {
    // Two machines on one store fire every second; the job takes 2.5 s and waits up to 10 s.
    // A call for tick T that waited past T's end could take the lock when T's marker is gone;
    // it gives up when the tick ends instead.
    let calls: Arc<Mutex<Vec<(SystemTime, SystemTime, bool)>>> = Arc::default();
    let mut schedules = Vec::new();
    for _ in 0..2 {
        let runtime = Config::new(["memory://cron-wait-capped"]).build().unwrap();
        let calls = calls.clone();
        schedules.push(
            Schedule::new()
                .runtime(runtime)
                .job(EVERY_SECOND, move || {
                    let calls = calls.clone();
                    async move {
                        let tick = current_tick().unwrap();
                        let ran = slow_waiting_job().await.unwrap().ran();
                        calls.lock().unwrap().push((tick, SystemTime::now(), ran));
                    }
                })
                .start()
                .unwrap(),
        );
    }
    assert!(eventually(Duration::from_secs(8), || calls.lock().unwrap().len() >= 4).await);
    for schedule in &schedules {
        schedule.stop();
    }
    for (tick, returned, ran) in calls.lock().unwrap().iter() {
        let after = returned.duration_since(*tick).unwrap_or_default();
        if !ran {
            assert!(
                after < Duration::from_millis(1_500),
                "a skipped call for a tick returned {after:?} after it"
            );
        }
    }
}

#[tokio::test]
async fn run_returns_when_the_runtime_shuts_down_even_between_distant_ticks() {
    let runtime = Config::new(["memory://cron-run-shutdown"]).build().unwrap();
    let schedule = Schedule::new()
        .runtime(runtime.clone())
        .job("0 0 2 * * *", || async {}); // once a day: no tick comes during the test
    let running = tokio::spawn(schedule.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!running.is_finished());

    runtime.shutdown(Duration::from_secs(1)).await.unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(2), running).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

/// `a_call_for_a_tick_waits_no_longer_than_the_tick` on real nodes, where every attempt meets a
/// split vote that waits a node timeout: node 1 is held by another caller, and node 2 answers
/// slower than the node timeout (110 ms each way through a proxy; the once-a-second check, which
/// allows 300 ms, keeps its connection). `take` caps the wait at the tick's end, and the
/// split-vote retries of each of its attempts end with the tick too (not a tick's length after
/// the attempt's own start), so the call returns within about one vote of the tick's end.
#[tokio::test]
async fn a_call_for_a_tick_that_meets_slow_split_votes_waits_no_longer_than_the_tick() {
    let cluster = Cluster::start(3).unwrap();
    let slow = Proxy::start(format!("127.0.0.1:{}", cluster.port(2)).parse().unwrap()).unwrap();
    slow.set_latency(Duration::from_millis(110));
    let runtime = Config::new([
        cluster.direct_url(0),
        cluster.direct_url(1),
        format!("redis://127.0.0.1:{}", slow.port()),
    ])
    .restart_grace(Duration::ZERO)
    .node_timeout(common::NODE_TIMEOUT)
    .build()
    .unwrap();
    let lease = runtime
        .lock("warm-up", Duration::from_secs(1))
        .await
        .unwrap();
    lease.expect("free").release().await.unwrap();
    let key = "split-tick";
    let mut node_1 = cluster.connection(1).unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("singleton:lock:{key}"))
        .arg("another-caller")
        .query(&mut node_1)
        .unwrap();

    let calls: Arc<Mutex<Vec<(SystemTime, SystemTime, String)>>> = Arc::default();
    let recorded = calls.clone();
    let on = runtime.clone();
    let schedule = Schedule::new()
        .runtime(runtime.clone())
        .job(EVERY_SECOND, move || {
            let (calls, runtime) = (recorded.clone(), on.clone());
            async move {
                let tick = current_tick().unwrap();
                let options = Options::new(Duration::from_secs(5)).wait(Duration::from_secs(10));
                let outcome = runtime.run_with(key, options, async {}, |_| true).await;
                calls
                    .lock()
                    .unwrap()
                    .push((tick, SystemTime::now(), format!("{outcome:?}")));
            }
        })
        .start()
        .unwrap();
    assert!(eventually(Duration::from_secs(8), || calls.lock().unwrap().len() >= 3).await);
    schedule.stop();
    for (tick, returned, outcome) in calls.lock().unwrap().iter() {
        let after = returned.duration_since(*tick).unwrap_or_default();
        // The tick's second, and at most the one vote begun before its end (a node timeout).
        assert!(
            after < Duration::from_secs(1) + common::NODE_TIMEOUT + Duration::from_millis(100),
            "a call for tick {} returned {after:?} after it: {outcome}",
            unix_ms(*tick)
        );
    }
}
