//! What a [`Proxy`](super::Proxy)'s threads share, and the forwarding of one
//! plain TCP connection: accept, connect to the target, then per direction one
//! thread reading chunks and one writing them once they are due and no fault
//! holds them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::relay;

/// How long the proxy waits for the node to accept a connection. The node is
/// on loopback, so only a frozen node takes long; then the client's own
/// timeout has long given up.
pub(super) const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from one side in one go: more than a lock's commands and
/// replies take, so a burst of them usually travels as one chunk.
pub(super) const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks a direction may hold (delayed or partitioned) before the proxy stops
/// reading from the sender. Beyond it the sender meets TCP back-pressure, as it
/// would behind a real congested link, and memory stays bounded.
pub(super) const HELD_CHUNKS: usize = 1024;

/// How many directions a connection has; once both have ended, it is closed.
const DIRECTIONS: usize = 2;

/// What the proxy's threads share.
pub(super) struct Shared {
    pub(super) target: SocketAddr,
    pub(super) state: Mutex<State>,
    /// Signalled whenever `state` changes, so held chunks re-check whether they
    /// may go.
    pub(super) changed: Condvar,
}

pub(super) struct State {
    pub(super) partitioned: bool,
    pub(super) latency: Duration,
    pub(super) stopped: bool,
    pub(super) redis_aware: bool,
    pub(super) links: Vec<Arc<Link>>,
}

/// One client connection and its connection to the target.
pub(super) struct Link {
    client: TcpStream,
    /// `None` until the target accepted the connection.
    pub(super) upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    /// Set by `black_hole_open_connections`: nothing is forwarded any more.
    pub(super) black_holed: AtomicBool,
    /// Directions whose sender has finished (end of stream or error).
    finished: AtomicUsize,
}

/// Bytes read from one side, and when they may be written to the other.
pub(super) struct Chunk {
    pub(super) bytes: Vec<u8>,
    pub(super) due: Instant,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update
        // is a single assignment or a Vec operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut State)) {
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
    pub(super) fn close(&self, link: &Arc<Link>) {
        link.close();
        self.forget(link);
        self.changed.notify_all();
    }

    /// Blocks until `due` has passed and neither a partition nor a black hole
    /// holds the link; `false` if the connection was closed or the proxy
    /// stopped meanwhile.
    pub(super) fn wait_to_forward(&self, link: &Link, due: Instant) -> bool {
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
    pub(super) fn close(&self) {
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

pub(super) fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
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

pub(super) fn deliver(
    shared: &Shared,
    link: &Arc<Link>,
    held: &Receiver<Chunk>,
    mut to: TcpStream,
) {
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
