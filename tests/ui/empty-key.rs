use cluster_singleton::singleton;

#[singleton(key = "", ttl = "10m")]
async fn send_daily_email() {}

fn main() {}
