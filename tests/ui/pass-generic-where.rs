#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::fmt::Display;

use cluster_singleton::{singleton, Outcome};

#[singleton(key = "report", ttl = "10m")]
async fn report<'a, T, U, const N: usize>(
    title: &'a str,
    rows: [T; N],
    extra: &U,
    footer: &'a str,
) -> (String, &'a str)
where
    T: Display + Send,
    U: Clone + Send + Sync,
{
    let _copy = extra.clone();
    let mut out = title.to_owned();
    for row in rows {
        out.push_str(&row.to_string());
    }
    (out, footer)
}

struct Store<K> {
    keys: Vec<K>,
}

impl<K> Store<K>
where
    K: Ord + Clone + Send + Sync,
{
    #[singleton(key = "store-compact", ttl = "1m")]
    async fn compact<F>(&mut self, keep: F) -> usize
    where
        F: Fn(&K) -> bool + Send,
    {
        self.keys.retain(|key| keep(key));
        self.keys.sort();
        self.keys.len()
    }
}

async fn nightly() -> Result<(), cluster_singleton::Error> {
    if let Outcome::Ran((text, footer)) = report("rows: ", [1, 2, 3], &"x", "end").await? {
        println!("{text} {footer}");
    }
    let mut store = Store {
        keys: vec![3, 1, 2],
    };
    let _kept = store.compact(|key| *key > 1).await?;
    Ok(())
}

fn main() {
    let _nightly = nightly();
}
