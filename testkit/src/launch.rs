//! Launching one node's `redis-server` and waiting until it is ready: finding
//! the binary, picking a free port, preparing its directory and log, and
//! telling from the log why a start failed.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{signal, spawn};
use crate::{Cluster, Error};

/// The environment variable that, when set, names the `redis-server` binary to
/// run instead of the one found on `PATH`.
///
/// # Example
///
/// ```
/// assert_eq!(
///     cluster_singleton_testkit::REDIS_SERVER_ENV,
///     "CLUSTER_SINGLETON_REDIS_SERVER"
/// );
/// ```
pub const REDIS_SERVER_ENV: &str = "CLUSTER_SINGLETON_REDIS_SERVER";

/// The program looked up on `PATH` when [`REDIS_SERVER_ENV`] is not set.
const REDIS_SERVER_PROGRAM: &str = "redis-server";

/// How long a freshly started node may take to answer `PING`. A loaded CI
/// machine with two cores starts Redis in well under a second; ten leaves room
/// for heavy parallel test runs without letting a broken setup hang a suite.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness probes: short, so tests start quickly, yet long
/// enough not to burn a core while Redis boots.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Connect, read and write timeout of one readiness probe, so a probe of a
/// port that is not (yet) answering cannot eat the whole readiness deadline.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many fresh ports to try when the port the OS handed out was taken by
/// someone else before `redis-server` could bind it.
const MAX_PORT_ATTEMPTS: usize = 5;

/// How many lines at the end of a node's log go into an error message.
const LOG_TAIL_LINES: usize = 25;

/// What `redis-server` logs when its port is already taken.
const PORT_IN_USE_MARKER: &str = "Address already in use";

/// File name of a node's log, inside the node's temporary directory.
const LOG_FILE_NAME: &str = "redis.log";

/// Directory, inside the node's temporary directory, that each start of the
/// node gets afresh as its `--dir`, so whatever an earlier run saved (by an
/// explicit `SAVE`, say) cannot be loaded by a restarted node.
const DATA_DIR_NAME: &str = "data";

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) dir: TempDir,
    pub(crate) child: Option<Child>,
    /// How far its clock has been stepped, in milliseconds (steppable clocks only).
    pub(crate) clock_offset_ms: i64,
}

/// Whether a start may move to another port.
#[derive(Clone, Copy)]
pub(crate) enum PortChoice {
    /// First start: any free port will do.
    AnyFree,
    /// Later starts: URLs handed out must stay valid.
    Same(u16),
}

impl Cluster {
    /// Starts node `i`'s process and waits until it is ready, trying new
    /// ports when allowed and the chosen one turned out to be taken.
    pub(crate) fn launch(&mut self, i: usize, choice: PortChoice) -> Result<(), Error> {
        let attempts = match choice {
            PortChoice::AnyFree => MAX_PORT_ATTEMPTS,
            PortChoice::Same(_) => 1,
        };
        let mut attempt = 1;
        loop {
            let port = match choice {
                PortChoice::AnyFree => free_port()?,
                PortChoice::Same(port) => port,
            };
            match self.launch_on(i, port) {
                Ok(child) => {
                    let node = self.node_mut(i);
                    node.port = port;
                    node.child = Some(child);
                    return Ok(());
                }
                Err((error, port_in_use)) => {
                    if !(port_in_use && attempt < attempts) {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
        }
    }

    /// One try at starting node `i` on `port`. On failure the process is
    /// gone, and the flag says whether the port was taken.
    fn launch_on(&self, i: usize, port: u16) -> Result<Child, (Error, bool)> {
        let node = self.node(i);
        let data_dir = node.dir.path().join(DATA_DIR_NAME);
        let log_path = node.log_path();
        let (log, log_start) = prepare_start(&data_dir, &log_path, port).map_err(|e| (e, false))?;

        let mut command = Command::new(&self.program);
        if let Some(faketime) = &self.faketime {
            faketime
                .prepare(&mut command, node.dir.path())
                .map_err(|e| (e, false))?;
        }
        // Persistence defaults first, so extra arguments may override them;
        // what the testkit relies on last, so they cannot.
        command.args(["--save", "", "--appendonly", "no"]);
        command.args(&self.args);
        self.listen(&mut command, port);
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&data_dir)
            .arg("--logfile")
            .arg(&log_path)
            .args(["--daemonize", "no"]);
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        let stderr = log.try_clone().map_err(|e| (Error::TempDir(e), false))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));

        let mut child = spawn(command).map_err(|source| {
            let error = Error::Spawn {
                program: self.program.clone(),
                source,
            };
            (error, false)
        })?;

        let url = self.url_for_port(port);
        let ready = match self.client(&url) {
            Ok(client) => wait_ready(&mut child, &client),
            Err(source) => Err(NotReady::Client(source)),
        };
        match ready {
            Ok(()) => Ok(child),
            Err(outcome) => {
                // Never leave a half-started process behind; errors are moot
                // since the process may already be gone.
                let _ = signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                let log_tail = tail(&read_lossy(&log_path, log_start), LOG_TAIL_LINES);
                let port_in_use = log_tail.contains(PORT_IN_USE_MARKER);
                let error = match outcome {
                    NotReady::Exited(status) => Error::Exited {
                        node: i,
                        port,
                        status,
                        log_tail,
                    },
                    NotReady::Timeout => Error::NotReady {
                        node: i,
                        port,
                        timeout: READY_TIMEOUT,
                        log_tail,
                    },
                    NotReady::Wait(source) => Error::Process {
                        action: "wait for",
                        node: i,
                        pid: child.id(),
                        source,
                    },
                    NotReady::Client(source) => Error::Connect {
                        node: i,
                        url,
                        source,
                    },
                };
                Err((error, port_in_use))
            }
        }
    }

