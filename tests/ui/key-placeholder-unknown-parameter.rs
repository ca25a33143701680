use cluster_singleton::singleton;

#[singleton(key = "invoice:{customer}", ttl = "10m")]
async fn misspelt(customer_id: u64, region: &str) {
    let _ = (customer_id, region);
}

#[singleton(key = "invoice:{customer_id}", ttl = "10m")]
async fn no_parameters() {}

// Only parameters bound to a plain name can be used, not the names inside a pattern.
#[singleton(key = "pair:{left}", ttl = "10m")]
async fn destructured((left, right): (u8, u8), batch: u32) {
    let _ = (left, right, batch);
}

fn main() {}
