//! The `#[singleton]` attribute of [`cluster-singleton`](https://docs.rs/cluster-singleton).
//!
//! Use it through the `cluster-singleton` crate, which re-exports it with the runtime that the
//! generated code calls; this crate's version is pinned exactly by that one. Arguments are
//! parsed and checked in `args.rs` (the key and its placeholders in `key.rs`), the code is
//! generated in `expand.rs`.

mod args;
mod expand;
mod key;

use proc_macro::TokenStream;

/// Runs an `async fn` on one machine of a fleet at a time, under a Redlock lock in Redis.
//
// The rest of the documentation lives in `singleton.md`. Its examples use the facade
// (`cluster_singleton`), which this crate cannot depend on, so they are left out of this crate's
// doctests and compiled where the facade resolves: the facade includes the same file under
// `#[cfg(doctest)]`, and `tests/attribute_compiles.rs` covers the same shapes.
#[cfg_attr(not(doctest), doc = include_str!("singleton.md"))]
#[proc_macro_attribute]
pub fn singleton(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::singleton(args.into(), item.into()).into()
}
