use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", renew = 0)]
async fn integer() {}

#[singleton(key = "daily-email", ttl = "10m", renew = "no")]
async fn word() {}

#[singleton(key = "daily-email", ttl = "10m", renew = off)]
async fn identifier() {}

#[singleton(key = "daily-email", ttl = "10m", renew)]
async fn no_value() {}

fn main() {}
