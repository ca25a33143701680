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

#[singleton(key = "a", ttl = "10m", wait = "1s", wait = "2s")]
async fn wait_twice() {}

#[singleton(key = "a", ttl = "10m", renew = false, renew = false)]
async fn renew_twice() {}

#[singleton(key = "a", ttl = "10m", on_lost = "cancel", on_lost = "continue")]
async fn on_lost_twice() {}

fn main() {}
