use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "99999999999999999999999h")]
async fn beyond_humantime() {}

#[singleton(key = "daily-email", ttl = "9223372036854775.808s")]
async fn beyond_redis_px() {}

fn main() {}
