//! Looking at the Redis nodes from the side: who is connected, how many commands ran, and a
//! key held by "another machine" for the contended row.

use std::collections::HashSet;
use std::error::Error;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use cluster_singleton_testkit::Cluster;

/// `CLIENT SETNAME` of the harness's own connections, so that they are never counted as a
/// contender's.
pub const CLIENT_NAME: &str = "bench-admin";

/// The value of a key held by "another machine" in the contended row: no contender's token.
const HOLDER_TOKEN: &str = "held-by-another-machine";

/// How long the contended row's key is held: far longer than any window, and deleted after it.
const HOLD: Duration = Duration::from_secs(600);

/// How long an admin command may take; a node is never asked while it is frozen, so this only
/// bounds a broken setup.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A resumed node has worked off the commands queued while it was frozen once its command count
/// stops moving for this long.
const QUIET_FOR: Duration = Duration::from_millis(200);

/// How long a resumed node may take to become quiet.
const QUIET_WITHIN: Duration = Duration::from_secs(30);

/// Commands that are no lock's: the harness's own, and what a client sends when it connects.
const NOT_LOCK_COMMANDS: [&str; 5] = ["info", "client", "ping", "hello", "select"];

/// `/proc/<pid>/net/tcp` state of an established connection.
const TCP_ESTABLISHED: &str = "01";

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// One plain connection per node, for looking.
pub struct Admin {
    connections: Vec<redis::Connection>,
    ports: Vec<u16>,
}

impl Admin {
    pub fn open(cluster: &Cluster) -> Result<Admin> {
        let mut connections = Vec::with_capacity(cluster.len());
        let mut ports = Vec::with_capacity(cluster.len());
        for node in 0..cluster.len() {
            let mut connection = cluster.connection(node)?;
            connection.set_read_timeout(Some(ADMIN_TIMEOUT))?;
            connection.set_write_timeout(Some(ADMIN_TIMEOUT))?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CLIENT_NAME)
                .exec(&mut connection)?;
            connections.push(connection);
            ports.push(cluster.port(node));
        }
        Ok(Admin { connections, ports })
    }

    /// Sets `key` on `nodes` to a value no contender will ever hold.
    pub fn hold(&mut self, nodes: &[usize], key: &str) -> Result<()> {
        for &node in nodes {
            redis::cmd("SET")
                .arg(key)
                .arg(HOLDER_TOKEN)
                .arg("PX")
                .arg(HOLD.as_millis() as u64)
                .exec(&mut self.connections[node])?;
        }
        Ok(())
    }

    pub fn free(&mut self, nodes: &[usize], key: &str) -> Result<()> {
        for &node in nodes {
            redis::cmd("DEL")
                .arg(key)
                .exec(&mut self.connections[node])?;
        }
        Ok(())
    }

    /// Lock commands (`SET`, `EVALSHA`, ...) the nodes have run so far, summed.
    pub fn lock_commands(&mut self, nodes: &[usize]) -> Result<u64> {
        let mut total = 0;
        for &node in nodes {
            total += self.lock_commands_on(node)?;
        }
        Ok(total)
    }

    fn lock_commands_on(&mut self, node: usize) -> Result<u64> {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connections[node])?;
        // Lines look like `cmdstat_set:calls=12,usec=34,...`.
        let calls = stats
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .filter_map(|line| line.split_once(':'))
            .filter(|(command, _)| {
                !NOT_LOCK_COMMANDS
                    .iter()
                    .any(|not_lock| command.starts_with(not_lock))
            })
            .filter_map(|(_, fields)| fields.split(',').next())
            .filter_map(|calls| calls.strip_prefix("calls="))
            .filter_map(|calls| calls.parse::<u64>().ok())
            .sum();
        Ok(calls)
    }

    /// How many connections process `pid` has open to `node`, counted in the node's `CLIENT
    /// LIST`, among those named `name` (`""`: those without a name).
    ///
    /// `CLIENT LIST` says where each client connects from, but not which process it is; the
    /// process's own sockets (`/proc/<pid>/fd` and `/proc/<pid>/net/tcp`) say which of those
    /// local ports are its.
    pub fn connections(&mut self, node: usize, pid: u32, name: &str) -> Result<usize> {
        let ours = local_ports(pid, self.ports[node])?;
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.connections[node])?;
        let count = clients
            .lines()
            .filter(|client| {
                let mut port = None;
                let mut named = "";
                for field in client.split_ascii_whitespace() {
                    if let Some(addr) = field.strip_prefix("addr=") {
                        port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                    } else if let Some(value) = field.strip_prefix("name=") {
                        named = value;
                    }
                }
                port.is_some_and(|port| ours.contains(&port)) && named == name
            })
            .count();
        Ok(count)
    }

    /// Waits until a node that was frozen has worked off what was queued for it meanwhile.
    pub fn wait_quiet(&mut self, node: usize) -> Result<()> {
        let deadline = Instant::now() + QUIET_WITHIN;
        let mut last = self.lock_commands_on(node)?;
        loop {
            thread::sleep(QUIET_FOR);
            let now = self.lock_commands_on(node)?;
            if now == last {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(
                    format!("node {node} was still busy {QUIET_WITHIN:?} after resuming").into(),
                );
            }
            last = now;
        }
    }
}

/// The local ports of process `pid`'s established TCP connections to port `remote` (on any
/// address: the nodes listen on loopback only).
fn local_ports(pid: u32, remote: u16) -> Result<HashSet<u16>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed while we look is simply not counted.
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        // inode ...`, addresses as `HEXADDR:HEXPORT`.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [_, local, remote_address, state, _, _, _, _, _, inode, ..] = fields.as_slice()
            else {
                continue;
            };
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            };
            if *state == TCP_ESTABLISHED
                && inodes.contains(*inode)
                && port(remote_address) == Some(remote)
            {
                if let Some(local) = port(local) {
                    ports.insert(local);
                }
            }
        }
    }
    Ok(ports)
}

/// This process's resident size in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .nth(1)
        .ok_or("/proc/self/statm has no resident field")?
        .parse()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page_size)?)
}
