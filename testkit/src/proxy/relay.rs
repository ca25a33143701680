//! Connections through a Redis-aware proxy ([`Proxy::set_redis_aware`]): the
//! client's connection outlives the proxy's connection to the node.
//!
//! Per client connection, four threads: one reads the client's requests and
//! frames them, one writes each whole request to the current server
//! connection (opening one when there is none), one per server connection
//! reads its replies, and one writes replies to the client. The number of
//! requests a server connection has not answered is counted, so that when it
//! ends each of them is answered with an error, as a Redis-aware proxy does,
//! and the client's pairing of requests and replies stays right.
//!
//! [`Proxy::set_redis_aware`]: super::Proxy::set_redis_aware

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use super::forward::{
    deliver, Chunk, Link, Shared, CHUNK_BYTES, HELD_CHUNKS, UPSTREAM_CONNECT_TIMEOUT,
};
use crate::resp::Framer;

/// The answer to a request whose server connection ended before it replied.
const LOST: &[u8] = b"-ERR proxy: the connection to the server ended before it answered\r\n";

/// The answer to a request when no connection to the server can be opened.
const UNREACHABLE: &[u8] = b"-ERR proxy: cannot connect to the server\r\n";

/// The server side of one client connection.
struct Server {
    /// The open connection to the target, if any.
    stream: Option<TcpStream>,
    /// Counts the connections opened, so that the reader of an old one stops.
    generation: u64,
    /// Requests written to the current connection and not answered yet.
    unanswered: usize,
    /// Whole replies (and errors for lost requests), towards the client.
    to_client: SyncSender<Chunk>,
}

type SharedServer = Arc<Mutex<Server>>;

fn lock(server: &SharedServer) -> MutexGuard<'_, Server> {
    server.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Queues `bytes` for the client, after the proxy's latency.
    fn answer(&self, shared: &Shared, bytes: Vec<u8>) {
        let due = Instant::now() + shared.lock().latency;
        // A closed link has no writer left: nothing to answer.
        let _ = self.to_client.send(Chunk { bytes, due });
    }
}

/// Serves `client` as a Redis-aware proxy would, until the client closes or
/// the link is reset.
pub(super) fn serve(mut client: TcpStream, shared: &Arc<Shared>, link: &Arc<Link>) {
    let _ = client.set_nodelay(true);
    let (to_client, replies) = mpsc::sync_channel(HELD_CHUNKS);
    let (to_server, requests) = mpsc::sync_channel(HELD_CHUNKS);
    let server = Arc::new(Mutex::new(Server {
        stream: None,
        generation: 0,
        unanswered: 0,
        to_client,
    }));
    let started = client.try_clone().is_ok_and(|client_writer| {
        let (shared, link) = (shared.clone(), link.clone());
        spawn(move || deliver(&shared, &link, &replies, client_writer))
    }) && {
        let (shared, link, server) = (shared.clone(), link.clone(), server.clone());
        spawn(move || write_requests(&shared, &link, &requests, &server))
    };
    if !started {
        shared.close(link);
        return;
    }
    let mut framer = Framer::default();
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let read = match client.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let due = Instant::now() + shared.lock().latency;
        for bytes in framer.push(&buffer[..read]) {
            if to_server.send(Chunk { bytes, due }).is_err() {
                break;
            }
        }
    }
    shared.close(link);
}

/// Writes each whole request to the current server connection, opening one
/// when there is none; a request that finds the server unreachable is
/// answered with an error.
fn write_requests(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    requests: &Receiver<Chunk>,
    server: &SharedServer,
) {
    for request in requests {
        if !shared.wait_to_forward(link, request.due) {
            return;
        }
        let mut state = lock(server);
        if state.stream.is_none() {
            match open(shared, link, server, &mut state) {
                Some(stream) => state.stream = Some(stream),
                None => {
                    state.answer(shared, UNREACHABLE.to_vec());
                    continue;
                }
            }
        }
        state.unanswered += 1;
        let stream = state.stream.as_mut().expect("opened above");
        if stream.write_all(&request.bytes).is_err() {
            // Its reader sees the connection end, and answers what was lost.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Opens a server connection and starts its reader; `None` when the target
/// refuses.
fn open(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    server: &SharedServer,
    state: &mut Server,
) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT).ok()?;
    let _ = stream.set_nodelay(true);
    let reader = stream.try_clone().ok()?;
    *link.upstream.lock().unwrap_or_else(|p| p.into_inner()) = stream.try_clone().ok();
    state.generation += 1;
    state.unanswered = 0;
    let (shared, server, generation) = (shared.clone(), server.clone(), state.generation);
    spawn(move || read_replies(&shared, reader, generation, &server)).then_some(stream)
}

/// Passes whole replies on to the client until the server connection ends,
/// then answers every request it left unanswered with an error.
fn read_replies(shared: &Shared, mut from: TcpStream, generation: u64, server: &SharedServer) {
    let mut framer = Framer::default();
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let replies = framer.push(&buffer[..read]);
        let mut state = lock(server);
        if state.generation != generation {
            return;
        }
        for reply in replies {
            state.unanswered = state.unanswered.saturating_sub(1);
            state.answer(shared, reply);
        }
    }
    let mut state = lock(server);
    if state.generation == generation {
        for _ in 0..state.unanswered {
            state.answer(shared, LOST.to_vec());
        }
        state.unanswered = 0;
        state.stream = None;
    }
}

/// Starts a proxy thread; whether it started.
fn spawn(work: impl FnOnce() + Send + 'static) -> bool {
    thread::Builder::new()
        .name("testkit-proxy-relay".into())
        .spawn(work)
        .is_ok()
}
