use cluster_singleton::singleton;

const KEY: &str = "daily-email";

#[singleton(key = daily_email, ttl = "10m")]
async fn identifier() {}

#[singleton(key = KEY, ttl = "10m")]
async fn constant() {}

#[singleton(key = 5, ttl = "10m")]
async fn integer() {}

#[singleton(key = b"daily-email", ttl = "10m")]
async fn byte_string() {}

fn main() {
    let _ = KEY;
}
