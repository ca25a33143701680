#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::{singleton, Outcome};

#[singleton(key = "heartbeat", ttl = "15s")]
async fn heartbeat() {}

#[singleton(key = "log-rotation", ttl = "1m")]
async fn rotate_logs(files: &[&str]) {
    if files.is_empty() {
        return;
    }
    for file in files {
        println!("rotating {file}");
    }
}

async fn tick() -> Result<(), cluster_singleton::Error> {
    let Outcome::Ran(()) = heartbeat().await? else {
        return Ok(());
    };
    let _rotated: Outcome<()> = rotate_logs(&["app.log"]).await?;
    Ok(())
}

fn main() {
    let _tick = tick();
}
