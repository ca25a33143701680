use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", min_hold = "a while")]
async fn words() {}

#[singleton(key = "daily-email", ttl = "10m", min_hold = 60)]
async fn integer() {}

#[singleton(key = "daily-email", ttl = "10m", min_hold = "0.5ms")]
async fn half_a_millisecond() {}

fn main() {}
