//! Compile-fail tests for `#[singleton]`, through the facade as users see it.
//!
//! Every `tests/ui/*.rs` must fail to build with exactly the errors in the `.stderr` beside it.
//! After changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test -p cluster-singleton --test ui` and read the diff: every caret
//! should sit on the token the user has to change. What must build lives in
//! `tests/attribute_compiles.rs`, one crate for every case instead of a trybuild build each.

use std::path::{Path, PathBuf};

/// Errors raised only when a program that calls the function is built (a `const` reached through
/// `Self` is evaluated after monomorphization), which `cargo check` never reports.
const REPORTED_ONLY_BY_A_BUILD: [&str; 1] = ["tests/ui/ttl-const-zero-self.rs"];

#[test]
fn ui() {
    // Without a pass case trybuild checks every case in one `cargo check`, the fast path.
    let checked = trybuild::TestCases::new();
    for case in cases_reported_by_check() {
        checked.compile_fail(case);
    }
    drop(checked);

    // A pass case makes trybuild build instead, one case after another.
    let built = trybuild::TestCases::new();
    built.pass("tests/ui/built/ttl-const-self.rs");
    for case in REPORTED_ONLY_BY_A_BUILD {
        built.compile_fail(case);
    }
}

/// Every `tests/ui/*.rs` but [`REPORTED_ONLY_BY_A_BUILD`]: a trybuild glob cannot exclude.
fn cases_reported_by_check() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir("tests/ui")
        .expect("tests/ui is readable")
        .map(|entry| entry.expect("tests/ui is readable").path())
        .filter(|path| {
            path.extension().is_some_and(|extension| extension == "rs")
                && !REPORTED_ONLY_BY_A_BUILD
                    .iter()
                    .any(|built| Path::new(built) == path)
        })
        .collect();
    cases.sort();
    cases
}
