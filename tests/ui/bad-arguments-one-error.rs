// The arguments are wrong, but the function still gets its rewritten signature, so the caller
// below that matches on `Outcome` and uses `?` adds no error of its own: only the `ttl` one.
use cluster_singleton::{singleton, Outcome};

#[singleton(key = "daily-email", ttl = "10x")]
async fn send_daily_email() -> Result<usize, std::io::Error> {
    Ok(42)
}

async fn cron_tick() -> Result<(), Box<dyn std::error::Error>> {
    match send_daily_email().await? {
        Outcome::Ran(sent) => println!("sent {}", sent?),
        Outcome::Skipped(why) => println!("skipped: {why}"),
    }
    Ok(())
}

fn main() {
    let _tick = cron_tick();
}
