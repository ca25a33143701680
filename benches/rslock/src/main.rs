//! The rslock contender of the lock benchmark: runs rslock lock cycles when the harness
//! (`benches/lock.rs`) asks, and answers with what it measured.
//!
//! It is a process of its own for the reason given in its `Cargo.toml`; the harness starts it
//! once and keeps it for the whole run, so that its connections stay open like the in-process
//! contenders' do. It reads one command per line on stdin and answers each with one line on
//! stdout:
//!
//! ```text
//! connect <site> <url>,<url>,...                  -> ok
//! run <site> <keys> <tasks> <warm_up_us> <window_us> <ttl_ms> <key>
//!                                                   -> sample ... (see drive.rs)
//! ```
//!
//! `<keys>` is `distinct` (task `t` locks `<key>:<t>`) or `contended` (every task locks
//! `<key>`). Anything that goes wrong is answered with `error <message>`.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use rslock::{LockError, LockManager};

#[allow(dead_code)] // the harness uses the rest of it
#[path = "../../harness/drive.rs"]
mod drive;

use drive::{drive, Attempt};

/// One attempt per call: the benchmark measures what one attempt costs, and rslock's default
/// (three attempts, up to 200 ms apart) would measure its pauses instead.
const ATTEMPTS: u32 = 1;

/// Never used with one attempt, but rslock draws a pause in `0..delay` before a retry, and an
/// empty range would panic if it ever did.
const RETRY_DELAY: Duration = Duration::from_millis(1);

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("start a tokio runtime");
    let mut managers: HashMap<String, LockManager> = HashMap::new();
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.expect("read a command from the harness");
        let answer = match serve(&runtime, &mut managers, &line) {
            Ok(answer) => answer,
            Err(message) => format!("error {message}"),
        };
        writeln!(stdout, "{answer}").expect("answer the harness");
        stdout.flush().expect("answer the harness");
    }
}

fn serve(
    runtime: &tokio::runtime::Runtime,
    managers: &mut HashMap<String, LockManager>,
    line: &str,
) -> Result<String, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["connect", site, urls] => {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            let mut manager = LockManager::new(urls);
            manager.set_retry(ATTEMPTS, RETRY_DELAY);
            managers.insert((*site).to_owned(), manager);
            Ok("ok".to_owned())
        }
        ["run", site, keys, tasks, warm_up_us, window_us, ttl_ms, key] => {
            let manager = managers
                .get(*site)
                .ok_or_else(|| format!("no site {site}: send `connect` first"))?
                .clone();
            let number = |word: &str| {
                word.parse::<u64>()
                    .map_err(|err| format!("bad number {word:?}: {err}"))
            };
            let tasks = usize::try_from(number(tasks)?).map_err(|err| err.to_string())?;
            let warm_up = Duration::from_micros(number(warm_up_us)?);
            let window = Duration::from_micros(number(window_us)?);
            let ttl = Duration::from_millis(number(ttl_ms)?);
            let keys: Arc<Vec<String>> = Arc::new(match *keys {
                "distinct" => (0..tasks).map(|task| format!("{key}:{task}")).collect(),
                "contended" => vec![(*key).to_owned(); tasks],
                other => return Err(format!("unknown key layout {other:?}")),
            });
            let sample = runtime.block_on(drive(tasks, warm_up, window, move |task| {
                let (manager, keys) = (manager.clone(), keys.clone());
                async move { cycle(&manager, &keys[task], ttl).await }
            }));
            Ok(sample.to_line())
        }
        _ => Err(format!("unknown command {line:?}")),
    }
}

/// One lock and release, the way an rslock user writes it.
async fn cycle(manager: &LockManager, key: &str, ttl: Duration) -> Attempt {
    match manager.lock(key.as_bytes(), ttl).await {
        Ok(lock) => {
            // Best effort by design: rslock reports nothing about the release.
            lock.release().await;
            Attempt::Locked
        }
        // rslock says the same for a busy key and for too few nodes answering; the harness
        // knows which one to expect in each row.
        Err(LockError::Unavailable) => Attempt::Busy,
        Err(_) => Attempt::Failed,
    }
}
