//! What the commands print: tables and text for people, JSON for scripts.
//!
//! A lock's token is the release credential of its holder, so only its first 8 hex digits are
//! ever printed, enough to tell two holders apart.

use std::fmt::Write as _;
use std::time::Duration;

use cluster_singleton::runtime::{LockCopy, LockState, NodeHealth};
use cluster_singleton::NodeFailure;
use serde_json::{json, Value};

/// How many characters of a token are shown.
const TOKEN_SHOWN: usize = 8;

/// `duration` as people read it: `850ms`, `9.8s`, `4m 12s`, `2h 5m`.
pub fn duration(duration: Duration) -> String {
    if duration == Duration::MAX {
        return "no expiry".to_owned();
    }
    let (millis, secs) = (duration.as_millis(), duration.as_secs());
    if millis < 1000 {
        format!("{millis}ms")
    } else if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{}h {}m", secs / 3600, secs % 3600 / 60)
    }
}

/// A round trip, to a tenth of a millisecond: loopback answers in tens of microseconds.
fn ping(ping: Duration) -> String {
    format!("{:.2}ms", ping.as_secs_f64() * 1000.0)
}

/// `duration` in milliseconds for JSON; `null` for no expiry.
fn millis(duration: Duration) -> Value {
    if duration == Duration::MAX {
        Value::Null
    } else {
        json!(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The token's first hex digits, when the value is one this crate wrote (`<32 hex> <holder>`);
/// any other value could be another program's secret, and is not shown at all.
fn token_prefix(copy: &LockCopy) -> Option<String> {
    copy.holder_id.as_ref()?;
    Some(copy.token.chars().take(TOKEN_SHOWN).collect())
}

/// The token as shown to people.
fn token_shown(copy: &LockCopy) -> String {
    match token_prefix(copy) {
        Some(prefix) => format!("{prefix}…"),
        None => "(a value cluster-singleton did not write)".to_owned(),
    }
}

/// Who holds a copy, as shown to people.
pub fn holder_shown(copy: &LockCopy) -> &str {
    copy.holder_id
        .as_deref()
        .unwrap_or("? (a value cluster-singleton did not write)")
}

/// `nodes` nodes, with the plural right.
fn nodes(count: usize) -> String {
    match count {
        1 => "1 node".to_owned(),
        n => format!("{n} nodes"),
    }
}

/// `rows` under `header`, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|title| (*title).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `status`'s table, and a line on whether locks work.
pub fn status_text(health: &[NodeHealth], quorum: usize) -> String {
    let rows: Vec<Vec<String>> = health
        .iter()
        .map(|node| {
            let note = match (&node.problem, node.grace_left) {
                (Some(problem), Some(left)) => format!("votes in {}: {problem}", duration(left)),
                (Some(problem), None) => problem.clone(),
                (None, _) => String::new(),
            };
            vec![
                node.node.clone(),
                yes_no(node.reachable),
                node.ping.map(ping).unwrap_or_else(|| "-".into()),
                node.version.clone().unwrap_or_else(|| "-".into()),
                node.run_id
                    .as_deref()
                    .map(|run_id| run_id.chars().take(8).collect())
                    .unwrap_or_else(|| "-".into()),
                yes_no(node.votes),
                note,
            ]
        })
        .collect();
    let mut text = table(
        &["NODE", "UP", "PING", "VERSION", "RUN_ID", "VOTES", "NOTE"],
        &rows,
    );
    let voting = health.iter().filter(|node| node.votes).count();
    let _ = write!(
        text,
        "\n{voting} of {} vote; a lock needs {quorum}: ",
        nodes(health.len())
    );
    let plural = |count: usize| if count == 1 { "" } else { "s" };
    let _ = match voting.checked_sub(quorum) {
        Some(0) => writeln!(text, "locks work, but stop if one more node fails"),
        Some(spare) => writeln!(
            text,
            "locks work, and survive {spare} more node{} failing",
            plural(spare)
        ),
        None => match quorum - voting {
            1 => writeln!(text, "locks FAIL until 1 more node votes"),
            missing => writeln!(text, "locks FAIL until {missing} more nodes vote"),
        },
    };
    text
}

/// `status` as JSON.
pub fn status_json(health: &[NodeHealth], quorum: usize) -> Value {
    let nodes: Vec<Value> = health
        .iter()
        .map(|node| {
            json!({
                "node": node.node,
                "reachable": node.reachable,
                "ping_ms": node.ping.map(|ping| ping.as_secs_f64() * 1000.0),
                "version": node.version,
                "run_id": node.run_id,
                "votes": node.votes,
                "grace_left_ms": node.grace_left.map(millis),
                "problem": node.problem,
            })
        })
        .collect();
    let voting = health.iter().filter(|node| node.votes).count();
    json!({ "nodes": nodes, "voting": voting, "quorum": quorum, "locks_work": voting >= quorum })
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_owned()
}

/// `inspect`'s text: the holder, or free; then leftovers and silent nodes.
pub fn inspect_text(state: &LockState, slot: Option<Duration>) -> String {
    let mut text = match state.holder() {
        Some(holder) => format!("{}: held by {}\n", state.key, holder_shown(holder)),
        None => format!("{}: free\n", state.key),
    };
    let mut field = |name: &str, value: String| {
        let _ = writeln!(text, "  {name:<12}{value}");
    };
    field("redis key", state.redis_key.clone());
    if let Some(holder) = state.holder() {
        field(
            "nodes",
            format!(
                "{} of {} hold it (a lock needs {})",
                holder.nodes, state.nodes, state.quorum
            ),
        );
        field("time left", duration(holder.time_left));
        field("token", token_shown(holder));
    }
    field(
        "fencing",
        match state.fencing_counter {
            Some(counter) => format!("counter {counter}"),
            None => "never fenced".to_owned(),
        },
    );
    if let (Some(done), Some(slot)) = (state.done_this_period, slot) {
        let slot = humantime::format_duration(slot);
        field(
            "this period",
            if done {
                format!("done (slot {slot}): a run of this period succeeded")
            } else {
                format!("not done (slot {slot})")
            },
        );
    }
    let others: Vec<&LockCopy> = state
        .copies
        .iter()
        .filter(|copy| Some(*copy) != state.holder())
        .collect();
    if !others.is_empty() {
        text.push_str(
            "other copies (no quorum: an attempt that lost, or a crashed holder's; they expire):\n",
        );
        for copy in others {
            let _ = writeln!(
                text,
                "  {}  on {}, {} left, token {}",
                holder_shown(copy),
                nodes(copy.nodes),
                duration(copy.time_left),
                token_shown(copy)
            );
        }
    }
    text.push_str(&unanswered_text(&state.unanswered));
    text
}

/// The nodes that gave no answer, and why; empty when all answered.
fn unanswered_text(unanswered: &[NodeFailure]) -> String {
    let mut text = String::new();
    if !unanswered.is_empty() {
        text.push_str("not answered:\n");
        for failure in unanswered {
            let _ = writeln!(text, "  {}: {}", failure.node, failure.cause);
        }
    }
    text
}

/// `inspect` as JSON; one element of `list`'s.
pub fn inspect_json(state: &LockState) -> Value {
    let copy_json = |copy: &LockCopy| {
        json!({
            "holder_id": copy.holder_id,
            "token_prefix": token_prefix(copy),
            "nodes": copy.nodes,
            "time_left_ms": millis(copy.time_left),
        })
    };
    json!({
        "key": state.key,
        "redis_key": state.redis_key,
        "nodes": state.nodes,
        "quorum": state.quorum,
        "held": state.is_held(),
        "holder": state.holder().map(copy_json),
        "copies": state.copies.iter().map(copy_json).collect::<Vec<_>>(),
        "unanswered": state
            .unanswered
            .iter()
            .map(|failure| json!({ "node": failure.node, "cause": failure.cause }))
            .collect::<Vec<_>>(),
        "fencing_counter": state.fencing_counter,
        "done_this_period": state.done_this_period,
    })
}

/// `list`'s table: one row per key with a copy on some node.
pub fn list_text(states: &[LockState], pattern: &str) -> String {
    if states.is_empty() {
        return format!("no lock matching `{pattern}` is held\n");
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|state| match state.holder() {
            Some(holder) => vec![
                state.key.clone(),
                holder_shown(holder).to_owned(),
                format!("{}/{}", holder.nodes, state.nodes),
                duration(holder.time_left),
            ],
            None => {
                let longest = state.copies.iter().map(|copy| copy.time_left).max();
                vec![
                    state.key.clone(),
                    "- (leftovers, no quorum)".to_owned(),
                    format!(
                        "{}/{}",
                        state
                            .copies
                            .iter()
                            .map(|copy| copy.nodes)
                            .max()
                            .unwrap_or(0),
                        state.nodes
                    ),
                    longest.map(duration).unwrap_or_default(),
                ]
            }
        })
        .collect();
    let mut text = table(&["KEY", "HOLDER", "NODES", "TIME LEFT"], &rows);
    let mut silent: Vec<NodeFailure> = Vec::new();
    for failure in states.iter().flat_map(|state| &state.unanswered) {
        if !silent.iter().any(|seen| seen.node == failure.node) {
            silent.push(failure.clone());
        }
    }
    text.push_str(&unanswered_text(&silent));
    text
}

/// `list` as JSON.
pub fn list_json(states: &[LockState]) -> Value {
    Value::Array(states.iter().map(inspect_json).collect())
}

/// How `watch` describes a key's state: the same text for the same holder.
pub fn watch_state(state: &LockState) -> String {
    match state.holder() {
        Some(holder) => format!(
            "held by {} (token {}, on {} of {} nodes, {} left)",
            holder_shown(holder),
            token_shown(holder),
            holder.nodes,
            state.nodes,
            duration(holder.time_left)
        ),
        None => "free".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(9_849)), "9.8s");
        assert_eq!(duration(Duration::from_secs(252)), "4m 12s");
        assert_eq!(duration(Duration::from_secs(7_500)), "2h 5m");
        assert_eq!(duration(Duration::MAX), "no expiry");
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(
            &["KEY", "HOLDER"],
            &[
                vec!["a-long-key".into(), "w-1".into()],
                vec!["b".into(), "w-22".into()],
            ],
        );
        assert_eq!(
            text,
            "KEY         HOLDER\na-long-key  w-1\nb           w-22\n"
        );
    }
}
