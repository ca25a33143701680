#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::singleton;

// Values handed over as `$key:expr` arrive wrapped in an invisible group; they are still
// string literals.
macro_rules! job {
    ($name:ident, $key:expr, $ttl:literal) => {
        #[singleton(key = $key, ttl = $ttl)]
        async fn $name() -> u8 {
            1
        }
    };
}

job!(first, "first-job", "10s");
job!(second, "second-job", "1m");

async fn both() -> Result<(), cluster_singleton::Error> {
    let _first = first().await?;
    let _second = second().await?;
    Ok(())
}

fn main() {
    let _both = both();
}
