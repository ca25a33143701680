//! The README's example: a daily email that only one machine of the fleet sends.
//!
//! ```text
//! cargo run --example daily_email
//! REDIS_URLS=redis://10.0.0.1,redis://10.0.0.2,redis://10.0.0.3 cargo run --example daily_email
//! ```
//!
//! Without `REDIS_URLS` it starts one local `redis-server` for the run (the test kit's).

use std::time::Duration;

use cluster_singleton::{runtime, runtime::Config, singleton, Outcome};
use cluster_singleton_testkit::Cluster;
use tokio::signal::unix::{signal, SignalKind};

/// Stands in for a real mail client: it only says whom it would write to.
struct Mailer {
    recipients: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an email address")]
struct MailError(&'static str);

impl Mailer {
    async fn send_all(&self) -> Result<usize, MailError> {
        for to in &self.recipients {
            if !to.contains('@') {
                return Err(MailError(to));
            }
            println!("mailing {to}");
        }
        Ok(self.recipients.len())
    }
}

#[singleton(key = "daily-email", ttl = "10m")]
async fn send_daily_email(mailer: &Mailer) -> Result<usize, MailError> {
    mailer.send_all().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local_redis; // started below when needed, and stopped at the end of `main`
    let config = if let Ok(urls) = std::env::var("REDIS_URLS") {
        Config::new(urls.split(','))
    } else {
        // A node's vote counts once it has been up for the restart grace (by default
        // `Config::max_ttl`, ten minutes), so that a node that restarted and forgot its locks
        // cannot grant them twice; one started just now held none.
        local_redis = Cluster::start(1)?;
        Config::new(local_redis.urls()).restart_grace(Duration::ZERO)
    };
    config.init().await?;

    let mailer = Mailer {
        recipients: vec!["ada@example.com", "grace@example.com"],
    };
    // A deploy's SIGTERM (or Ctrl-C) cancels the job, which gives its lock back at once.
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        outcome = send_daily_email(&mailer) => match outcome? {
            Outcome::Ran(Ok(sent)) => println!("sent {sent} emails"),
            Outcome::Ran(Err(e)) => eprintln!("this machine had the job, but it failed: {e}"),
            Outcome::Skipped(why) => println!("not sent from here: {why}"),
        },
        _ = terminate.recv() => eprintln!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("Ctrl-C: stopping"),
    }
    // Before `main` returns: releases what is still held and waits for releases on their way,
    // so that no lock outlives the program.
    runtime::shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
