use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", max_hold = "forever")]
async fn words() {}

#[singleton(key = "daily-email", ttl = "10m", max_hold = 3600)]
async fn integer() {}

#[singleton(key = "daily-email", ttl = "10m", max_hold = "0s")]
async fn zero() {}

fn main() {}
