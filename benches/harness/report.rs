//! The Markdown the harness prints: the figures, the renewal comparison, the memory row, and the
//! issue's targets with a verdict each.

use std::fmt::Write as _;

use super::model::{p50, p99, rate, Contender, Figures, Results, Row, Shape};
use super::scale::{Burst, FloorHeld, Held};

/// The concurrency of the latency targets: one task, so that latency is not queueing.
const LATENCY_TASKS: usize = 1;
/// The concurrency of the throughput targets.
const THROUGHPUT_TASKS: usize = 64;
/// Node counts where the crate must beat rslock (with one node Redlock is a plain lock).
const BEAT_RSLOCK_AT: [usize; 2] = [3, 5];

/// The targets (issue 6, item 2).
const P50_OVER_FLOOR: f64 = 1.10;
const RATE_OF_FLOOR: f64 = 0.90;
const RATE_OF_RSLOCK: f64 = 1.10;
const BUSY_RATE_OF_FLOOR: f64 = 0.90;
const FROZEN_P99_OVER_HEALTHY: f64 = 2.0;
const FROZEN_RATE_OF_HEALTHY: f64 = 0.80;
const RENEWAL_COST: f64 = 1.05;
const ATTRIBUTE_COST: f64 = 1.02;
const MEMORY_GROWTH: f64 = 0.05;

const MICROS_PER_SECOND: f64 = 1e6;
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// The memory row: resident size after warming up, then at checkpoints.
pub struct Memory {
    pub nodes: usize,
    pub tasks: usize,
    pub warm_up_cycles: u64,
    pub warm: u64,
    /// (cycles after the warm-up, resident bytes).
    pub checkpoints: Vec<(u64, u64)>,
    pub failed: u64,
}

impl Memory {
    fn growth(&self) -> Option<f64> {
        let (_, last) = self.checkpoints.last()?;
        Some(*last as f64 / self.warm as f64 - 1.0)
    }
}

/// The main table: one line per row and contender.
pub fn figures(results: &Results) -> String {
    let mut out = String::new();
    out.push_str(
        "| nodes | tasks | keys | contender | ops/s | ×floor | p50 µs | ×floor | p99 µs | ×floor | conns/node | cmds/op | CPU µs/op | ctx sw/op | engine busy | errors |\n",
    );
    out.push_str(
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut rows: Vec<Row> = results
        .rows()
        .into_iter()
        .filter(|row| row.shape != Shape::Renewal)
        .collect();
    rows.sort_by_key(|row| (row.nodes, row.shape, row.tasks));
    for row in rows {
        let keys = match row.shape {
            Shape::Distinct => "own key per task",
            Shape::Contended => "one key, held elsewhere",
            Shape::Frozen => "own key per task, 1 node frozen",
            Shape::Renewal => unreachable!("renewal rows have a table of their own"),
        };
        for contender in [
            Contender::Floor,
            Contender::Runtime,
            Contender::Attribute,
            Contender::Rslock,
        ] {
            if results.get(row, contender).is_none() {
                continue;
            }
            let here = (row, contender);
            let floor = (row, Contender::Floor);
            let ratio = |figure: fn(&Figures) -> Option<f64>| {
                if contender == Contender::Floor {
                    "—".to_owned()
                } else {
                    times(results.ratio(here, floor, figure))
                }
            };
            let _ = writeln!(
                out,
                "| {} | {} | {keys} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.nodes,
                row.tasks,
                contender.label(),
                per_second(results.median(row, contender, rate)),
                ratio(rate),
                micros(results.median(row, contender, p50)),
                ratio(p50),
                micros(results.median(row, contender, p99)),
                ratio(p99),
                span(results.connections(row, contender)),
                decimal(results.median(row, contender, |f| f.commands_per_attempt)),
                micros(results.median(row, contender, |f| {
                    f.cpu_per_attempt.map(|d| d.as_secs_f64())
                })),
                decimal(results.median(row, contender, |f| f.switches_per_attempt)),
                percent(results.median(row, contender, |f| f.engine_busy)),
                results.failed(row, contender),
            );
        }
    }
    out
}

/// Renewal on against off, for an empty body.
pub fn renewal(results: &Results) -> String {
    let rows: Vec<Row> = results
        .rows()
        .into_iter()
        .filter(|row| row.shape == Shape::Renewal)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    out.push_str("| nodes | tasks | cycles/s, renew off | cycles/s, renew on | off/on | p50 µs, off | p50 µs, on | on/off | p99 µs, off | p99 µs, on | on/off |\n");
    out.push_str(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let (off, on) = ((row, Contender::RenewOff), (row, Contender::RenewOn));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.nodes,
            row.tasks,
            per_second(results.median(row, Contender::RenewOff, rate)),
            per_second(results.median(row, Contender::RenewOn, rate)),
            times(results.ratio(off, on, rate)),
            micros(results.median(row, Contender::RenewOff, p50)),
            micros(results.median(row, Contender::RenewOn, p50)),
            times(results.ratio(on, off, p50)),
            micros(results.median(row, Contender::RenewOff, p99)),
            micros(results.median(row, Contender::RenewOn, p99)),
            times(results.ratio(on, off, p99)),
        );
    }
    out
}

