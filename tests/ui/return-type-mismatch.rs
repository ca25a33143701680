use cluster_singleton::singleton;

#[singleton(key = "greeting", ttl = "10s")]
async fn greeting() -> String {
    "hello"
}

fn main() {}
