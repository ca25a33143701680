//! The worker processes, seen from the orchestrator: starting them, following their records,
//! killing one that holds a lock, and stopping them all.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::checker::Kill;
use super::records::{monotonic_now, Counts, Nanos, Record, RecordTail};
use super::worker::{WorkerConfig, COUNTS_REQUEST};

/// Pause between looks at the workers' records while waiting for something.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// How many lines at the end of a worker's log go into a failure message.
const LOG_TAIL_LINES: usize = 30;

/// What the orchestrator knows of one running worker.
struct Worker {
    slot: usize,
    child: Child,
    /// Closing it tells the worker to stop.
    stdin: Option<ChildStdin>,
    tail: RecordTail,
    log: PathBuf,
    /// When it last entered a body.
    last_enter: Option<Nanos>,
    /// How many count records it has written.
    counts_written: u64,
    /// Tokens of the bodies it has entered and not yet exited.
    open: HashSet<String>,
}

/// A worker killed on purpose.
pub struct HolderKill {
    pub pid: u32,
    /// Whether its records show a body still open at its death.
    pub was_holding: bool,
}

/// The worker processes of one run. Dropping it kills any that still run.
pub struct Fleet {
    dir: PathBuf,
    /// Each slot's settings; a replacement gets the slot's settings and a fresh seed.
    configs: Vec<WorkerConfig>,
    workers: Vec<Worker>,
    started: usize,
    record_files: Vec<PathBuf>,
    kills: Vec<Kill>,
    /// The latest body entry seen in any record.
    last_enter: Option<Nanos>,
    /// Each worker's latest counts seen, by pid.
    counts: HashMap<u32, Counts>,
    /// One-shot workers: one call per task, then they exit by themselves.
    one_shots: Vec<(Child, PathBuf)>,
}

impl Fleet {
    /// Starts one worker per config, writing records and logs into `dir`.
    pub fn start(dir: &Path, configs: Vec<WorkerConfig>) -> Fleet {
        let mut fleet = Fleet {
            dir: dir.to_owned(),
            configs,
            workers: Vec::new(),
            started: 0,
            record_files: Vec::new(),
            kills: Vec::new(),
            last_enter: None,
            counts: HashMap::new(),
            one_shots: Vec::new(),
        };
        for slot in 0..fleet.configs.len() {
            let worker = fleet.spawn(slot);
            fleet.workers.push(worker);
        }
        fleet
    }

    fn spawn(&mut self, slot: usize) -> Worker {
        let config = self.configs[slot].clone();
        let (child, records, log) = self.launch(slot, config);
        let mut child = child;
        Worker {
            slot,
            stdin: child.stdin.take(),
            child,
            tail: RecordTail::new(records),
            log,
            last_enter: None,
            counts_written: 0,
            open: HashSet::new(),
        }
    }

    /// Starts a one-shot worker with slot `slot`'s settings: a program that makes one call per
    /// task and exits right after, without `shutdown`. Its records join the history.
    pub fn spawn_one_shot(&mut self, slot: usize) -> u32 {
        let mut config = self.configs[slot % self.configs.len()].clone();
        config.one_shot = true;
        let (child, _records, log) = self.launch(slot, config);
        let pid = child.id();
        self.one_shots.push((child, log));
        pid
    }

