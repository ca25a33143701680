#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

// Every duration argument takes the path of a `const Duration`, alone or mixed with literals.

use std::time::Duration;

use cluster_singleton::singleton;

const LOCK_TTL: Duration = Duration::from_secs(600);

mod settings {
    use std::time::Duration;

    pub const TTL: Duration = Duration::from_secs(60);
    pub const WAIT: Duration = Duration::from_millis(1500);
    pub const MAX_HOLD: Duration = Duration::from_secs(3600);
    pub const MIN_HOLD: Duration = Duration::from_secs(60);
    pub const SLOT: Duration = Duration::from_secs(24 * 3600);
}

#[singleton(key = "const-ttl", ttl = LOCK_TTL)]
async fn const_ttl() -> u8 {
    1
}

#[singleton(
    key = "every-duration",
    ttl = crate::settings::TTL,
    wait = settings::WAIT,
    max_hold = settings::MAX_HOLD,
    min_hold = self::settings::MIN_HOLD,
    slot = settings::SLOT,
    renew = true,
    on_lost = "continue",
    fencing = true,
)]
async fn every_duration() -> Result<(), std::io::Error> {
    Ok(())
}

// A literal beside a path is still compared with it: 1m fits in LOCK_TTL, 1h is above it.
#[singleton(key = "mixed", ttl = LOCK_TTL, min_hold = "1m", max_hold = "1h")]
async fn mixed() {}

#[singleton(key = "literal-ttl", ttl = "10m", min_hold = settings::MIN_HOLD)]
async fn literal_ttl() {}

struct Report;

impl Report {
    const TTL: Duration = Duration::from_secs(30);

    #[singleton(key = "report", ttl = Self::TTL)]
    async fn run(&self) -> usize {
        3
    }
}

// A generic function: the checks run when it is instantiated.
#[singleton(key = "generic-{name}", ttl = LOCK_TTL)]
async fn generic<T: std::fmt::Display>(name: T) -> String {
    name.to_string()
}

// Through a `macro_rules!` `$ttl:expr`, which wraps the path in an invisible group.
macro_rules! job {
    ($name:ident, $ttl:expr) => {
        #[singleton(key = "macro", ttl = $ttl)]
        async fn $name() {}
    };
}
job!(from_macro, LOCK_TTL);

fn main() {
    drop(const_ttl());
    drop(every_duration());
    drop(mixed());
    drop(literal_ttl());
    drop(Report.run());
    drop(generic("a"));
    drop(from_macro());
}
