#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::{singleton, Outcome};

pub mod jobs {
    use super::singleton;

    /// Sends the daily digest.
    ///
    /// The doc comment, the `#[doc(alias)]`, the `#[inline]` and the `pub(crate)` stay.
    #[doc(alias = "digest")]
    #[inline]
    #[singleton(key = "digest", ttl = "10m")]
    #[cfg_attr(test, allow(clippy::unused_async))]
    pub(crate) async fn send_digest(count: usize) -> usize {
        #![allow(clippy::identity_op)]
        count + 0
    }

    #[singleton(key = "one-expression", ttl = "10m")]
    pub(crate) async fn one_expression() -> u8 {
        7
    }

    #[cfg(any())]
    #[singleton(key = "compiled-out", ttl = "10m")]
    pub(crate) async fn compiled_out() -> u8 {
        this_does_not_exist()
    }
}

async fn run() -> Result<(), cluster_singleton::Error> {
    if let Outcome::Ran(sent) = jobs::send_digest(3).await? {
        println!("{sent}");
    }
    let _seven = jobs::one_expression().await?;
    Ok(())
}

fn main() {
    let _run = run();
}
