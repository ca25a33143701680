#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::{singleton, Outcome};

struct Invoices {
    issued: u64,
}

impl Invoices {
    #[singleton(key = "invoices-count", ttl = "30s")]
    async fn count(&self) -> u64 {
        self.issued
    }

    #[singleton(key = "invoices-issue", ttl = "1h")]
    async fn issue(&mut self, how_many: u64) -> u64 {
        self.issued += how_many;
        self.issued
    }

    #[singleton(key = "invoices-archive", ttl = "1h")]
    async fn archive(self) -> Self {
        Invoices { issued: 0 }
    }

    #[singleton(key = "invoices-new", ttl = "500ms")]
    async fn new_batch() -> Self {
        Self { issued: 0 }
    }
}

async fn hourly() -> Result<u64, cluster_singleton::Error> {
    let mut invoices = match Invoices::new_batch().await? {
        Outcome::Ran(invoices) => invoices,
        Outcome::Skipped(_) => return Ok(0),
    };
    let _issued: Outcome<u64> = invoices.issue(3).await?;
    let counted = invoices.count().await?.ran_value().unwrap_or_default();
    let _archived: Outcome<Invoices> = invoices.archive().await?;
    Ok(counted)
}

fn main() {
    let _hourly = hourly();
}