pub fn memory(memory: &Memory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`#[singleton]` cycles on {} nodes with {} tasks, after {} warm-up cycles ({} failed).\n",
        memory.nodes, memory.tasks, memory.warm_up_cycles, memory.failed
    );
    out.push_str("| cycles after warm-up | resident MiB | vs warm-up |\n| ---: | ---: | ---: |\n");
    let _ = writeln!(out, "| 0 | {:.1} | — |", memory.warm as f64 / BYTES_PER_MIB);
    for (cycles, bytes) in &memory.checkpoints {
        let _ = writeln!(
            out,
            "| {cycles} | {:.1} | {:+.1} % |",
            *bytes as f64 / BYTES_PER_MIB,
            (*bytes as f64 / memory.warm as f64 - 1.0) * 100.0
        );
    }
    out
}

/// The hold row: one line per number of leases held at once.
pub fn held(held: &[Held]) -> String {
    let mut out = String::new();
    out.push_str("| leases | CPU % of one core | memory per lease | allocated per lease | node commands per lease per second | lost | errors |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for row in held {
        let leases = row.leases as f64;
        let seconds = row.window.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {:.1} % | {} | {} | {:.2} | {} | {} |",
            per_second(Some(leases)),
            row.cpu.as_secs_f64() / seconds * 100.0,
            bytes(row.resident_growth as f64 / leases),
            row.allocated_growth
                .map_or("—".to_string(), |grown| bytes(grown as f64 / leases)),
            row.commands as f64 / leases / seconds,
            row.lost,
            row.errors,
        );
    }
    // A row whose leases were not all held through the window measured fewer than it says.
    for row in held {
        let alive = row.holding as u64 - row.lost_before_window.min(row.holding as u64);
        if alive < row.leases as u64 {
            let _ = writeln!(
                out,
                "\n{}: {} of the leases held when the window began ({} never taken, {} lost \
                 before the window), {} lost during it.",
                per_second(Some(row.leases as f64)),
                per_second(Some(alive as f64)),
                row.leases - row.holding,
                row.lost_before_window,
                row.lost - row.lost_before_window,
            );
        }
        if let Some(error) = &row.first_error {
            let _ = writeln!(out, "The first call that failed: {error}");
        }
    }
    out
}

/// The hold row against its floor, the same numbers of leases, measured one after the other.
pub fn held_against_floor(held: &[Held], floors: &[FloorHeld]) -> String {
    let mut out = String::new();
    out.push_str("| leases | CPU % of one core: the crate | the floor | ×floor | node commands per lease per second: the crate | the floor | not renewed by the floor |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (row, floor) in held.iter().zip(floors) {
        let ours = row.cpu.as_secs_f64() / row.window.as_secs_f64();
        let least = floor.cpu.as_secs_f64() / floor.window.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {:.2} % | {:.2} % | {:.2} | {:.2} | {:.2} | {} |",
            per_second(Some(row.leases as f64)),
            ours * 100.0,
            least * 100.0,
            ours / least,
            row.commands as f64 / row.leases as f64 / row.window.as_secs_f64(),
            floor.commands as f64 / floor.leases as f64 / floor.window.as_secs_f64(),
            floor.not_renewed,
        );
    }
    out
}

