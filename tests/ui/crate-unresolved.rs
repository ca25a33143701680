use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", crate = "not_singleton")]
async fn send_daily_email() {}

fn main() {}
