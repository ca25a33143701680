// Builds, the counterpart of `tests/ui/ttl-const-zero-self.rs`. A trybuild pass case: only with
// one does trybuild build (not `cargo check`) the compile-fail cases beside it, which that one
// needs (see `tests/ui.rs`). The same shape also builds and runs in `tests/attribute_compiles.rs`.

use std::time::Duration;

use cluster_singleton::singleton;

struct Report;

impl Report {
    const TTL: Duration = Duration::from_secs(30);

    #[singleton(key = "report", ttl = Self::TTL)]
    async fn run(&self) {}
}

fn main() {
    drop(Report.run());
}
