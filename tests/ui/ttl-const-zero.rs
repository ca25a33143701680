use std::time::Duration;

use cluster_singleton::singleton;

const LOCK_TTL: Duration = Duration::ZERO;

// Reported by `cargo check` too, and whether or not the function is called.
#[singleton(key = "daily-email", ttl = LOCK_TTL)]
async fn send_daily_email() {}

fn main() {}
