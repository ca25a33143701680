//! Nodes whose wall clock a test can step while they run (see
//! [`ClusterBuilder::steppable_clocks`](crate::ClusterBuilder::steppable_clocks)).
//!
//! Each such node is a redis-server built with libc malloc, with libfaketime preloaded and told
//! to read its offset from a file in the node's directory on every clock read; stepping the
//! clock rewrites that file. Only the wall clock moves (`FAKETIME_DONT_FAKE_MONOTONIC`), the one
//! Redis expires keys by. Debian's redis-server links jemalloc, into which libfaketime cannot be
//! preloaded; `scripts/ensure-faketime` installs both parts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The environment variable that names a redis-server built with libc malloc, for nodes with a
/// steppable clock; by default `~/.cache/cluster-singleton/redis-server-libc-6.2`, where
/// `scripts/ensure-faketime` puts it.
pub const FAKETIME_REDIS_SERVER_ENV: &str = "CLUSTER_SINGLETON_FAKETIME_REDIS_SERVER";

/// The environment variable that names libfaketime's shared library; by default the one
/// Debian's `libfaketime` package installs.
pub const LIBFAKETIME_ENV: &str = "CLUSTER_SINGLETON_LIBFAKETIME";

/// Where `scripts/ensure-faketime` puts the redis-server, under the home directory.
const DEFAULT_SERVER: &str = ".cache/cluster-singleton/redis-server-libc-6.2";

/// Where Debian's `libfaketime` package puts the library, per architecture.
const LIBFAKETIME_CANDIDATES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// The file a node's libfaketime reads its offset from.
const OFFSET_FILE: &str = "clock-offset";

/// What a node with a steppable clock runs.
#[derive(Debug, Clone)]
pub(crate) struct Faketime {
    pub(crate) server: PathBuf,
    library: PathBuf,
}

impl Faketime {
    /// Finds the redis-server and libfaketime, or says how to install them.
    pub(crate) fn find() -> Result<Faketime, Error> {
        let missing = |what: String| {
            Error::RedisServerNotFound(format!(
                "{what}; run `scripts/ensure-faketime` (it installs libfaketime from the OS \
                 packages and a redis-server built with libc malloc), or set \
                 {FAKETIME_REDIS_SERVER_ENV} and {LIBFAKETIME_ENV}"
            ))
        };
        let server = match std::env::var_os(FAKETIME_REDIS_SERVER_ENV).filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(DEFAULT_SERVER))
                .unwrap_or_default(),
        };
        if !crate::launch::is_executable(&server) {
            return Err(missing(format!(
                "a steppable clock needs a redis-server built with libc malloc at `{}`",
                server.display()
            )));
        }
        let library = match std::env::var_os(LIBFAKETIME_ENV).filter(|p| !p.is_empty()) {
            Some(path) => Some(PathBuf::from(path)),
            None => LIBFAKETIME_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|candidate| candidate.is_file()),
        }
        .filter(|library| library.is_file())
        .ok_or_else(|| {
            missing("a steppable clock needs libfaketime, which was not found".into())
        })?;
        Ok(Faketime { server, library })
    }

    /// Makes `command` run the node with its clock offset read from a file in `dir`; the file
    /// is created with no offset unless it exists (a restarted node keeps its clock).
    pub(crate) fn prepare(&self, command: &mut Command, dir: &Path) -> Result<(), Error> {
        let offset_file = dir.join(OFFSET_FILE);
        if !offset_file.exists() {
            write_offset(dir, 0).map_err(Error::TempDir)?;
        }
        command
            .env("LD_PRELOAD", &self.library)
            .env("FAKETIME_TIMESTAMP_FILE", &offset_file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Ok(())
    }
}

/// Sets the node's clock to run `offset_ms` milliseconds ahead of the real one (behind when
/// negative), from its next clock read on.
pub(crate) fn write_offset(dir: &Path, offset_ms: i64) -> std::io::Result<()> {
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    // Written whole and then renamed, so that the server never reads half a line.
    let part = dir.join(format!("{OFFSET_FILE}.part"));
    fs::write(&part, format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000))?;
    fs::rename(part, dir.join(OFFSET_FILE))
}