/// The burst row's one line.
pub fn burst(burst: &Burst) -> String {
    let mut out = String::new();
    out.push_str("| calls at once | ran | skipped | no quorum | failed otherwise | elapsed |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {:.2} s |",
        per_second(Some(burst.calls as f64)),
        burst.ran,
        burst.skipped,
        burst.no_quorum,
        burst.failed,
        burst.elapsed.as_secs_f64(),
    );
    if !burst.node_failures.is_empty() {
        let kinds: Vec<String> = burst
            .node_failures
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let _ = writeln!(
            out,
            "\nWhy nodes gave no vote, over every no-quorum call (node failures by `FailureKind`): {}.",
            kinds.join(", ")
        );
    }
    out
}

/// One target of the issue, where it applies, what was measured, and whether it was met.
struct Check {
    target: String,
    place: String,
    measured: Option<f64>,
    limit: f64,
    at_most: bool,
}

impl Check {
    fn verdict(&self) -> String {
        let Some(value) = self.measured else {
            return "not measured".to_owned();
        };
        let met = if self.at_most {
            value <= self.limit
        } else {
            value >= self.limit
        };
        if met {
            "met".to_owned()
        } else if self.at_most {
            format!(
                "**missed**: {:.0} % over",
                (value / self.limit - 1.0) * 100.0
            )
        } else {
            format!(
                "**missed**: {:.0} % short",
                (1.0 - value / self.limit) * 100.0
            )
        }
    }
}

