use cluster_singleton::singleton;

struct Invoices {
    customer_id: u64,
}

impl Invoices {
    #[singleton(key = "invoice:{self}", ttl = "10m")]
    async fn issue(&self, batch: u32) -> u64 {
        self.customer_id + u64::from(batch)
    }
}

fn main() {}
