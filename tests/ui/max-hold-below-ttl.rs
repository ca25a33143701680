use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", max_hold = "5m")]
async fn shorter() {}

#[singleton(max_hold = "599999ms", key = "daily-email", ttl = "600s")]
async fn one_millisecond_short() {}

fn main() {}
