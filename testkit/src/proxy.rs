//! A fault-injecting TCP proxy: network partitions, latency and dropped
//! connections between the code under test and one Redis node.
//!
//! Killing or freezing a process shows what a client sees when a *node* fails.
//! A network fails differently: the node is healthy, but the path to it is
//! cut (nothing comes back, yet no connection is refused or reset), slow, or
//! torn down. [`Proxy`] sits between the clients and one node and can do each
//! of these on demand.
//!
//! It runs on plain threads with blocking sockets: per connection, one thread
//! reads and one thread writes in each direction, so a delayed chunk never
//! stops the next one from being read, and the order of the bytes is kept.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

mod forward;
mod relay;

use forward::{accept_loop, Shared, State};

/// A TCP proxy on a free `127.0.0.1` port that forwards to one address and
/// can partition, delay or reset the traffic on demand.
///
/// Faults apply to every connection through the proxy, open or new, until
/// changed:
///
/// - [`partition`](Proxy::partition) is a black hole, as a real network
///   partition is: nothing is forwarded in either direction, yet no socket is
///   closed, so clients see timeouts, never a refused or reset connection. New
///   connections are accepted (the kernel completes the handshake) but get no
///   answer. Bytes sent meanwhile are held, not lost, and arrive in order after
///   [`heal`](Proxy::heal), as TCP retransmission would deliver them when the
///   partition heals (dropping bytes from the middle of a TCP stream is
///   something no real network does).
/// - [`set_latency`](Proxy::set_latency) delays every chunk by a fixed time in
///   each direction (so a round trip takes twice as long), keeping the order.
/// - [`reset`](Proxy::reset) closes every open connection at once, as a
///   crashed middlebox or a restarted network stack would; the node itself
///   stays up and new connections work.
/// - [`black_hole_open_connections`](Proxy::black_hole_open_connections)
///   stops forwarding on every connection open now, for good, without closing
///   it: a flow that a NAT or firewall forgot. New connections work.
/// - [`set_redis_aware`](Proxy::set_redis_aware) makes connections opened
///   from then on survive a restart of the node, as through a Redis-aware
///   proxy or a managed endpoint.
///
/// Dropping the proxy closes every connection and stops its threads.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use cluster_singleton_testkit::{Cluster, Proxy};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::start(1)?;
/// let proxy = Proxy::start(([127, 0, 0, 1], cluster.port(0)).into())?;
/// let url = format!("redis://127.0.0.1:{}", proxy.port()); // give this to the client
///
/// let mut con = redis::Client::open(url.as_str())?.get_connection()?;
/// con.set_read_timeout(Some(Duration::from_millis(200)))?;
///
/// proxy.partition();
/// assert!(redis::cmd("PING").query::<String>(&mut con).is_err()); // a timeout
/// proxy.heal();
///
/// proxy.set_latency(Duration::from_millis(50)); // a round trip now takes 100 ms or more
/// proxy.set_latency(Duration::ZERO);
///
/// proxy.reset(); // `con` is closed; a new connection works
/// # Ok(())
/// # }
/// ```
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free port of `127.0.0.1` that forwards every
    /// connection to `target`. The target need not be up yet: a connection
    /// made while it is down is closed as soon as connecting to the target
    /// fails, as the target itself would refuse it.
    ///
    /// # Errors
    ///
    /// If no port can be bound or the accepting thread cannot be started.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// assert_ne!(proxy.port(), 6379);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                partitioned: false,
                latency: Duration::ZERO,
                stopped: false,
                redis_aware: false,
                links: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("testkit-proxy-{}-accept", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients should connect to.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// assert!(proxy.addr().ip().is_loopback());
    /// # Ok(())
    /// # }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients should connect to, on `127.0.0.1`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// let url = format!("redis://127.0.0.1:{}", proxy.port());
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the proxy forwards to.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let target = "127.0.0.1:6379".parse().unwrap();
    /// assert_eq!(cluster_singleton_testkit::Proxy::start(target)?.target(), target);
    /// # Ok(())
    /// # }
    /// ```
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Cuts the path in both directions without closing anything: from now on
    /// nothing is forwarded, and new connections are accepted but not
    /// answered, until [`heal`](Proxy::heal). Bytes sent meanwhile are held
    /// and delivered, in order, after the heal. A chunk whose write had
    /// already begun when this is called still arrives. Partitioning a
    /// partitioned proxy does nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// proxy.partition();
    /// assert!(proxy.is_partitioned());
    /// proxy.heal();
    /// assert!(!proxy.is_partitioned());
    /// # Ok(())
    /// # }
    /// ```
    pub fn partition(&self) {
        self.shared.update(|state| state.partitioned = true);
    }

    /// Ends a [`partition`](Proxy::partition): what was held is forwarded,
    /// and held new connections are connected to the target. Healing a proxy
    /// that is not partitioned does nothing.
    ///
    /// # Example
    ///
    /// See [`partition`](Proxy::partition).
    pub fn heal(&self) {
        self.shared.update(|state| state.partitioned = false);
    }

    /// Whether the proxy is partitioned.
    ///
    /// # Example
    ///
    /// See [`partition`](Proxy::partition).
    pub fn is_partitioned(&self) -> bool {
        self.shared.lock().partitioned
    }

    /// Delays every chunk of bytes by `latency` in each direction, from the
    /// moment the proxy read it; `Duration::ZERO` (the default) forwards at
    /// once. Chunks already read keep the delay they were given, and the order
    /// of the bytes is always kept, so lowering the latency takes effect once
    /// the slower chunks ahead have gone.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// proxy.set_latency(Duration::from_millis(100));
    /// assert_eq!(proxy.latency(), Duration::from_millis(100));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        self.shared.update(|state| state.latency = latency);
    }

    /// The delay set by [`set_latency`](Proxy::set_latency).
    ///
    /// # Example
    ///
    /// See [`set_latency`](Proxy::set_latency).
    pub fn latency(&self) -> Duration {
        self.shared.lock().latency
    }

    /// Closes every open connection at once, on both sides, dropping what was
    /// held for them. The node stays up and new connections work (subject to
    /// a partition or latency still in force).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// proxy.reset();
    /// assert_eq!(proxy.connections(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset(&self) {
        let links = std::mem::take(&mut self.shared.lock().links);
        for link in &links {
            link.close();
        }
        self.shared.changed.notify_all();
    }

    /// How many client connections are open through the proxy, including
    /// those held by a partition.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// let _client = std::net::TcpStream::connect(proxy.addr())?;
    /// // The proxy accepts on a thread of its own: poll for it.
    /// while proxy.connections() == 0 {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn connections(&self) -> usize {
        self.shared.lock().links.len()
    }

    /// Stops forwarding, for good, on every connection open now, in both
    /// directions, without closing any: what a client sees when a NAT or a
    /// firewall on the path forgets its flow, or when the node behind an
    /// address is replaced. Its requests time out, and only the operating
    /// system's retransmission limit (about fifteen minutes on Linux) or the
    /// client itself ends the connection. Connections opened later work.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let proxy = cluster_singleton_testkit::Proxy::start("127.0.0.1:6379".parse().unwrap())?;
    /// let _old = std::net::TcpStream::connect(proxy.addr())?;
    /// proxy.black_hole_open_connections(); // `_old` hears nothing from now on
    /// let _new = std::net::TcpStream::connect(proxy.addr())?; // works
    /// # Ok(())
    /// # }
    /// ```
    pub fn black_hole_open_connections(&self) {
        let links = self.shared.lock().links.clone();
        for link in &links {
            link.black_holed.store(true, Ordering::SeqCst);
        }
        self.shared.changed.notify_all();
    }

    /// With `true`, connections opened from now on behave as through a
    /// Redis-aware proxy (or a managed Redis endpoint): when the target closes
    /// its side, because the node was restarted say, the client's connection
    /// stays open; its next request goes to a new connection to the target,
    /// and each request that was lost with the old one is answered with an
    /// error (`-ERR proxy: ...`). Requests are forwarded whole, never split
    /// across two server connections. Partitions, latency and resets apply as
    /// to any connection. Default `false`: a closed target closes the client's
    /// connection, as a plain TCP path would.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cluster = cluster_singleton_testkit::Cluster::builder().nodes(1).proxied(true).start()?;
    /// cluster.proxy(0).set_redis_aware(true);
    /// let mut con = redis::Client::open(cluster.url(0))?.get_connection()?;
    /// cluster.restart(0)?;
    /// let _ = redis::cmd("PING").query::<String>(&mut con); // the same connection, a new server
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_redis_aware(&self, redis_aware: bool) {
        self.shared.update(|state| state.redis_aware = redis_aware);
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("partitioned", &state.partitioned)
            .field("latency", &state.latency)
            .field("connections", &state.links.len())
            .finish()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.update(|state| state.stopped = true);
        self.reset();
        // The accepting thread blocks in accept(); a connection of our own
        // wakes it to see `stopped`. Should even that fail, leave the thread
        // blocked rather than hang the caller: it holds nothing but the port.
        let woken = TcpStream::connect(self.addr).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woken {
                let _ = acceptor.join();
            }
        }
    }
}
