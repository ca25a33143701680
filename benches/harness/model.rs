//! What is measured (rows, contenders) and what each measurement yields (figures), with the
//! medians and paired ratios that the report prints.

use std::collections::BTreeMap;
use std::time::Duration;

use super::drive::Sample;

/// How the tasks of a row use their keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// Each task locks and releases a key of its own, again and again: lock+release cycles.
    Distinct,
    /// Every task tries one key that another machine holds: busy attempts.
    Contended,
    /// Distinct keys, with the last node frozen (SIGSTOP) for the whole window.
    Frozen,
    /// `run_with` with an empty body, renewal on against off (distinct keys).
    Renewal,
}

/// One line of the report, measured for each of its contenders in every repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub shape: Shape,
    pub nodes: usize,
    pub tasks: usize,
}

impl Row {
    /// What a row of this shape counts per second.
    pub fn counts_attempts(&self) -> bool {
        self.shape == Shape::Contended
    }

    /// The healthy row that a frozen row is compared with.
    pub fn healthy(&self) -> Row {
        Row {
            shape: Shape::Distinct,
            ..*self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// Raw redis-rs: `SET NX PX` then `EVALSHA` on every node at once (see `floor.rs`).
    Floor,
    /// `runtime.lock(key, ttl)` then `lease.release()`.
    Runtime,
    /// A `#[singleton]` function with an empty body, inside `runtime.scope`.
    Attribute,
    /// rslock, one attempt per lock, in a process of its own.
    Rslock,
    /// `runtime.run_with(key, Options::new(ttl).renew(false), async {}, |_| true)`.
    RenewOff,
    /// The same with renewal on (the default).
    RenewOn,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Floor => "floor (raw redis-rs)",
            Contender::Runtime => "runtime API",
            Contender::Attribute => "`#[singleton]`",
            Contender::Rslock => "rslock",
            Contender::RenewOff => "`run_with`, renew off",
            Contender::RenewOn => "`run_with`, renew on",
        }
    }

    /// A short name, for keys and progress lines.
    pub fn slug(self) -> &'static str {
        match self {
            Contender::Floor => "floor",
            Contender::Runtime => "runtime",
            Contender::Attribute => "attribute",
            Contender::Rslock => "rslock",
            Contender::RenewOff => "renew-off",
            Contender::RenewOn => "renew-on",
        }
    }
}

/// What one measurement of one contender in one row gave.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Lock+release cycles per second; attempts per second in the contended row.
    pub rate: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Fewest and most TCP connections of the contender's process to one node, over the nodes
    /// that could be asked (a frozen one cannot).
    pub connections: Option<(usize, usize)>,
    /// Lock commands (`SET`, `EVALSHA`, ...) the nodes ran per attempt, over the same nodes.
    pub commands_per_attempt: Option<f64>,
    /// Process CPU time per attempt (the contender's process: the harness's, or rslock's own).
    pub cpu_per_attempt: Option<Duration>,
    pub switches_per_attempt: Option<f64>,
    /// How busy the cluster-singleton runtime's own thread was, as a share of the window (`None`
    /// for the contenders that do not use it).
    pub engine_busy: Option<f64>,
    pub failed: u64,
}

impl Figures {
    pub fn new(
        row: &Row,
        sample: &Sample,
        connections: Option<(usize, usize)>,
        commands: Option<u64>,
    ) -> Figures {
        let attempts = sample.attempts();
        let counted = if row.counts_attempts() {
            attempts
        } else {
            sample.locked
        };
        let per_attempt = |total: f64| (attempts > 0).then(|| total / attempts as f64);
        let all_attempts = attempts + sample.warm_up_attempts;
        Figures {
            rate: sample.per_second(counted),
            p50: sample.latency(0.50),
            p99: sample.latency(0.99),
            connections,
            commands_per_attempt: commands
                .filter(|_| all_attempts > 0)
                .map(|commands| commands as f64 / all_attempts as f64),
            cpu_per_attempt: per_attempt(sample.cpu.as_secs_f64()).map(Duration::from_secs_f64),
            switches_per_attempt: per_attempt(sample.context_switches as f64),
            engine_busy: (!sample.engine_cpu.is_zero())
                .then(|| sample.engine_cpu.as_secs_f64() / sample.elapsed.as_secs_f64()),
            failed: sample.failed,
        }
    }
}

/// Every measurement, by row and contender, one entry per repetition in order.
#[derive(Default)]
pub struct Results {
    pub by_row: BTreeMap<(Row, Contender), Vec<Figures>>,
}

impl Results {
    pub fn add(&mut self, row: Row, contender: Contender, figures: Figures) {
        self.by_row
            .entry((row, contender))
            .or_default()
            .push(figures);
    }

    pub fn get(&self, row: Row, contender: Contender) -> Option<&[Figures]> {
        self.by_row.get(&(row, contender)).map(Vec::as_slice)
    }

    /// The median over repetitions of one figure.
    pub fn median(
        &self,
        row: Row,
        contender: Contender,
        figure: impl Fn(&Figures) -> Option<f64>,
    ) -> Option<f64> {
        median(
            self.get(row, contender)?
                .iter()
                .filter_map(figure)
                .collect(),
        )
    }

    /// The median over repetitions of `figure(a) / figure(b)`, pairing each repetition's
    /// measurements: the two were taken within seconds of each other, so the ratio is steadier
    /// than the ratio of the medians on a machine whose speed drifts.
    pub fn ratio(
        &self,
        (row_a, a): (Row, Contender),
        (row_b, b): (Row, Contender),
        figure: impl Fn(&Figures) -> Option<f64>,
    ) -> Option<f64> {
        let (a, b) = (self.get(row_a, a)?, self.get(row_b, b)?);
        median(
            a.iter()
                .zip(b)
                .filter_map(|(a, b)| Some(figure(a)? / figure(b)?))
                .filter(|ratio| ratio.is_finite())
                .collect(),
        )
    }

    /// Fewest and most connections seen in any repetition.
    pub fn connections(&self, row: Row, contender: Contender) -> Option<(usize, usize)> {
        let seen = self
            .get(row, contender)?
            .iter()
            .filter_map(|f| f.connections);
        seen.reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
    }

    /// Attempts that failed, in all repetitions.
    pub fn failed(&self, row: Row, contender: Contender) -> u64 {
        self.get(row, contender)
            .map_or(0, |all| all.iter().map(|f| f.failed).sum())
    }

    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.by_row.keys().map(|(row, _)| *row).collect();
        rows.dedup();
        rows
    }
}

pub fn rate(f: &Figures) -> Option<f64> {
    Some(f.rate)
}

pub fn p50(f: &Figures) -> Option<f64> {
    f.p50.map(|d| d.as_secs_f64())
}

pub fn p99(f: &Figures) -> Option<f64> {
    f.p99.map(|d| d.as_secs_f64())
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}
