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
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod relay;

/// How long the proxy waits for the node to accept a connection. The node is
/// on loopback, so only a frozen node takes long; then the client's own
/// timeout has long given up.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from one side in one go: more than a lock's commands and
/// replies take, so a burst of them usually travels as one chunk.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks a direction may hold (delayed or partitioned) before the proxy stops
/// reading from the sender. Beyond it the sender meets TCP back-pressure, as it
/// would behind a real congested link, and memory stays bounded.
const HELD_CHUNKS: usize = 1024;

/// How many directions a connection has; once both have ended, it is closed.
const DIRECTIONS: usize = 2;

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

/// What the proxy's threads share.
struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled whenever `state` changes, so held chunks re-check whether they
    /// may go.
    changed: Condvar,
}

struct State {
    partitioned: bool,
    latency: Duration,
    stopped: bool,
    redis_aware: bool,
    links: Vec<Arc<Link>>,
}

/// One client connection and its connection to the target.
struct Link {
    client: TcpStream,
    /// `None` until the target accepted the connection.
    upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    /// Set by `black_hole_open_connections`: nothing is forwarded any more.
    black_holed: AtomicBool,
    /// Directions whose sender has finished (end of stream or error).
    finished: AtomicUsize,
}

/// Bytes read from one side, and when they may be written to the other.
struct Chunk {
    bytes: Vec<u8>,
    due: Instant,
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update
        // is a single assignment or a Vec operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Registers a new connection; `false` if the proxy is stopping.
    fn register(&self, link: &Arc<Link>) -> bool {
        let mut state = self.lock();
        if state.stopped {
            return false;
        }
        state.links.push(link.clone());
        true
    }

    fn forget(&self, link: &Arc<Link>) {
        self.lock().links.retain(|open| !Arc::ptr_eq(open, link));
    }

    /// Closes `link` and stops tracking it.
    fn close(&self, link: &Arc<Link>) {
        link.close();
        self.forget(link);
        self.changed.notify_all();
    }

    /// Blocks until `due` has passed and neither a partition nor a black hole
    /// holds the link; `false` if the connection was closed or the proxy
    /// stopped meanwhile.
    fn wait_to_forward(&self, link: &Link, due: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped || link.is_closed() {
                return false;
            }
            let now = Instant::now();
            state = if now < due {
                self.changed
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            } else if state.partitioned || link.black_holed.load(Ordering::SeqCst) {
                self.changed.wait(state).unwrap_or_else(|p| p.into_inner())
            } else {
                return true;
            };
        }
    }
}

impl Link {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Shuts both sockets down, which also wakes the threads blocked reading
    /// them. Errors are moot: the socket may already be gone.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = self
            .upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopped {
            return;
        }
        // A failed accept (the client gave up already, or out of file
        // descriptors for a moment) concerns that one connection only.
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("testkit-proxy-link".into())
            .spawn(move || serve(client, &shared));
        // Without a thread the connection is dropped, which closes it: the
        // client sees a reset, as from an overloaded server.
        drop(spawned);
    }
}

/// Connects one client to the target and forwards between them until either
/// side closes or the link is reset.
fn serve(client: TcpStream, shared: &Arc<Shared>) {
    let Ok(handle) = client.try_clone() else {
        return;
    };
    let link = Arc::new(Link {
        client: handle,
        upstream: Mutex::new(None),
        closed: AtomicBool::new(false),
        black_holed: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
    });
    if !shared.register(&link) {
        return;
    }
    if shared.lock().redis_aware {
        relay::serve(client, shared, &link);
        return;
    }
    // A new connection during a partition gets no answer: the target is not
    // even asked until the heal.
    if !shared.wait_to_forward(&link, Instant::now()) {
        shared.close(&link);
        return;
    }
    let upstream = match TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(_refused) => {
            // As the target itself would have: it is down, so the client's
            // connection ends.
            shared.close(&link);
            return;
        }
    };
    let handles = (
        client.try_clone(),
        upstream.try_clone(),
        upstream.try_clone(),
    );
    let (Ok(client_writer), Ok(upstream_reader), Ok(upstream_handle)) = handles else {
        shared.close(&link);
        return;
    };
    // Small requests and replies must not wait for Nagle's algorithm: that
    // would add latency that the test did not ask for.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    *link.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(upstream_handle);
    // A reset that came while connecting did not see the upstream socket.
    if link.is_closed() {
        shared.close(&link);
        return;
    }
    let towards_client = start_direction(shared, &link, upstream_reader, client_writer);
    if towards_client.is_err() {
        shared.close(&link);
        return;
    }
    pump(shared, &link, client, upstream);
}

/// Starts the threads of the direction `from` → `to`.
fn start_direction(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    from: TcpStream,
    to: TcpStream,
) -> io::Result<()> {
    let (shared, link) = (shared.clone(), link.clone());
    thread::Builder::new()
        .name("testkit-proxy-pump".into())
        .spawn(move || pump(&shared, &link, from, to))
        .map(drop)
}

/// Forwards `from` → `to`: this thread reads and stamps each chunk with its
/// due time, a second thread writes the chunks in order once they are due
/// and no partition holds them.
fn pump(shared: &Arc<Shared>, link: &Arc<Link>, mut from: TcpStream, to: TcpStream) {
    let (chunks, held) = mpsc::sync_channel(HELD_CHUNKS);
    let writer = {
        let (shared, link) = (shared.clone(), link.clone());
        thread::Builder::new()
            .name("testkit-proxy-write".into())
            .spawn(move || deliver(&shared, &link, &held, to))
    };
    if writer.is_err() {
        shared.close(link);
        return;
    }
    read_chunks(shared, link, &mut from, &chunks);
    // Dropping the sender tells the writer that no more chunks will come.
}

fn read_chunks(
    shared: &Shared,
    link: &Arc<Link>,
    from: &mut TcpStream,
    chunks: &SyncSender<Chunk>,
) {
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return, // end of stream: the writer passes it on
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                shared.close(link);
                return;
            }
        };
        let due = Instant::now() + shared.lock().latency;
        let chunk = Chunk {
            bytes: buffer[..read].to_vec(),
            due,
        };
        if chunks.send(chunk).is_err() {
            return; // the writer is gone: the link is closed
        }
    }
}

fn deliver(shared: &Shared, link: &Arc<Link>, held: &Receiver<Chunk>, mut to: TcpStream) {
    // Ends when the reader has seen the end of the stream and everything
    // before it has been written.
    for chunk in held {
        if !shared.wait_to_forward(link, chunk.due) {
            return;
        }
        if to.write_all(&chunk.bytes).is_err() {
            shared.close(link);
            return;
        }
    }
    // The sender closed its side: pass the half-close on, and close the link
    // once both sides are done.
    let _ = to.shutdown(Shutdown::Write);
    if link.finished.fetch_add(1, Ordering::SeqCst) + 1 == DIRECTIONS {
        shared.close(link);
    }
}
