use cluster_singleton::singleton;

const LOCK_TTL_SECONDS: u64 = 600;

mod settings {
    pub const MIN_HOLD: &str = "1m";
}

#[singleton(key = "daily-email", ttl = LOCK_TTL_SECONDS)]
async fn seconds() {}

#[singleton(key = "daily-email", ttl = "10m", min_hold = settings::MIN_HOLD)]
async fn string() {}

fn main() {}
