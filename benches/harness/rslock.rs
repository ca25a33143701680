//! The rslock contender, as the harness sees it: a child process (`benches/rslock`) that runs
//! rslock lock cycles on request and answers with a [`Sample`].

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::drive::Sample;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Where the contender's package is, from the root of this one.
const MANIFEST: &str = "benches/rslock/Cargo.toml";

/// Its binary's name, from its `Cargo.toml`.
const BINARY: &str = "rslock-contender";

/// The contender's own target directory, beside the harness's: it is another workspace, and
/// sharing the directory would make the two builds wait for each other's lock.
const TARGET_SUBDIR: &str = "rslock-contender";

pub struct Rslock {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Rslock {
    /// Builds the contender if needed (the first time takes a few minutes) and starts it.
    pub fn start() -> Result<Rslock> {
        let target_dir = target_dir()?;
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFEST);
        // `cargo bench` tells its children which cargo it is.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building the rslock contender ({})", manifest.display());
        let built = Command::new(cargo)
            .args(["build", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .stdout(Stdio::null())
            .status()?;
        if !built.success() {
            return Err(format!("building {} failed ({built})", manifest.display()).into());
        }
        let mut child = Command::new(target_dir.join("release").join(BINARY))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("the contender has no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("the contender has no stdout")?);
        Ok(Rslock {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Gives the contender a lock manager on these nodes, named `site`.
    pub fn connect(&mut self, site: usize, urls: &[String]) -> Result<()> {
        let answer = self.ask(&format!("connect {site} {}", urls.join(",")))?;
        if answer != "ok" {
            return Err(format!("the rslock contender said {answer:?}").into());
        }
        Ok(())
    }

    /// Runs one measurement on `site`: `tasks` tasks locking `key:<task>` (`contended`:
    /// all of them `key`).
    #[allow(clippy::too_many_arguments)] // one per word of the command it sends
    pub fn run(
        &mut self,
        site: usize,
        contended: bool,
        tasks: usize,
        warm_up: Duration,
        window: Duration,
        ttl: Duration,
        key: &str,
    ) -> Result<Sample> {
        let keys = if contended { "contended" } else { "distinct" };
        let answer = self.ask(&format!(
            "run {site} {keys} {tasks} {} {} {} {key}",
            warm_up.as_micros(),
            window.as_micros(),
            ttl.as_millis()
        ))?;
        Ok(Sample::from_line(&answer)?)
    }

    fn ask(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Err("the rslock contender exited".into());
        }
        Ok(answer.trim_end().to_owned())
    }
}

impl Drop for Rslock {
    fn drop(&mut self) {
        // Our own child, by its handle: it would also exit on its own once stdin closes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<target>/rslock-contender`, where `<target>` is the harness's own target directory: the
/// harness runs as `<target>/release/deps/lock-<hash>`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("cannot tell the target directory from the harness's path")?;
    Ok(target.join(TARGET_SUBDIR))
}
