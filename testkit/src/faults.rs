//! The faults a [`Cluster`] injects into its nodes: kill, freeze, resume,
//! restart, a stepped clock, and starting a killed node again.

use crate::launch::PortChoice;
use crate::process::{signal, wait_until_stopped};
#[cfg(doc)]
use crate::ClusterBuilder;
use crate::{clock, Cluster, Error};

impl Cluster {
    /// Kills node `i` with `SIGKILL` and waits for the process to end, as a
    /// crash would. Killing a killed node does nothing. A frozen node is
    /// killed too.
    ///
    /// # Errors
    ///
    /// [`Error::Process`] if the OS refuses to signal or reap the process.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// cluster.kill(2)?;
    /// assert!(cluster.connection(2).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill(&mut self, i: usize) -> Result<(), Error> {
        let node = self.node_mut(i);
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        // ESRCH cannot happen for an unreaped child, even one that exited on
        // its own (it is a zombie), so any error here is real.
        signal(pid, libc::SIGKILL).map_err(|source| Error::Process {
            action: "send SIGKILL to",
            node: i,
            pid,
            source,
        })?;
        child.wait().map_err(|source| Error::Process {
            action: "wait for",
            node: i,
            pid,
            source,
        })?;
        node.child = None;
        Ok(())
    }

    /// Freezes node `i` with `SIGSTOP`: the process stays alive and its port
    /// keeps accepting TCP connections, but it answers nothing, like a node
    /// stuck in a long GC pause or swap storm. Returns once the process is
    /// actually stopped. Freezing a frozen node does nothing.
    ///
    /// Use a read timeout on connections to a frozen node, or they block until
    /// it is resumed.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Process`] if the
    /// OS refuses to signal it.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// cluster.freeze(0)?;
    /// // ... the code under test now sees node 0 time out ...
    /// cluster.resume(0)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn freeze(&mut self, i: usize) -> Result<(), Error> {
        let pid = self.running_pid(i)?;
        let process_error = |action, source| Error::Process {
            action,
            node: i,
            pid,
            source,
        };
        signal(pid, libc::SIGSTOP).map_err(|e| process_error("send SIGSTOP to", e))?;
        // The signal is delivered asynchronously; wait until the kernel reports
        // the process stopped, so a test's very next request is guaranteed to
        // meet a frozen node.
        wait_until_stopped(pid).map_err(|e| process_error("wait for SIGSTOP of", e))
    }

    /// Resumes a node frozen by [`freeze`](Cluster::freeze), with `SIGCONT`.
    /// It then answers the requests that queued up meanwhile. Resuming a node
    /// that is not frozen does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the node was killed; [`Error::Process`] if the
    /// OS refuses to signal it.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// cluster.freeze(0)?;
    /// cluster.resume(0)?;
    /// let mut con = cluster.connection(0)?;
    /// redis::cmd("PING").exec(&mut con).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub fn resume(&mut self, i: usize) -> Result<(), Error> {
        let pid = self.running_pid(i)?;
        // SIGCONT wakes a stopped process while the signal is being sent, so
        // unlike freeze there is nothing to wait for.
        signal(pid, libc::SIGCONT).map_err(|source| Error::Process {
            action: "send SIGCONT to",
            node: i,
            pid,
            source,
        })
    }

    /// Kills node `i` if it runs, then starts it again on the same port with
    /// an empty dataset, and waits until it answers `PING`: a node restarted
    /// without persistence, which forgets every key (and every lock). The new
    /// process has a new `run_id`.
    ///
    /// # Errors
    ///
    /// As [`kill`](Cluster::kill) and [`start_node`](Cluster::start_node).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(1)?;
    /// let mut con = cluster.connection(0)?;
    /// redis::cmd("SET").arg("k").arg("v").exec(&mut con)?;
    /// cluster.restart(0)?;
    /// let mut con = cluster.connection(0)?;
    /// let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con)?;
    /// assert_eq!(v, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.kill(i)?;
        self.start_node(i)
    }

    /// Steps node `i`'s wall clock by `by_ms` milliseconds (forward when positive, back when
    /// negative) while it runs, as an NTP step or an operator setting the time would: keys it
    /// holds expire by the stepped clock from then on. The step stays across restarts of the
    /// node. Its monotonic clock does not move.
    ///
    /// # Errors
    ///
    /// [`Error::ClockNotSteppable`] unless the cluster was started with
    /// [`ClusterBuilder::steppable_clocks`]; [`Error::StepClock`] if the offset file could not
    /// be written.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::builder()
    ///     .nodes(3)
    ///     .steppable_clocks(true)
    ///     .start()?;
    /// cluster.step_clock(1, 120_000)?; // node 1 is now two minutes ahead
    /// # Ok(())
    /// # }
    /// ```
    pub fn step_clock(&mut self, i: usize, by_ms: i64) -> Result<(), Error> {
        if self.faketime.is_none() {
            return Err(Error::ClockNotSteppable { node: i });
        }
        let node = self.node_mut(i);
        let offset = node.clock_offset_ms.saturating_add(by_ms);
        clock::write_offset(node.dir.path(), offset)
            .map_err(|source| Error::StepClock { node: i, source })?;
        node.clock_offset_ms = offset;
        Ok(())
    }

    /// Starts killed node `i` again on its port, with an empty dataset, and
    /// waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if the node runs (use
    /// [`restart`](Cluster::restart) for that); otherwise whatever stopped the
    /// node from starting, e.g. [`Error::Exited`] if another process took the
    /// port meanwhile.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::start(3)?;
    /// cluster.kill(1)?;
    /// // ... the code under test runs with one node down ...
    /// cluster.start_node(1)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_node(&mut self, i: usize) -> Result<(), Error> {
        let node = self.node(i);
        if node.child.is_some() {
            return Err(Error::AlreadyRunning { node: i });
        }
        self.launch(i, PortChoice::Same(node.port))
    }
}
