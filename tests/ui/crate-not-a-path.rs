use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", crate = "not a path")]
async fn spaces() {}

#[singleton(key = "daily-email", ttl = "10m", crate = "")]
async fn empty() {}

#[singleton(key = "daily-email", ttl = "10m", crate = cluster_singleton)]
async fn not_a_string() {}

fn main() {}
