use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", renew = "false")]
async fn quoted_false() {}

#[singleton(key = "daily-email", ttl = "10m", renew = "true")]
async fn quoted_true() {}

fn main() {}
