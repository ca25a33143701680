use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = 600)]
async fn integer() {}

#[singleton(key = "daily-email", ttl = 10 * 60)]
async fn arithmetic() {}

fn main() {}
