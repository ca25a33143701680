//! The history checker: from every body's enter and exit records, find any two bodies of one key
//! whose intervals overlap. That is the promise of mutual exclusion, checked against what ran
//! rather than against what the lock said.

use std::collections::{BTreeMap, HashMap};

use super::records::{Counts, Nanos, Record};

/// One body: the interval in which it ran under a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub key: String,
    pub token: String,
    pub pid: u32,
    pub task: usize,
    pub enter: Nanos,
    /// When the lease stopped being safe to rely on.
    pub valid_until: Nanos,
    /// The exit record's time, or else the instant its worker was killed.
    pub end: Nanos,
    /// The worker was killed inside the body: `end` is the kill instant.
    pub killed: bool,
    /// Its call returned `Ran`: it claims the lease was valid until the body's end.
    pub ran: bool,
}

/// A worker the orchestrator killed with SIGKILL, and when it was certainly dead (after it was
/// reaped), on the records' clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kill {
    pub pid: u32,
    pub at: Nanos,
}

/// Two bodies of one key that ran at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The body that entered first.
    pub first: Body,
    pub second: Body,
}

impl Overlap {
    /// How long both ran at once.
    pub fn length(&self) -> Nanos {
        self.first.end.min(self.second.end) - self.second.enter
    }

    /// Whether the first body's lease was still valid when the second entered: then the lock
    /// broke its promise of mutual exclusion.
    pub fn is_exclusion_failure(&self) -> bool {
        self.second.enter < self.first.valid_until
    }

    /// Whether the overlap breaks a promise: mutual exclusion, or the first call returned `Ran`
    /// although its body outlived its lease. Otherwise the first body outlived its lease and its
    /// call said so (`LeaseLost`), or its worker was killed: what the lock promises for a body
    /// it cannot stop.
    pub fn is_failure(&self) -> bool {
        self.is_exclusion_failure() || self.first.ran
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Bodies found, per key.
    pub bodies_per_key: BTreeMap<String, usize>,
    pub overlaps: Vec<Overlap>,
    /// Bodies with neither an exit record nor a kill of their worker: a record was lost.
    pub unended: Vec<Body>,
    /// Exit records without an enter record: a record was lost.
    pub unmatched_exits: Vec<String>,
    /// Bodies cut short by a kill of their worker.
    pub killed_bodies: usize,
    /// The workers' last counts, summed.
    pub counts: Counts,
    /// Errors that no fault explains, as the workers wrote them.
    pub unexpected: Vec<String>,
    /// Sample no-quorum errors (at most one per worker and tenth of a second), in time order.
    pub no_quorum_samples: Vec<(Nanos, String)>,
    /// Time printed as seconds since this instant.
    origin: Nanos,
}

impl Verdict {
    pub fn bodies(&self) -> usize {
        self.bodies_per_key.values().sum()
    }

    /// Whether the history proves nothing wrong: no overlap that breaks a promise, and every
    /// body accounted for.
    pub fn is_clean(&self) -> bool {
        self.failures().next().is_none()
            && self.unended.is_empty()
            && self.unmatched_exits.is_empty()
    }

    /// The overlaps that break a promise.
    pub fn failures(&self) -> impl Iterator<Item = &Overlap> {
        self.overlaps.iter().filter(|overlap| overlap.is_failure())
    }

    /// The overlaps of a first body that outlived its lease and whose call said so: with the
    /// runtime's check of the lease at the body's end turned off, each would be a `Ran` that
    /// lied.
    pub fn honest_overlaps(&self) -> usize {
        self.overlaps.len() - self.failures().count()
    }

    /// Every problem, worded for a failure message.
    pub fn problems(&self) -> String {
        let mut out = String::new();
        for overlap in self.failures() {
            out += &format!("{}\n", self.describe(overlap));
        }
        for body in &self.unended {
            out += &format!(
                "a body never ended, yet its worker was not killed: {}\n",
                self.show(body)
            );
        }
        for token in &self.unmatched_exits {
            out += &format!("an exit without an enter, token {token}\n");
        }
        out
    }

    fn describe(&self, overlap: &Overlap) -> String {
        let verdict = if overlap.is_exclusion_failure() {
            "the first lease was still valid: mutual exclusion FAILED"
        } else if overlap.first.ran {
            "the first body outlived its lease, yet its call returned Ran: the outcome LIED"
        } else {
            "the first body outlived its lease, and its call said so: no promise broken"
        };
        format!(
            "OVERLAP on key {:?} for {}: {} and {}; {verdict}",
            overlap.first.key,
            millis(overlap.length()),
            self.show(&overlap.first),
            self.show(&overlap.second),
        )
    }

