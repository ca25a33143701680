#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::future::Future;

use cluster_singleton::singleton;

struct Cache {
    entries: Vec<String>,
}

impl Cache {
    #[singleton(key = "cache-warmup", ttl = "5m")]
    async fn warm_up(&self) -> usize {
        self.entries.len()
    }
}

#[singleton(key = "send-check", ttl = "5m")]
async fn job(names: Vec<String>) -> usize {
    names.len()
}

/// Users hand these futures to `tokio::spawn`, which needs `Send + 'static`.
fn assert_spawnable<F: Future + Send + 'static>(_: F) {}

fn assert_send<F: Future + Send>(_: F) {}

fn main() {
    assert_spawnable(job(vec!["a".to_owned()]));
    let cache = Cache {
        entries: Vec::new(),
    };
    assert_send(cache.warm_up());
}
