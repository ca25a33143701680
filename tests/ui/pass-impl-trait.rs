#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::fmt::Display;

use cluster_singleton::{singleton, Outcome};

// `impl Trait` in the return type: the fake return edge must not spell it out
// (see tokio-rs/tracing#1615).
#[singleton(key = "banner", ttl = "10s")]
async fn banner(name: &str) -> impl Display + '_ {
    name
}

#[singleton(key = "evens", ttl = "10s")]
async fn evens(limit: u32) -> Result<impl Iterator<Item = u32>, String> {
    if limit == 0 {
        return Err("no numbers".to_owned());
    }
    Ok((0..limit).filter(|n| n % 2 == 0))
}

async fn show() -> Result<(), cluster_singleton::Error> {
    if let Outcome::Ran(banner) = banner("nightly").await? {
        println!("{banner}");
    }
    if let Outcome::Ran(Ok(evens)) = evens(10).await? {
        println!("{}", evens.sum::<u32>());
    }
    Ok(())
}

fn main() {
    let _show = show();
}
