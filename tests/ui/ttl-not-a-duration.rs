use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10x")]
async fn unknown_unit() {}

#[singleton(key = "daily-email", ttl = "10")]
async fn no_unit() {}

#[singleton(key = "daily-email", ttl = "ten minutes")]
async fn words() {}

fn main() {}
