#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

// As after `renamed = { package = "cluster-singleton", .. }` in Cargo.toml.
extern crate cluster_singleton as renamed;

use renamed::{singleton, Outcome};

/// A user's own re-export of the facade.
mod facade {
    pub use renamed::*;
}

#[singleton(key = "renamed", ttl = "10m", crate = "renamed")]
async fn through_the_alias() -> u8 {
    1
}

#[singleton(crate = "::renamed", key = "absolute", ttl = "10m")]
async fn through_the_absolute_alias() -> u8 {
    2
}

#[singleton(key = "re-exported", ttl = "10m", crate = "crate::facade")]
async fn through_a_re_export() -> u8 {
    3
}

mod nested {
    use super::renamed::singleton;

    #[singleton(key = "nested", ttl = "10m", crate = "super::facade")]
    pub async fn relative_to_the_module() -> u8 {
        4
    }
}

async fn all() -> Result<u8, renamed::Error> {
    let mut total = 0;
    for outcome in [
        through_the_alias().await?,
        through_the_absolute_alias().await?,
        through_a_re_export().await?,
        nested::relative_to_the_module().await?,
    ] {
        if let Outcome::Ran(n) = outcome {
            total += n;
        }
    }
    Ok(total)
}

fn main() {
    let _all = all();
}
