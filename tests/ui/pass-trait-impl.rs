#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::{singleton, Error, Outcome};

trait Job {
    async fn run(&self, batch: u32) -> Result<Outcome<u32>, Error>;

    async fn run_default(&self) -> Result<Outcome<&'static str>, Error>;
}

struct Warmup;

impl Job for Warmup {
    #[singleton(key = "cache-warmup", ttl = "5m")]
    async fn run(&self, batch: u32) -> u32 {
        batch * 2
    }

    #[singleton(key = "cache-warmup-default", ttl = "5m")]
    async fn run_default(&self) -> &'static str {
        "warm"
    }
}

async fn run_job(job: &impl Job) -> Result<Option<u32>, Error> {
    let _default = job.run_default().await?;
    Ok(job.run(10).await?.ran_value())
}

fn main() {
    let _job = run_job(&Warmup);
}
