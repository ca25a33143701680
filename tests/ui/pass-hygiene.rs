#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]
#![allow(non_camel_case_types)]

// Names a user may well have in scope must not change what the generated code refers to.

use cluster_singleton::singleton;

#[derive(Debug)]
pub struct AppError;

type Result<T> = std::result::Result<T, AppError>;

#[allow(dead_code)]
struct Duration;
#[allow(dead_code)]
struct Outcome;
#[allow(dead_code)]
struct Error;
#[allow(dead_code)]
struct core;
#[allow(dead_code)]
struct __private;
#[allow(dead_code)]
struct Options;
#[allow(dead_code)]
enum OnLost {
    Cancel,
    Continue,
}
#[allow(dead_code)]
struct Verdict;
#[allow(dead_code)]
trait ResultVerdict {}
#[allow(dead_code)]
trait AnyVerdict {}

mod std_like {
    #[allow(dead_code)]
    pub struct Result;
}

#[singleton(key = "aliased-result", ttl = "10s")]
async fn aliased_result(fail: bool) -> Result<u8> {
    if fail {
        return Err(AppError);
    }
    Ok(1)
}

// Parameters and locals named like the generated ones are neither captured nor shadowed.
#[singleton(key = "shadowing", ttl = "10s")]
async fn shadowing(__singleton_fake_return: u8, key: u8, ttl: u8, run: u8) -> u8 {
    let body = __singleton_fake_return + key;
    body + ttl + run
}

// The same with every option, a key placeholder and the closure that judges the output.
#[singleton(
    key = "shadowing-{__singleton_value}",
    ttl = "10s",
    wait = "1s",
    renew = true,
    max_hold = "1m",
    on_lost = "continue",
    min_hold = "5s"
)]
async fn shadowing_options(__singleton_value: u8, options: u8, succeeded: u8) -> Result<u8> {
    Ok(__singleton_value + options + succeeded)
}

async fn all() -> std::result::Result<(), cluster_singleton::Error> {
    let _aliased = aliased_result(false).await?;
    let _shadowing = shadowing(1, 2, 3, 4).await?;
    let _options = shadowing_options(1, 2, 3).await?;
    Ok(())
}

fn main() {
    let _ = std_like::Result;
    let _all = all();
}
