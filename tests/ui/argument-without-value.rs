use cluster_singleton::singleton;

#[singleton(key, ttl = "10m")]
async fn key_without_value() {}

#[singleton(key = "daily-email", ttl)]
async fn ttl_without_value() {}

fn main() {}
