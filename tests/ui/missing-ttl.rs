use cluster_singleton::singleton;

#[singleton(key = "daily-email")]
async fn send_daily_email() {}

fn main() {}
