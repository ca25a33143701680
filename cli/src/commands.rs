//! Each command, on a runtime built from the command line's node options.

use std::time::{Duration, SystemTime};

use cluster_singleton::runtime::{Config, LockState, Runtime};
use cluster_singleton::Error;

use crate::output;
use crate::secrets::Secrets;
use crate::{Cli, Command, NodeOptions, EXIT_FAILED, EXIT_NO_QUORUM, EXIT_USAGE};

/// The `max_ttl` this process announces on the nodes. Every runtime announces its own, and the
/// nodes keep the largest for the restart grace of the whole fleet; this one never locks, so it
/// announces the least there is and takes in the fleet's, never raising it.
const ANNOUNCED_MAX_TTL: Duration = Duration::from_millis(1);

/// Runs `cli`'s command and returns the process's exit code. Everything printed goes through
/// `secrets`.
pub async fn run(cli: Cli, secrets: &Secrets) -> u8 {
    let print = |text: &str| print!("{}", secrets.hide(text));
    let fail = |err: &Error| {
        eprintln!("error: {}", secrets.hide(&err.to_string()));
        match err {
            Error::NoQuorum(_) => EXIT_NO_QUORUM,
            _ => EXIT_FAILED,
        }
    };
    let runtime = match build_runtime(&cli.nodes) {
        Ok(runtime) => runtime,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {}", secrets.hide(&message));
            return EXIT_USAGE;
        }
        Err(Failure::Runtime(err)) => return fail(&err),
    };
    match cli.command {
        Command::Status { json } => {
            let health = runtime.health().await;
            let quorum = runtime.quorum();
            if json {
                print(&format!("{:#}\n", output::status_json(&health, quorum)));
            } else {
                print(&output::status_text(&health, quorum));
            }
            if health.iter().filter(|node| node.votes).count() >= quorum {
                0
            } else {
                EXIT_NO_QUORUM
            }
        }
        Command::Inspect { key, slot, json } => {
            let state = match slot {
                Some(slot) => runtime.inspect_slot(&key, slot).await,
                None => runtime.inspect(&key).await,
            };
            match state {
                Ok(state) if json => print(&format!("{:#}\n", output::inspect_json(&state))),
                Ok(state) => print(&output::inspect_text(&state, slot)),
                Err(err) => return fail(&err),
            }
            0
        }
        Command::List { pattern, json } => match runtime.list(&pattern).await {
            Ok(states) if json => {
                print(&format!("{:#}\n", output::list_json(&states)));
                0
            }
            Ok(states) => {
                print(&output::list_text(&states, &pattern));
                0
            }
            Err(err) => fail(&err),
        },
        Command::Unlock { key, force: false } => {
            eprint!(
                "{}",
                secrets.hide(&format!(
                    "refusing to unlock `{key}` without --force.\n\
                     Forcing deletes the lock on every node, whoever holds it. A holder that is \
                     still running its job keeps running, and the next caller on another machine \
                     takes the key and runs beside it: mutual exclusion is broken until the first \
                     one finishes. Force only a key whose holder you know is gone (its machine is \
                     down or the process killed) and whose ttl is too long to wait out; \
                     `cluster-singleton inspect {key}` shows who holds it and for how long.\n"
                ))
            );
            EXIT_USAGE
        }
        Command::Unlock { key, force: true } => match unlock(&runtime, &key).await {
            Ok(text) => {
                print(&text);
                0
            }
            Err(err) => fail(&err),
        },
        Command::Watch {
            key,
            every,
            changes,
        } => watch(&runtime, &key, every, changes, &print).await,
    }
}

/// Why no runtime could be built.
enum Failure {
    /// The command line lacks something clap cannot require (a global option).
    Usage(String),
    /// The configuration is invalid.
    Runtime(Error),
}

fn build_runtime(options: &NodeOptions) -> Result<Runtime, Failure> {
    let urls: Vec<&str> = options
        .urls
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(Failure::Usage(
            "no Redis nodes given: pass `--url redis://HOST:PORT` once per node (the fleet's \
             URLs), or set REDIS_URLS to them, comma-separated"
                .to_owned(),
        ));
    }
    let mut config = Config::new(urls)
        .key_prefix(options.key_prefix.as_str())
        .node_timeout(options.timeout)
        .max_ttl(ANNOUNCED_MAX_TTL);
    if let Some(grace) = options.restart_grace {
        config = config.restart_grace(grace);
    }
    #[cfg(feature = "tls")]
    if let Some(path) = &options.tls_ca_file {
        let pem = std::fs::read(path).map_err(|err| {
            Failure::Usage(format!(
                "cannot read the CA certificate `{}`: {err}",
                path.display()
            ))
        })?;
        config = config.tls_root_certificate(pem);
    }
    config.build().map_err(Failure::Runtime)
}

/// Forces `key` open, and says what was there.
async fn unlock(runtime: &Runtime, key: &str) -> Result<String, Error> {
    let before = runtime.inspect(key).await?;
    let deleted = runtime.force_unlock(key).await?;
    let mut text = format!("deleted `{key}` on {deleted} of {} nodes", before.nodes);
    match before.holder() {
        Some(holder) => text.push_str(&format!(
            "; it was held by {} on {} nodes with {} left. If that holder is still running, it \
             keeps running beside the next one.\n",
            output::holder_shown(holder),
            holder.nodes,
            output::duration(holder.time_left)
        )),
        None if before.copies.is_empty() => text.push_str("; it was not held.\n"),
        None => text.push_str("; it was not held on a quorum, only leftovers.\n"),
    }
    for failure in &before.unanswered {
        text.push_str(&format!(
            "{} did not answer ({}): a copy there, if any, expires with its ttl.\n",
            failure.node, failure.cause
        ));
    }
    Ok(text)
}

/// Prints a line each time `key`'s holder changes; returns after `changes` changes, if given.
async fn watch(
    runtime: &Runtime,
    key: &str,
    every: Duration,
    changes: Option<u64>,
    print: &impl Fn(&str),
) -> u8 {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Seen> = None;
    let mut seen_changes = 0;
    loop {
        ticker.tick().await;
        let (seen, text) = match runtime.inspect(key).await {
            Ok(state) => (Seen::of(&state), output::watch_state(&state)),
            Err(err) => (Seen::Unknown, format!("unknown: {err}")),
        };
        if last.as_ref() == Some(&seen) {
            continue;
        }
        let now = humantime::format_rfc3339_millis(SystemTime::now());
        print(&format!("{now}  {key}: {text}\n"));
        if last.replace(seen).is_some() {
            seen_changes += 1;
            if changes == Some(seen_changes) {
                return 0;
            }
        }
    }
}

/// What `watch` compares from one look to the next: a new lease of the same holder is a change.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Free,
    Held { token: String },
    Unknown,
}

impl Seen {
    fn of(state: &LockState) -> Seen {
        match state.holder() {
            Some(holder) => Seen::Held {
                token: holder.token.clone(),
            },
            None => Seen::Free,
        }
    }
}
