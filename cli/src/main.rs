//! `cluster-singleton`: the operator's command for the locks of
//! [cluster-singleton](https://crates.io/crates/cluster-singleton).
//!
//! It reads the same Redis nodes as the fleet, with the fleet's URLs and key prefix: who holds a
//! key and for how long (`inspect`), which keys are held (`list`), each node's health
//! (`status`), a key's holders as they change (`watch`), and, when a holder is known to be gone,
//! the forced unlock (`unlock --force`). It never takes a lock.
//!
//! ```text
//! cargo install cluster-singleton-cli
//! export REDIS_URLS=redis://10.0.0.1:6379,redis://10.0.0.2:6379,redis://10.0.0.3:6379
//! cluster-singleton status
//! cluster-singleton inspect daily-email
//! ```
//!
//! Exit codes: 0 done; 1 failed (the message says why); 2 a usage error, or `unlock` without
//! `--force`; 3 fewer than a quorum of nodes vote (`status`) or answer (the other commands).

mod commands;
mod output;
mod secrets;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::secrets::Secrets;

/// Exit code of a command that could not do its work (an invalid URL, a node refusing).
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a command line clap rejects, and of `unlock` without `--force`.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when fewer than a quorum of nodes vote (`status`) or answer (the other commands):
/// the fleet's locks fail until more nodes are back.
pub const EXIT_NO_QUORUM: u8 = 3;

/// Look into the locks of cluster-singleton on its Redis nodes: who holds a key, which keys are
/// held, the nodes' health; and unlock a key whose holder is gone.
#[derive(Debug, Parser)]
#[command(name = "cluster-singleton", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 done; 1 failed; 2 usage error (or `unlock` without \
                        `--force`); 3 fewer than a quorum of nodes vote or answer."
)]
pub struct Cli {
    /// Where the nodes are and how the fleet names its keys.
    #[command(flatten)]
    pub nodes: NodeOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The settings that must match the fleet's: the same nodes, in any order, and the same prefix.
#[derive(Debug, Args)]
pub struct NodeOptions {
    /// A Redis node's URL, as the fleet's `runtime::init` gets it (`redis://HOST:PORT`, with
    /// `:PASSWORD@` before the host when the node needs one); once per node, or comma-separated
    #[arg(
        long = "url",
        value_name = "URL",
        env = "REDIS_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub urls: Vec<String>,

    /// The fleet's `Config::key_prefix`
    #[arg(long, value_name = "PREFIX", default_value = cluster_singleton::runtime::DEFAULT_KEY_PREFIX, global = true)]
    pub key_prefix: String,

    /// How long one node may take to answer (`250ms`, `1s`)
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// The fleet's `Config::restart_grace`, when it sets one longer than its `max_ttl`; by
    /// default the grace the fleet announces on the nodes (its largest `max_ttl`). Only
    /// `status` uses it, to tell whether a young node's vote counts
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub restart_grace: Option<Duration>,

    /// The PEM file of a private CA that signed the `rediss://` nodes' certificates
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Each node's health: up, ping, Redis version, run id, whether its vote counts; exits with
    /// 3 when fewer than a quorum of nodes vote
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Who holds KEY (as the job names it: `daily-email`), on how many nodes, for how long
    Inspect {
        /// The lock's key, without the prefix
        key: String,
        /// The job's `slot`: also tell whether a run of the current period succeeded
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        slot: Option<Duration>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// The keys held now whose name matches PATTERN, a Redis glob (`invoice:*`); found with
    /// SCAN, never KEYS
    List {
        /// Which keys, as jobs name them
        #[arg(default_value = "*")]
        pattern: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY's lock on every node, whoever holds it; refused without --force
    Unlock {
        /// The lock's key, without the prefix
        key: String,
        /// Break the lock even though a holder may still be running its job
        #[arg(long)]
        force: bool,
    },
    /// Print a line each time KEY's holder changes (free, held by one, by another), until
    /// Ctrl-C
    Watch {
        /// The lock's key, without the prefix
        key: String,
        /// How often to look (a lease shorter than this may pass unseen)
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
        every: Duration,
        /// Exit after this many changes (the first line, the state at start, is not one)
        #[arg(long, value_name = "N")]
        changes: Option<u64>,
    },
}

/// A duration as the attribute takes it: `250ms`, `10s`, `1m 30s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a duration like `250ms`, `10s` or `1m 30s`"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Collected before parsing: clap's own errors may quote any argument back.
    let secrets = Secrets::from_args_and_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let text = secrets.hide(&err.render().to_string());
            if err.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let code = commands::run(cli, &secrets).await;
    ExitCode::from(code)
}
