//! Compile tests for `#[singleton]`, through the facade as users see it.
//!
//! `tests/ui/pass-*.rs` must build; every other `tests/ui/*.rs` must fail to build with exactly
//! the errors in the `.stderr` beside it. After changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test -p cluster-singleton --test ui` and read the diff: every caret
//! should sit on the token the user has to change.

use std::path::PathBuf;

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass-*.rs");
    for case in compile_fail_cases() {
        t.compile_fail(case);
    }
}

/// Every `tests/ui/*.rs` not named `pass-*`: a trybuild glob cannot exclude, and the folder stays
/// flat.
fn compile_fail_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir("tests/ui")
        .expect("tests/ui is readable")
        .map(|entry| entry.expect("tests/ui is readable").path())
        .filter(|path| {
            let is_rust = path.extension().is_some_and(|extension| extension == "rs");
            let is_pass = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("pass-"));
            is_rust && !is_pass
        })
        .collect();
    cases.sort();
    cases
}
