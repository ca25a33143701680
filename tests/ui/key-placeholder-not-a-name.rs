use cluster_singleton::singleton;

struct Customer {
    id: u64,
}

#[singleton(key = "invoice:{customer_id:>8}", ttl = "10m")]
async fn format_spec(customer_id: u64) {
    let _ = customer_id;
}

#[singleton(key = "invoice:{customer.id}", ttl = "10m")]
async fn field(customer: Customer) {
    let _ = customer.id;
}

#[singleton(key = "invoice:{customer_id + 1}", ttl = "10m")]
async fn expression(customer_id: u64) {
    let _ = customer_id;
}

#[singleton(key = "invoice:{}", ttl = "10m")]
async fn positional(customer_id: u64) {
    let _ = customer_id;
}

fn main() {}
