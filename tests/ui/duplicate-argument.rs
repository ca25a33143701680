use cluster_singleton::singleton;

#[singleton(key = "a", key = "b", ttl = "10m")]
async fn key_twice() {}

#[singleton(key = "a", ttl = "10m", ttl = "1h")]
async fn ttl_twice() {}

#[singleton(
    key = "a",
    ttl = "10m",
    crate = "::cluster_singleton",
    crate = "::cluster_singleton"
)]
async fn crate_twice() {}

fn main() {}
