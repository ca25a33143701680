use std::time::Duration;

use cluster_singleton::singleton;

struct Report;

impl Report {
    const TTL: Duration = Duration::from_secs(0);

    // A path through `Self` (or a type parameter) is checked in the function's body: reported
    // when a program that calls the function is built, not by `cargo check`.
    #[singleton(key = "report", ttl = Self::TTL)]
    async fn run(&self) {}
}

fn main() {
    drop(Report.run());
}
