use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m")]
fn send_daily_email() -> usize {
    42
}

fn main() {
    let _sent: usize = send_daily_email();
}
