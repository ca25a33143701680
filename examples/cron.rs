//! Cron jobs that run once per tick in the fleet, with the `cron` feature: every machine keeps
//! the same `cron::Schedule`, and each tick runs on one of them.
//!
//! ```text
//! cargo run --features cron --example cron
//! REDIS_URLS=redis://10.0.0.1,redis://10.0.0.2,redis://10.0.0.3 cargo run --features cron --example cron
//! ```
//!
//! Two "machines", `a` and `b`, run in this one process, each with its own runtime (its own
//! connections to the Redis nodes, `Config::build`) and its own schedule, as two servers of a
//! fleet would. Both fire `report` every second (in production, `0 0 2 * * *`: 02:00:00 UTC every
//! day) for about six seconds. Machine `b` starts its schedule 300 ms after `a`, but both fire at
//! the tick; so per tick one machine runs the report and the other logs `busy` (the lock is
//! held) or `already done` (the run is over and the tick is marked done). The first run fails on
//! purpose: it marks nothing and frees the lock at once, so a machine that fired later in that
//! tick would run it again (here the other machine fired at the same time, and was `busy`).
//!
//! At the end it prints every tick with what each machine did, and checks that each tick
//! succeeded at most once; the exit code is non-zero otherwise. Without `REDIS_URLS` it starts
//! three local `redis-server`s with the test kit (votes counted at once: `restart_grace(ZERO)`),
//! and waits three seconds before the first tick, so that the fresh nodes' "no done marker" counts
//! (a node answers for ticks from a second after its start). Keys get the prefix
//! `cron-example:`.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_singleton::cron::{current_tick, Schedule};
use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::{singleton, Outcome, Skip};
use cluster_singleton_testkit::Cluster;

/// The demo's schedule: every second (six fields, seconds first, in UTC).
const DEMO_CRON: &str = "* * * * * *";
const FIRING_FOR: Duration = Duration::from_secs(6);
const URLS_ENV: &str = "REDIS_URLS";

/// Whether the next report fails: only the first one does.
static REPORT_FAILS: AtomicBool = AtomicBool::new(true);

/// The report: one machine per tick runs it, and a failed run is retried in the same tick.
#[singleton(key = "report", ttl = "10m")]
async fn report(machine: &'static str) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    if REPORT_FAILS.swap(false, Ordering::SeqCst) {
        return Err("the warehouse did not answer".into());
    }
    Ok(format!("report sent by {machine}"))
}

type Journal = Arc<Mutex<BTreeMap<u64, Vec<String>>>>;

/// One machine: its schedule, on its runtime, logging each call's outcome.
fn start_machine(
    machine: &'static str,
    runtime: &Runtime,
    journal: &Journal,
) -> Result<cluster_singleton::cron::Scheduled, cluster_singleton::Error> {
    let journal = journal.clone();
    Schedule::new()
        .runtime(runtime.clone())
        .job(DEMO_CRON, move || {
            let journal = journal.clone();
            async move {
                let tick = current_tick().map_or(0, unix_secs);
                let (what, line) = match report(machine).await {
                    Ok(Outcome::Ran(Ok(sent))) => ("ran", sent),
                    Ok(Outcome::Ran(Err(err))) => ("failed", format!("ran, and failed: {err}")),
                    Ok(Outcome::Skipped(Skip::Busy)) => ("busy", "skipped: busy".into()),
                    Ok(Outcome::Skipped(Skip::AlreadyDone { .. })) => {
                        ("done", "skipped: already done in this tick".into())
                    }
                    Ok(Outcome::Skipped(other)) => ("skipped", format!("skipped: {other}")),
                    Err(err) => ("error", format!("no run: {err}")),
                };
                println!("tick={} machine={machine} {line}", clock(tick));
                let mut journal = journal.lock().unwrap_or_else(|p| p.into_inner());
                journal
                    .entry(tick)
                    .or_default()
                    .push(format!("{machine}={what}"));
            }
        })
        .start()
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn StdError>> {
    let mut _local_redis = None; // stopped when `main` returns
    let config = match std::env::var(URLS_ENV) {
        Ok(urls) => Config::new(urls.split(',')),
        Err(_) => {
            let cluster = Cluster::start(3)?;
            let config = Config::new(cluster.urls()).restart_grace(Duration::ZERO);
            _local_redis = Some(cluster);
            config
        }
    };
    let config = config.key_prefix("cron-example:");
    let (runtime_a, runtime_b) = (config.clone().build()?, config.build()?);
    for runtime in [&runtime_a, &runtime_b] {
        if let Some(lease) = runtime.lock("warm-up", Duration::from_secs(1)).await? {
            lease.release().await?;
        }
    }
    if _local_redis.is_some() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let journal = Journal::default();
    let a = start_machine("a", &runtime_a, &journal)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = start_machine("b", &runtime_b, &journal)?;
    tokio::time::sleep(FIRING_FOR).await;
    a.stop();
    b.stop();
    // The last tick's calls end and give back their locks.
    for runtime in [runtime_a, runtime_b] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = runtime.shutdown(Duration::from_secs(2)).await;
    }

    println!("\nper tick (UTC), what each machine did:");
    let journal = journal.lock().unwrap_or_else(|p| p.into_inner());
    let mut twice = 0;
    for (tick, whats) in journal.iter() {
        twice += usize::from(whats.iter().filter(|w| w.ends_with("=ran")).count() > 1);
        println!("  {}  {}", clock(*tick), whats.join(" "));
    }
    println!(
        "check: {} ticks, {twice} succeeded twice: {}",
        journal.len(),
        if twice == 0 { "ok" } else { "FAILED" }
    );
    Ok(if twice == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The time of day of a Unix second, in UTC, as `HH:MM:SS`.
fn clock(secs: u64) -> String {
    let secs = secs % (24 * 60 * 60);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
