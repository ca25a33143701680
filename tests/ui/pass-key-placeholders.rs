#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::future::Future;

use cluster_singleton::{singleton, Outcome};

// `customer` is not `Copy`: the key is formatted before the body takes it by value.
#[singleton(key = "invoice:{customer}", ttl = "10m")]
async fn issue_invoice(customer: String, amount: u64) -> String {
    format!("{customer} owes {amount}")
}

#[singleton(key = "batch:{region}:{batch}:{region}", ttl = "1m")]
async fn batch(region: &str, mut batch: u32) -> u32 {
    batch += 1;
    println!("{region}");
    batch
}

// `{{` and `}}` are braces in the key: this one is `set-{7}`.
#[singleton(key = "set-{{{id}}}", ttl = "1m")]
async fn braces(id: u8) -> u8 {
    id
}

// No placeholder: braces only.
#[singleton(key = "literal-{{braces}}", ttl = "1m")]
async fn literal_braces() {}

#[singleton(key = "kind:{type}:{r#type}", ttl = "1m")]
async fn raw_identifier(r#type: &str) -> usize {
    r#type.len()
}

#[singleton(key = "{name}", ttl = "1m")]
async fn only_a_placeholder<T: Display + Send + Sync>(name: T) -> String {
    name.to_string()
}

struct Tenant {
    name: String,
}

impl Tenant {
    #[singleton(key = "tenant:{job}", ttl = "1m", wait = "5s")]
    async fn run(&self, job: &str) -> String {
        format!("{} ran {job}", self.name)
    }
}

// A placeholder names the parameter even when the key comes from outside the macro that
// declares the parameter.
macro_rules! per_customer {
    ($name:ident, $key:expr, $extra:ident) => {
        #[singleton(key = $key, ttl = "1m")]
        async fn $name(customer_id: u64, $extra: u32) -> u64 {
            customer_id + u64::from($extra)
        }
    };
}

per_customer!(from_a_macro, "customer:{customer_id}:{extra}", extra);

/// Users hand these futures to `tokio::spawn`, which needs `Send + 'static`.
fn assert_spawnable<F: Future + Send + 'static>(_: F) {}

async fn all() -> Result<(), cluster_singleton::Error> {
    if let Outcome::Ran(text) = issue_invoice("acme".to_owned(), 3).await? {
        println!("{text}");
    }
    let _batch = batch("eu", 1).await?;
    let _braces = braces(7).await?;
    let _literal = literal_braces().await?;
    let _raw = raw_identifier("daily").await?;
    let _only = only_a_placeholder(5).await?;
    let tenant = Tenant {
        name: "acme".to_owned(),
    };
    let _ran = tenant.run("cleanup").await?;
    let _macro = from_a_macro(1, 2).await?;
    Ok(())
}

fn main() {
    assert_spawnable(issue_invoice("acme".to_owned(), 3));
    let _all = all();
}