    fn show(&self, body: &Body) -> String {
        let end = if body.killed { "killed at" } else { "exit" };
        format!(
            "[token {} pid {} task {}: enter {}, {end} {}, lease valid until {}]",
            body.token,
            body.pid,
            body.task,
            self.seconds(body.enter),
            self.seconds(body.end),
            self.seconds(body.valid_until),
        )
    }

    /// An instant as seconds since the origin, to the microsecond, with the raw clock value so
    /// that it can be found in the record files.
    fn seconds(&self, at: Nanos) -> String {
        let relative = at as f64 / 1e9 - self.origin as f64 / 1e9;
        format!("{relative:+.6}s (@{at})")
    }
}

fn millis(nanos: Nanos) -> String {
    format!("{:.3} ms", nanos as f64 / 1e6)
}

/// Checks a history: `records` from every worker's file, in file order per worker; `kills` the
/// workers killed, which end their open bodies. Instants in messages are relative to `origin`.
pub fn check(records: impl IntoIterator<Item = Record>, kills: &[Kill], origin: Nanos) -> Verdict {
    let mut verdict = Verdict {
        origin,
        ..Verdict::default()
    };
    let kill_at: HashMap<u32, Nanos> = kills.iter().map(|kill| (kill.pid, kill.at)).collect();
    // Open bodies by token: tokens are 128 random bits, unique to one acquisition.
    let mut open: HashMap<String, Body> = HashMap::new();
    let mut ended: Vec<Body> = Vec::new();
    let mut last_counts: HashMap<u32, Counts> = HashMap::new();
    let mut ran: HashMap<String, bool> = HashMap::new();
    for record in records {
        match record {
            Record::Ready { .. } => {}
            Record::Enter {
                at,
                valid_until,
                pid,
                task,
                key,
                token,
            } => {
                let body = Body {
                    key,
                    token: token.clone(),
                    pid,
                    task,
                    enter: at,
                    valid_until,
                    end: at,
                    killed: false,
                    ran: false,
                };
                open.insert(token, body);
            }
            Record::Exit { at, token, .. } => match open.remove(&token) {
                Some(mut body) => {
                    body.end = at;
                    ended.push(body);
                }
                None => verdict.unmatched_exits.push(token),
            },
            Record::Outcome {
                token, ran: said, ..
            } => {
                ran.insert(token, said);
            }
            // Counts are cumulative: a worker's last line has them all.
            Record::Counts { pid, counts } => {
                last_counts.insert(pid, counts);
            }
            Record::Unexpected { pid, message } => {
                verdict.unexpected.push(format!("pid {pid}: {message}"));
            }
            Record::NoQuorum { at, pid, message } => {
                verdict
                    .no_quorum_samples
                    .push((at, format!("pid {pid}: {message}")));
            }
        }
    }
    for (_, mut body) in open {
        match kill_at.get(&body.pid) {
            Some(&at) => {
                body.end = at;
                body.killed = true;
                verdict.killed_bodies += 1;
                ended.push(body);
            }
            None => verdict.unended.push(body),
        }
    }
    for counts in last_counts.values() {
        verdict.counts.add(counts);
    }

    let mut per_key: BTreeMap<String, Vec<Body>> = BTreeMap::new();
    for mut body in ended {
        body.ran = ran.get(&body.token).copied().unwrap_or(false);
        per_key.entry(body.key.clone()).or_default().push(body);
    }
    for (key, mut bodies) in per_key {
        verdict.bodies_per_key.insert(key, bodies.len());
        verdict.overlaps.extend(overlaps(&mut bodies));
    }
    verdict.unended.sort_by_key(|body| body.enter);
    verdict.no_quorum_samples.sort();
    verdict
}

/// Every pair of `bodies` (all of one key) whose intervals overlap. Touching intervals (one
/// exits at the very nanosecond the other enters) do not overlap.
fn overlaps(bodies: &mut [Body]) -> Vec<Overlap> {
    bodies.sort_by_key(|body| (body.enter, body.end));
    let mut found = Vec::new();
    // Bodies entered so far that may still be running at the next enter.
    let mut running: Vec<&Body> = Vec::new();
    for body in bodies.iter() {
        running.retain(|earlier| earlier.end > body.enter);
        for earlier in &running {
            found.push(Overlap {
                first: (*earlier).clone(),
                second: body.clone(),
            });
        }
        running.push(body);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn enter(pid: u32, key: &str, token: &str, at: Nanos) -> Record {
        Record::Enter {
            at,
            valid_until: at + 2 * SECOND,
            pid,
            task: 0,
            key: key.into(),
            token: token.into(),
        }
    }

    fn exit(pid: u32, key: &str, token: &str, at: Nanos) -> Record {
        Record::Exit {
            at,
            pid,
            key: key.into(),
            token: token.into(),
        }
    }

    #[test]
    fn back_to_back_bodies_are_clean() {
        let verdict = check(
            [
                enter(1, "k", "a", 10),
                exit(1, "k", "a", 20),
                enter(2, "k", "b", 20),
                exit(2, "k", "b", 30),
                // Another key may run at the same time.
                enter(2, "j", "c", 15),
                exit(2, "j", "c", 25),
            ],
            &[],
            0,
        );
        assert!(verdict.is_clean(), "{}", verdict.problems());
        assert_eq!(verdict.bodies(), 3);
    }

    #[test]
    fn an_overlap_is_found_and_described_precisely() {
        let verdict = check(
            [
                enter(1, "k", "a", 10 * SECOND),
                enter(2, "k", "b", 11 * SECOND),
                exit(2, "k", "b", 12 * SECOND),
                exit(1, "k", "a", 13 * SECOND),
            ],
            &[],
            10 * SECOND,
        );
        assert_eq!(verdict.overlaps.len(), 1);
        let overlap = &verdict.overlaps[0];
        assert_eq!(
            (overlap.first.token.as_str(), overlap.second.token.as_str()),
            ("a", "b")
        );
        assert_eq!(overlap.length(), SECOND);
        assert!(overlap.is_exclusion_failure());
        let problems = verdict.problems();
        for needle in [
            "key \"k\"",
            "token a pid 1",
            "token b pid 2",
            "enter +1.000000s",
            "1000.000 ms",
            "FAILED",
        ] {
            assert!(problems.contains(needle), "{needle:?} in {problems}");
        }
    }

    #[test]
    fn every_pair_is_reported_when_three_overlap() {
        let verdict = check(
            [
                enter(1, "k", "a", 10),
                enter(2, "k", "b", 11),
                enter(3, "k", "c", 12),
                exit(1, "k", "a", 20),
                exit(2, "k", "b", 20),
                exit(3, "k", "c", 20),
            ],
            &[],
            0,
        );
        assert_eq!(verdict.overlaps.len(), 3);
    }

    #[test]
    fn a_killed_worker_ends_its_body_at_the_kill() {
        let records = [
            enter(1, "k", "a", 10),
            enter(2, "k", "b", 30),
            exit(2, "k", "b", 40),
        ];
        let before = check(records.clone(), &[Kill { pid: 1, at: 20 }], 0);
        assert!(before.is_clean(), "{}", before.problems());
        assert_eq!(before.killed_bodies, 1);

        let after = check(records, &[Kill { pid: 1, at: 35 }], 0);
        assert_eq!(after.overlaps.len(), 1);
        assert!(after.overlaps[0].first.killed);
    }

    #[test]
    fn a_body_that_never_ended_is_a_problem() {
        let verdict = check([enter(1, "k", "a", 10)], &[], 0);
        assert!(!verdict.is_clean());
        assert_eq!(verdict.unended.len(), 1);
        assert!(verdict.problems().contains("never ended"));
    }

    #[test]
    fn an_overlap_after_the_lease_ran_out_is_a_failure_only_if_the_call_said_ran() {
        let mut long = enter(1, "k", "a", 0);
        if let Record::Enter { valid_until, .. } = &mut long {
            *valid_until = 5;
        }
        let history = |said_ran: bool| {
            [
                long.clone(),
                enter(2, "k", "b", 7),
                exit(1, "k", "a", 9),
                Record::Outcome {
                    pid: 1,
                    token: "a".into(),
                    ran: said_ran,
                },
                exit(2, "k", "b", 10),
            ]
        };
        let honest = check(history(false), &[], 0);
        assert_eq!(honest.overlaps.len(), 1);
        assert!(!honest.overlaps[0].is_exclusion_failure());
        assert!(honest.is_clean(), "{}", honest.problems());
        assert_eq!(honest.honest_overlaps(), 1);

        let lied = check(history(true), &[], 0);
        assert!(!lied.is_clean());
        assert!(lied.problems().contains("LIED"), "{}", lied.problems());
    }

    #[test]
    fn the_last_counts_of_each_worker_are_summed() {
        let counts = |pid, acquired| Record::Counts {
            pid,
            counts: Counts {
                acquired,
                ..Counts::default()
            },
        };
        let verdict = check([counts(1, 1), counts(2, 7), counts(1, 5)], &[], 0);
        assert_eq!(verdict.counts.acquired, 12);
    }
}