    /// Starts a worker process with `config`; its child, record file and log.
    fn launch(&mut self, slot: usize, mut config: WorkerConfig) -> (Child, PathBuf, PathBuf) {
        let generation = self.started;
        self.started += 1;
        let name = format!("worker-{slot}-{generation}");
        let records = self.dir.join(format!("{name}.records"));
        let log = self.dir.join(format!("{name}.log"));
        config.records = records.clone();
        // A replacement must not replay its predecessor's choices.
        config.seed = config.seed.wrapping_add((generation as u64) << 32);
        let log_file = File::create(&log).expect("create a worker log");
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([
                "worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("a log handle"))
            .stderr(log_file);
        config.apply(&mut command);
        let child = command.spawn().expect("start a worker process");
        self.record_files.push(records.clone());
        (child, records, log)
    }

    /// Reads what the workers wrote since the last look.
    pub fn poll(&mut self) {
        for worker in &mut self.workers {
            let records = worker
                .tail
                .read_new()
                .unwrap_or_else(|e| panic!("read {}: {e}", worker.tail.path().display()));
            for record in records {
                match record {
                    Record::Enter { at, token, .. } => {
                        self.last_enter = self.last_enter.max(Some(at));
                        worker.last_enter = Some(at);
                        worker.open.insert(token);
                    }
                    Record::Exit { token, .. } => {
                        worker.open.remove(&token);
                    }
                    Record::Counts { pid, counts } => {
                        worker.counts_written += 1;
                        self.counts.insert(pid, counts);
                    }
                    Record::Ready { .. }
                    | Record::Outcome { .. }
                    | Record::Unexpected { .. }
                    | Record::NoQuorum { .. } => {}
                }
            }
        }
    }

    /// Asks every worker for its counts and sums them, once each has answered: the counts as
    /// of this call, give or take the moment a worker takes to answer.
    pub fn counts_now(&mut self, within: Duration) -> Counts {
        // Counts already written but not read yet must not pass for the answer.
        self.poll();
        let asked: Vec<u64> = self
            .workers
            .iter_mut()
            .map(|worker| {
                let stdin = worker.stdin.as_mut().expect("a running worker has a stdin");
                writeln!(stdin, "{COUNTS_REQUEST}").expect("ask a worker for its counts");
                worker.counts_written
            })
            .collect();
        let answered = self.wait_until(within, |fleet| {
            fleet
                .workers
                .iter()
                .zip(&asked)
                .all(|(worker, &asked)| worker.counts_written > asked)
        });
        assert!(
            answered,
            "the workers did not write their counts within {within:?}"
        );
        let mut sum = Counts::default();
        for counts in self.counts.values() {
            sum.add(counts);
        }
        sum
    }

    /// Panics, with its log, if a worker has exited without being asked to.
    pub fn check_alive(&mut self) {
        for worker in &mut self.workers {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!(
                    "worker {} (pid {}) exited by itself ({status}); its log ends:\n{}",
                    worker.slot,
                    worker.child.id(),
                    log_tail(&worker.log)
                );
            }
        }
    }

    /// Waits until every worker has entered a body: each can take locks. Fresh nodes serve out
    /// the restart grace first, and each worker's view of their age may differ by a second
    /// (Redis reports it in whole seconds), so the first worker to lock is not the last. Returns
    /// whether they all did within `within`.
    pub fn wait_until_every_worker_locked(&mut self, within: Duration) -> bool {
        self.wait_until(within, |fleet| {
            fleet
                .workers
                .iter()
                .all(|worker| worker.last_enter.is_some())
        })
    }

    /// Waits until some body enters after `after`; returns when it did.
    pub fn wait_for_a_body(&mut self, after: Nanos, within: Duration) -> Option<Nanos> {
        let entered = |fleet: &Fleet| fleet.last_enter.filter(|&at| at > after);
        if self.wait_until(within, |fleet| entered(fleet).is_some()) {
            entered(self)
        } else {
            None
        }
    }

    /// Polls the records until `condition` holds or `within` has passed; whether it held.
    fn wait_until(&mut self, within: Duration, condition: impl Fn(&Fleet) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            self.poll();
            if condition(self) {
                return true;
            }
            self.check_alive();
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Kills, with SIGKILL, a worker that is inside a body, and starts a replacement in its slot.
    /// If no worker is seen inside a body within `within`, kills one at random all the same.
    pub fn kill_holder(&mut self, rng: &mut fastrand::Rng, within: Duration) -> HolderKill {
        let deadline = Instant::now() + within;
        let index = loop {
            self.poll();
            let holding: Vec<usize> = (0..self.workers.len())
                .filter(|&i| !self.workers[i].open.is_empty())
                .collect();
            if !holding.is_empty() {
                break holding[rng.usize(..holding.len())];
            }
            if Instant::now() >= deadline {
                break rng.usize(..self.workers.len());
            }
            thread::sleep(POLL_EVERY);
        };
        let mut worker = self.workers.remove(index);
        let pid = worker.child.id();
        worker.child.kill().expect("SIGKILL a worker");
        worker.child.wait().expect("reap a killed worker");
        // Reaped: nothing it does can come after this instant.
        let at = monotonic_now();
        self.kills.push(Kill { pid, at });
        // Whatever it wrote up to its death tells whether it died inside a body.
        let records = worker
            .tail
            .read_new()
            .expect("read a killed worker's records");
        for record in records {
            match record {
                Record::Enter { token, .. } => {
                    worker.open.insert(token);
                }
                Record::Exit { token, .. } => {
                    worker.open.remove(&token);
                }
                _ => {}
            }
        }
        let replacement = self.spawn(worker.slot);
        self.workers.insert(index, replacement);
        HolderKill {
            pid,
            was_holding: !worker.open.is_empty(),
        }
    }

    /// Asks every worker to stop (closes its stdin) and waits until all have exited cleanly.
    pub fn stop(&mut self, within: Duration) {
        for worker in &mut self.workers {
            worker.stdin = None;
        }
        let deadline = Instant::now() + within;
        for worker in &mut self.workers {
            let status = loop {
                if let Some(status) = worker.child.try_wait().expect("wait for a worker") {
                    break status;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "worker {} (pid {}) did not stop within {within:?} of being asked; its log ends:\n{}",
                        worker.slot,
                        worker.child.id(),
                        log_tail(&worker.log)
                    );
                }
                thread::sleep(POLL_EVERY);
            };
            assert!(
                status.success(),
                "worker {} (pid {}) failed ({status}); its log ends:\n{}",
                worker.slot,
                worker.child.id(),
                log_tail(&worker.log)
            );
        }
        self.workers.clear();
        for (mut child, log) in std::mem::take(&mut self.one_shots) {
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait for a one-shot worker") {
                    break status;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "a one-shot worker (pid {}) did not exit within {within:?}; its log ends:\n{}",
                        child.id(),
                        log_tail(&log)
                    );
                }
                thread::sleep(POLL_EVERY);
            };
            assert!(
                status.success(),
                "a one-shot worker (pid {}) failed ({status}); its log ends:\n{}",
                child.id(),
                log_tail(&log)
            );
        }
    }

    /// Every record of every worker that ran, file by file.
    pub fn records(&self) -> Vec<Record> {
        self.record_files
            .iter()
            .flat_map(|path| {
                RecordTail::new(path.clone())
                    .read_new()
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            })
            .collect()
    }

    pub fn kills(&self) -> &[Kill] {
        &self.kills
    }

    /// How many worker processes were started, replacements included.
    pub fn started(&self) -> usize {
        self.started
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Only on a failed run: every worker started is stopped.
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        for (child, _) in &mut self.one_shots {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
