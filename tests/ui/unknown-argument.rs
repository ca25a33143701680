use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", retries = 3)]
async fn unknown_name() {}

#[singleton(key = "daily-email", tll = "10m")]
async fn misspelt_ttl() {}

#[singleton(key = "daily-email", ttl = "10m", fence = true)]
async fn near_miss() {}

fn main() {}
