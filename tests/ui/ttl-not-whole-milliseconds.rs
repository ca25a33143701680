use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "1500us")]
async fn microseconds() {}

#[singleton(key = "daily-email", ttl = "0.5ms")]
async fn half_a_millisecond() {}

fn main() {}