    /// Makes the node listen on `port`: plain TCP, or TLS only.
    fn listen(&self, command: &mut Command, port: u16) {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.tls {
            certificates.listen(command, port);
            return;
        }
        command.arg("--port").arg(port.to_string());
    }
}

impl Node {
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE_NAME)
    }
}

/// Makes an empty data directory and opens the log for appending, marking
/// where this start begins. Returns the log and the offset of this start's
/// output in it.
fn prepare_start(data_dir: &Path, log_path: &Path, port: u16) -> Result<(File, u64), Error> {
    match fs::remove_dir_all(data_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::TempDir(e)),
        _ => {}
    }
    fs::create_dir(data_dir).map_err(Error::TempDir)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(Error::TempDir)?;
    let start = log.metadata().map_err(Error::TempDir)?.len();
    writeln!(
        log,
        "--- cluster-singleton-testkit: starting redis-server on 127.0.0.1:{port} ---"
    )
    .map_err(Error::TempDir)?;
    Ok((log, start))
}

/// Why a node did not become ready.
enum NotReady {
    Exited(String),
    Timeout,
    Wait(io::Error),
    /// No client could be made for the node's URL.
    Client(redis::RedisError),
}

/// Polls until `child` answers through `client`, it exits, or the deadline
/// passes.
fn wait_ready(child: &mut Child, client: &redis::Client) -> Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(NotReady::Exited(status.to_string())),
            Ok(None) => {}
            Err(e) => return Err(NotReady::Wait(e)),
        }
        if answers_as(client, child.id()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout);
        }
        thread::sleep(READY_POLL_INTERVAL);
    }
}

/// Whether the server behind `client` answers PING and is the process `pid`. The
/// second check matters when another process grabbed our port: our node is
/// about to exit with "Address already in use", and the squatter's answers
/// must not pass for its readiness.
fn answers_as(client: &redis::Client, pid: u32) -> bool {
    let probe = || -> redis::RedisResult<bool> {
        let mut con = client.get_connection_with_timeout(PROBE_TIMEOUT)?;
        con.set_read_timeout(Some(PROBE_TIMEOUT))?;
        con.set_write_timeout(Some(PROBE_TIMEOUT))?;
        let pong: String = redis::cmd("PING").query(&mut con)?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut con)?;
        let process_id = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        Ok(pong == "PONG" && process_id == Some(pid))
    };
    probe().unwrap_or(false)
}

/// Asks the OS for a port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}

/// Finds the `redis-server` to run, failing at once with advice if there is
/// none.
pub(crate) fn find_redis_server() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::RedisServerNotFound(format!(
                "{REDIS_SERVER_ENV} is set to `{}`, but that is not an executable file; \
                 point it at a redis-server binary, or unset it to use `{REDIS_SERVER_PROGRAM}` from PATH",
                path.display()
            )))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(REDIS_SERVER_PROGRAM))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            Error::RedisServerNotFound(format!(
                "`{REDIS_SERVER_PROGRAM}` was not found on PATH; install it \
                 (Debian: `apt-get install redis-server`) or set {REDIS_SERVER_ENV} to its path"
            ))
        })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    const ANY_EXECUTE_BIT: u32 = 0o111;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & ANY_EXECUTE_BIT != 0)
        .unwrap_or(false)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// password survives inside a URL's userinfo.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Reads a file from `offset` on, replacing invalid UTF-8; empty on error,
/// since this only feeds diagnostics.
pub(crate) fn read_lossy(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("p@ss:w/rd %"), "p%40ss%3Aw%2Frd%20%25");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
