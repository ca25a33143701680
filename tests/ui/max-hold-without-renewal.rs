use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", renew = false, max_hold = "1h")]
async fn renewal_off() {}

#[singleton(key = "daily-email", ttl = "10m", max_hold = "5m", renew = false)]
async fn renewal_off_and_shorter() {}

fn main() {}
