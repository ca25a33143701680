use cluster_singleton::singleton;

#[singleton(key = "ledger", ttl = "1m", fencing = "true")]
async fn quoted() {}

#[singleton(key = "ledger", ttl = "1m", fencing = 1)]
async fn numbered() {}

fn main() {}
