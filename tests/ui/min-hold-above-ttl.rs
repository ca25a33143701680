use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", min_hold = "1h")]
async fn longer() {}

#[singleton(min_hold = "10m 1ms", key = "daily-email", ttl = "10m")]
async fn one_millisecond_longer() {}

fn main() {}