/// The targets, each with a verdict.
pub fn targets(results: &Results, memory: Option<&Memory>) -> String {
    let mut checks = Vec::new();
    let rows = results.rows();
    let distinct = |nodes: usize, tasks: usize| Row {
        shape: Shape::Distinct,
        nodes,
        tasks,
    };
    let node_counts: Vec<usize> = {
        let mut counts: Vec<usize> = rows.iter().map(|row| row.nodes).collect();
        counts.dedup();
        counts.sort_unstable();
        counts.dedup();
        counts
    };
    let runtime = Contender::Runtime;

    for &nodes in &node_counts {
        let row = distinct(nodes, LATENCY_TASKS);
        for contender in [Contender::Runtime, Contender::Attribute] {
            checks.push(Check {
                target: format!("p50 at concurrency 1, {}", contender.label()),
                place: format!("{nodes} node(s)"),
                measured: results.ratio((row, contender), (row, Contender::Floor), p50),
                limit: P50_OVER_FLOOR,
                at_most: true,
            });
        }
    }
    for &nodes in &node_counts {
        let row = distinct(nodes, THROUGHPUT_TASKS);
        checks.push(Check {
            target: "throughput at concurrency 64, runtime API / floor".to_owned(),
            place: format!("{nodes} node(s)"),
            measured: results.ratio((row, runtime), (row, Contender::Floor), rate),
            limit: RATE_OF_FLOOR,
            at_most: false,
        });
        if BEAT_RSLOCK_AT.contains(&nodes) {
            checks.push(Check {
                target: "throughput at concurrency 64, runtime API / rslock".to_owned(),
                place: format!("{nodes} nodes"),
                measured: results.ratio((row, runtime), (row, Contender::Rslock), rate),
                limit: RATE_OF_RSLOCK,
                at_most: false,
            });
        }
    }
    for row in rows.iter().filter(|row| row.shape == Shape::Contended) {
        checks.push(Check {
            target: format!(
                "busy attempts/s, {} tasks on one key, runtime API / raw `SET NX` loop",
                row.tasks
            ),
            place: format!("{} node(s)", row.nodes),
            measured: results.ratio((*row, runtime), (*row, Contender::Floor), rate),
            limit: BUSY_RATE_OF_FLOOR,
            at_most: false,
        });
        checks.push(Check {
            target: "Redis commands per busy attempt, runtime API / raw `SET NX` loop (1.00: no release round)".to_owned(),
            place: format!("{} node(s)", row.nodes),
            measured: results.ratio((*row, runtime), (*row, Contender::Floor), |f| {
                f.commands_per_attempt
            }),
            limit: 1.0,
            at_most: true,
        });
    }
    for row in rows.iter().filter(|row| row.shape == Shape::Frozen) {
        let healthy = row.healthy();
        checks.push(Check {
            target: "one node of five frozen: p99, runtime API, frozen / healthy".to_owned(),
            place: format!("{} tasks", row.tasks),
            measured: results.ratio((*row, runtime), (healthy, runtime), p99),
            limit: FROZEN_P99_OVER_HEALTHY,
            at_most: true,
        });
        checks.push(Check {
            target: "one node of five frozen: throughput, runtime API, frozen / healthy".to_owned(),
            place: format!("{} tasks", row.tasks),
            measured: results.ratio((*row, runtime), (healthy, runtime), rate),
            limit: FROZEN_RATE_OF_HEALTHY,
            at_most: false,
        });
    }
    for row in rows.iter().filter(|row| row.shape == Shape::Renewal) {
        let (off, on) = ((*row, Contender::RenewOff), (*row, Contender::RenewOn));
        checks.push(Check {
            target: "renewal on / off, empty body: p50".to_owned(),
            place: format!("{} nodes, {} tasks", row.nodes, row.tasks),
            measured: results.ratio(on, off, p50),
            limit: RENEWAL_COST,
            at_most: true,
        });
        checks.push(Check {
            target: "renewal on / off, empty body: time per cycle (off/on cycles/s)".to_owned(),
            place: format!("{} nodes, {} tasks", row.nodes, row.tasks),
            measured: results.ratio(off, on, rate),
            limit: RENEWAL_COST,
            at_most: true,
        });
    }
    for &nodes in &node_counts {
        let row = distinct(nodes, LATENCY_TASKS);
        checks.push(Check {
            target: "`#[singleton]` / runtime API: p50 at concurrency 1".to_owned(),
            place: format!("{nodes} node(s)"),
            measured: results.ratio((row, Contender::Attribute), (row, runtime), p50),
            limit: ATTRIBUTE_COST,
            at_most: true,
        });
        let row = distinct(nodes, THROUGHPUT_TASKS);
        checks.push(Check {
            target: "`#[singleton]` / runtime API: time per cycle at concurrency 64".to_owned(),
            place: format!("{nodes} node(s)"),
            measured: results.ratio((row, runtime), (row, Contender::Attribute), rate),
            limit: ATTRIBUTE_COST,
            at_most: true,
        });
    }
    let connections = rows
        .iter()
        .flat_map(|row| {
            [Contender::Runtime, Contender::Attribute, Contender::RenewOn]
                .map(|contender| results.connections(*row, contender))
        })
        .flatten()
        .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)));
    if let Some(memory) = memory {
        checks.push(Check {
            target: format!(
                "resident size after {} cycles / after warm-up",
                memory.checkpoints.last().map_or(0, |(cycles, _)| *cycles)
            ),
            place: format!("{} nodes, {} tasks", memory.nodes, memory.tasks),
            measured: memory.growth().map(|growth| 1.0 + growth),
            limit: 1.0 + MEMORY_GROWTH,
            at_most: true,
        });
    }

    let mut out = String::new();
    out.push_str(
        "| target | where | measured | limit | verdict |\n| --- | --- | ---: | ---: | --- |\n",
    );
    for check in &checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} {:.2} | {} |",
            check.target,
            check.place,
            times(check.measured),
            if check.at_most { "≤" } else { "≥" },
            check.limit,
            check.verdict()
        );
    }
    if let Some((fewest, most)) = connections {
        let verdict = if (fewest, most) == (1, 1) {
            "met"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            out,
            "| TCP connections per node, this crate, any row and concurrency | every node that could be asked | {} | = 1 | {verdict} |",
            span(Some((fewest, most)))
        );
    }
    out
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

fn micros(seconds: Option<f64>) -> String {
    match seconds.map(|s| s * MICROS_PER_SECOND) {
        None => "—".to_owned(),
        Some(us) if us < 100.0 => format!("{us:.1}"),
        Some(us) => format!("{us:.0}"),
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "—".to_owned(), |share| format!("{:.0} %", share * 100.0))
}

/// A size in bytes, in KiB from 10 KiB on.
fn bytes(value: f64) -> String {
    if value.abs() < 10.0 * 1024.0 {
        format!("{value:.0} B")
    } else {
        format!("{:.1} KiB", value / 1024.0)
    }
}

fn decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"))
}

fn per_second(value: Option<f64>) -> String {
    let Some(value) = value else {
        return "—".to_owned();
    };
    // Thousands separated by a thin space, so that 12 345 reads at a glance.
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(digit);
    }
    out
}

fn span(range: Option<(usize, usize)>) -> String {
    match range {
        None => "—".to_owned(),
        Some((lo, hi)) if lo == hi => lo.to_string(),
        Some((lo, hi)) => format!("{lo}–{hi}"),
    }
}
