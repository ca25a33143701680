//! Signals to a node's process, and the thread that starts every node so that
//! it dies with the test process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;

/// Sends `sig` to the process `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is that of
    // our own child, which has not been reaped, so it cannot have been reused
    // by an unrelated process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocks until the child `pid` is stopped (or has exited), without reaping
/// it, so `Child::wait` still works afterwards.
pub(crate) fn wait_until_stopped(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C
        // struct, and waitid only writes into the one we pass.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the
        // child's state to be collected later by `Child::wait`.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

// Why a spawner thread: every node is started with PR_SET_PDEATHSIG =
// SIGKILL so that it dies with the test process even when that is SIGKILLed
// and no Drop runs. But Linux sends the death signal when the *thread* that
// forked the child exits, not the process. The Rust test harness runs each
// test on its own short-lived thread, and a Cluster may outlive it (kept in a
// static, or shared between tests), so forking from the caller's thread would
// kill nodes as soon as the test that started them returns. Instead, every
// child is forked by one dedicated thread that lives as long as the process.

/// A request to the spawner thread: the command, and where to send the result.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's inbox; `None` until the thread is first needed.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// Spawns `command` from the spawner thread, with the death signal set.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        // A panic while holding the lock cannot leave the Option half-written.
        let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        let sender = match spawner.as_ref() {
            Some(sender) => sender,
            None => spawner.insert(start_spawner()?),
        };
        sender
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?
}

fn start_spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    thread::Builder::new()
        .name("cluster-singleton-testkit-spawner".into())
        .spawn(move || {
            // Runs until the process exits: the Sender lives in a static.
            for (command, reply) in rx {
                // If the requester is gone, the Child drops here; its death
                // signal still ends it when the process exits.
                let _ = reply.send(spawn_with_death_signal(command));
            }
        })?;
    Ok(tx)
}

fn spawn_with_death_signal(mut command: Command) -> io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: the hook runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid) and builds io::Errors from
    // raw OS codes, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the parent died between fork and prctl, the death signal
            // will never come: the child was already reparented. Give up.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}
