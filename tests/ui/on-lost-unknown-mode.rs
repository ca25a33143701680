use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m", on_lost = "stop")]
async fn unknown_mode() {}

#[singleton(key = "daily-email", ttl = "10m", on_lost = "Cancel")]
async fn capitalised() {}

#[singleton(key = "daily-email", ttl = "10m", on_lost = continue)]
async fn keyword() {}

#[singleton(key = "daily-email", ttl = "10m", on_lost = true)]
async fn bool() {}

fn main() {}
