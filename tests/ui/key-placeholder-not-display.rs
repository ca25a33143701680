use cluster_singleton::singleton;

#[derive(Debug)]
struct CustomerId(u64);

#[singleton(key = "invoice:{customer_id}", ttl = "10m")]
async fn issue(customer_id: CustomerId) -> u64 {
    customer_id.0
}

fn main() {}
