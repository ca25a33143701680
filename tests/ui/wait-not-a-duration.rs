use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", wait = "soon")]
async fn words() {}

#[singleton(key = "daily-email", ttl = "10m", wait = 30)]
async fn integer() {}

#[singleton(key = "daily-email", ttl = "10m", wait = "0s")]
async fn zero() {}

#[singleton(key = "daily-email", ttl = "10m", wait = "1500us")]
async fn microseconds() {}

#[singleton(key = "daily-email", ttl = "10m", wait = "9223372036854775.808s")]
async fn beyond_redis_px() {}

fn main() {}
