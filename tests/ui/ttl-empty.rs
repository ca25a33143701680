use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "")]
async fn send_daily_email() {}

fn main() {}
