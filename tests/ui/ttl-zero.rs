use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "0s")]
async fn send_daily_email() {}

fn main() {}
