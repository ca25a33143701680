use cluster_singleton::singleton;

#[singleton(key = "invoice:{customer_id", ttl = "10m")]
async fn unclosed(customer_id: u64) {
    let _ = customer_id;
}

#[singleton(key = "invoice:customer_id}", ttl = "10m")]
async fn unmatched(customer_id: u64) {
    let _ = customer_id;
}

fn main() {}
