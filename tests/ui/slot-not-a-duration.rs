use cluster_singleton::singleton;

#[singleton(key = "daily-report", ttl = "10m", slot = "daily")]
async fn named_period() {}

#[singleton(key = "daily-report", ttl = "10m", slot = "0s")]
async fn empty_period() {}

fn main() {}
