use std::time::Duration;

use cluster_singleton::singleton;

const LOCK_TTL: Duration = Duration::from_secs(600);
const HALF_A_MILLISECOND: Duration = Duration::from_micros(500);
const BEYOND_REDIS_PX: Duration = Duration::from_secs(u64::MAX);
const AN_HOUR: Duration = Duration::from_secs(3600);
const A_MINUTE: Duration = Duration::from_secs(60);

#[singleton(key = "daily-email", ttl = "10m", wait = HALF_A_MILLISECOND)]
async fn fraction() {}

#[singleton(key = "daily-email", ttl = "10m", slot = BEYOND_REDIS_PX)]
async fn beyond_redis_px() {}

#[singleton(key = "daily-email", ttl = LOCK_TTL, min_hold = AN_HOUR)]
async fn min_hold_above_ttl() {}

#[singleton(key = "daily-email", ttl = LOCK_TTL, min_hold = "1h")]
async fn literal_min_hold_above_const_ttl() {}

#[singleton(key = "daily-email", ttl = LOCK_TTL, max_hold = A_MINUTE)]
async fn max_hold_below_ttl() {}

fn main() {
    drop(fraction());
    drop(beyond_redis_px());
    drop(min_hold_above_ttl());
    drop(literal_min_hold_above_const_ttl());
    drop(max_hold_below_ttl());
}
