//! What the crate logs, through a plain `tracing_subscriber::fmt()`: a call that ran, a call that
//! was skipped, and a call during an outage (two of three nodes killed). The README's "Logs"
//! shows this program's output.
//!
//! ```text
//! cargo run --example logs
//! ```
//!
//! It starts three local `redis-server` nodes for the run (the test kit's).

use std::time::Duration;

use cluster_singleton::runtime::Config;
use cluster_singleton_testkit::Cluster;
use tracing::Level;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // DEBUG to show the skip; production logs usually stop at INFO.
    tracing_subscriber::fmt()
        .with_max_level(Level::DEBUG)
        .with_target(false)
        .init();
    let mut cluster = Cluster::start(3)?;
    let runtime = Config::new(cluster.urls())
        .restart_grace(Duration::ZERO) // nodes started just now hold no locks to forget
        .holder_id("web-1:4242")
        .build()?;
    let ttl = Duration::from_secs(30);

    let ran = runtime.run("daily-email", ttl, async {}).await?;
    assert!(ran.ran());

    let held = runtime.lock("daily-email", ttl).await?.expect("free");
    let skipped = runtime.run("daily-email", ttl, async {}).await?;
    assert!(!skipped.ran());
    held.release().await?;

    cluster.kill(1)?;
    cluster.kill(2)?;
    let outage = runtime.run("daily-email", ttl, async {}).await;
    assert!(outage.is_err());
    Ok(())
}
