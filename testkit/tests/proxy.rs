//! Tests of the fault-injecting proxy: against a plain echo server, where every
//! byte can be accounted for, and in front of real `redis-server` nodes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use cluster_singleton_testkit::{Cluster, Proxy};

/// A read that must time out waits this long: long against loopback's
/// microseconds, short for the suite.
const SILENCE: Duration = Duration::from_millis(300);
/// How long anything that should happen at once may take on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(5);
/// Pause between checks while polling.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The delay set in the latency tests: large against loopback, small for the
/// suite.
const LATENCY: Duration = Duration::from_millis(100);

/// A server that echoes every byte back, on a free loopback port, with one
/// thread per connection; it runs until the test process ends.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = io::copy(&mut reader, &mut stream);
            });
        }
    });
    addr
}

/// A client connection to `proxy` with a read timeout of [`SILENCE`].
fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(SILENCE)).unwrap();
    stream
}

/// Reads exactly `n` bytes, retrying timeouts until [`PROMPTLY`] has passed.
fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + PROMPTLY;
    let mut bytes = vec![0; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut bytes[got..]) {
            Ok(0) => panic!("connection closed after {got} of {n} bytes"),
            Ok(read) => got += read,
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => panic!("read failed after {got} of {n} bytes: {e}"),
        }
    }
    bytes
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Asserts that nothing arrives for [`SILENCE`] and the connection stays open.
fn assert_silent(stream: &mut TcpStream) {
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// Asserts that the connection ends (end of stream or reset) within
/// [`PROMPTLY`].
fn assert_closed(stream: &mut TcpStream) {
    let deadline = Instant::now() + PROMPTLY;
    let mut byte = [0; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return,
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) if !is_timeout(&e) => return,
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL_INTERVAL);
    }
}

#[test]
fn forwards_both_ways() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut client = connect(&proxy);
    client.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut client, 5), b"hello");
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn a_partition_holds_bytes_without_closing_and_a_heal_delivers_them() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut client = connect(&proxy);
    client.write_all(b"before").unwrap();
    assert_eq!(read_n(&mut client, 6), b"before");

    proxy.partition();
    client.write_all(b"during").unwrap();
    assert_silent(&mut client);
    assert_eq!(proxy.connections(), 1, "nothing was closed");

    proxy.heal();
    assert_eq!(read_n(&mut client, 6), b"during");
}

#[test]
fn a_new_connection_during_a_partition_is_held_unanswered() {
    let proxy = Proxy::start(echo_server()).unwrap();
    proxy.partition();
    // The kernel completes the handshake, as it does behind a real partition
    // for a listener that is up: only the answers never come.
    let mut client = connect(&proxy);
    client.write_all(b"anyone?").unwrap();
    assert_silent(&mut client);

    proxy.heal();
    assert_eq!(read_n(&mut client, 7), b"anyone?");
}

#[test]
fn latency_delays_each_direction_and_keeps_the_order() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut client = connect(&proxy);
    proxy.set_latency(LATENCY);
    assert_eq!(proxy.latency(), LATENCY);

    let started = Instant::now();
    client.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut client, 4), b"ping");
    let round_trip = started.elapsed();
    assert!(
        round_trip >= 2 * LATENCY,
        "a round trip took {round_trip:?}, less than twice the latency"
    );

    // Chunks sent while the latency drops must not overtake the slower ones
    // ahead of them.
    let mut sent = Vec::new();
    for i in 0..50u8 {
        if i == 25 {
            proxy.set_latency(Duration::ZERO);
        }
        client.write_all(&[i]).unwrap();
        sent.push(i);
    }
    assert_eq!(read_n(&mut client, sent.len()), sent);
}

#[test]
fn reset_closes_every_connection_and_new_ones_work() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    wait_for("both connections", || proxy.connections() == 2);

    proxy.reset();
    assert_eq!(proxy.connections(), 0);
    assert_closed(&mut first);
    assert_closed(&mut second);

    let mut third = connect(&proxy);
    third.write_all(b"again").unwrap();
    assert_eq!(read_n(&mut third, 5), b"again");
}

#[test]
fn a_reset_during_a_partition_closes_held_connections() {
    let proxy = Proxy::start(echo_server()).unwrap();
    proxy.partition();
    let mut held = connect(&proxy);
    wait_for("the held connection", || proxy.connections() == 1);
    proxy.reset();
    assert_closed(&mut held);
}

#[test]
fn a_connection_to_a_target_that_is_down_is_closed() {
    // A port that was free a moment ago: nothing listens there.
    let target = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(target).unwrap();
    let mut client = connect(&proxy);
    assert_closed(&mut client);
    wait_for("the link to be forgotten", || proxy.connections() == 0);
}

#[test]
fn the_server_closing_closes_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(listener.local_addr().unwrap()).unwrap();
    let mut client = connect(&proxy);
    let (server_side, _) = listener.accept().unwrap();
    drop(server_side);
    assert_closed(&mut client);
    // A half-close is passed on as such: the link ends once the client, too,
    // has closed its side.
    drop(client);
    wait_for("the link to be forgotten", || proxy.connections() == 0);
}

#[test]
fn dropping_the_proxy_closes_its_connections() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut client = connect(&proxy);
    wait_for("the connection", || proxy.connections() == 1);
    drop(proxy);
    assert_closed(&mut client);
}

fn ping(url: &str) -> redis::RedisResult<String> {
    let mut con = redis::Client::open(url)?.get_connection_with_timeout(SILENCE)?;
    con.set_read_timeout(Some(SILENCE))?;
    redis::cmd("PING").query(&mut con)
}

#[test]
fn a_proxied_cluster_hands_out_proxy_urls_and_checks_go_direct() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .proxied(true)
        .password("p@ss")
        .start()
        .unwrap();
    assert!(cluster.is_proxied());
    for i in 0..2 {
        let proxy = cluster.proxy(i);
        assert_eq!(proxy.target().port(), cluster.port(i));
        assert_eq!(
            cluster.url(i),
            format!("redis://:p%40ss@127.0.0.1:{}", proxy.port())
        );
        assert_eq!(
            cluster.direct_url(i),
            format!("redis://:p%40ss@127.0.0.1:{}", cluster.port(i))
        );
    }
    assert_eq!(ping(&cluster.url(0)).unwrap(), "PONG");

    cluster.proxy(0).partition();
    assert!(ping(&cluster.url(0)).is_err(), "cut off through the proxy");
    assert_eq!(ping(&cluster.direct_url(0)).unwrap(), "PONG");
    let mut direct = cluster.connection(0).unwrap();
    redis::cmd("PING").exec(&mut direct).unwrap();
    cluster.proxy(0).heal();
    assert_eq!(ping(&cluster.url(0)).unwrap(), "PONG");

    // The proxy keeps its port, and finds the node again, across a restart.
    let url = cluster.url(1);
    cluster.restart(1).unwrap();
    assert_eq!(cluster.url(1), url);
    assert_eq!(ping(&url).unwrap(), "PONG");
}

#[test]
#[should_panic(expected = "node 0 has no proxy")]
fn asking_an_unproxied_cluster_for_a_proxy_panics_clearly() {
    let cluster = Cluster::start(1).unwrap();
    assert!(!cluster.is_proxied());
    let _ = cluster.proxy(0);
}

#[test]
fn a_black_hole_silences_open_connections_and_lets_new_ones_through() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut old = connect(&proxy);
    old.write_all(b"before").unwrap();
    assert_eq!(read_n(&mut old, 6), b"before");

    proxy.black_hole_open_connections();
    old.write_all(b"lost").unwrap();
    let mut byte = [0; 1];
    let silent = old.read(&mut byte);
    assert!(
        silent.as_ref().is_err_and(is_timeout),
        "a black-holed connection hears nothing, and is not closed: {silent:?}"
    );

    let mut new = connect(&proxy);
    new.write_all(b"after").unwrap();
    assert_eq!(read_n(&mut new, 5), b"after");
}

/// `INFO server`'s `run_id` over `con`.
fn run_id(con: &mut redis::Connection) -> redis::RedisResult<String> {
    let info: redis::InfoDict = redis::cmd("INFO").arg("server").query(con)?;
    Ok(info.get("run_id").expect("INFO server has a run_id"))
}

#[test]
fn a_redis_aware_proxy_keeps_the_client_across_a_restart() {
    let mut cluster = Cluster::builder().nodes(1).proxied(true).start().unwrap();
    cluster.proxy(0).set_redis_aware(true);
    let client = redis::Client::open(cluster.url(0)).unwrap();
    let mut con = client.get_connection_with_timeout(PROMPTLY).unwrap();
    con.set_read_timeout(Some(PROMPTLY)).unwrap();
    let before = run_id(&mut con).unwrap();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();

    cluster.restart(0).unwrap();

    // The request that meets the closed server connection may be answered with
    // the proxy's error; the one after it reaches the new server, over the
    // same client connection.
    let after = run_id(&mut con).or_else(|lost| {
        assert!(lost.to_string().contains("proxy"), "{lost}");
        run_id(&mut con)
    });
    let after = after.unwrap();
    assert_ne!(before, after, "a new server behind the same connection");
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(value, None, "the restarted node forgot the key");
    assert_eq!(cluster.proxy(0).connections(), 1);
}

#[test]
fn a_redis_aware_proxy_answers_requests_lost_with_the_server() {
    let mut cluster = Cluster::builder().nodes(1).proxied(true).start().unwrap();
    cluster.proxy(0).set_redis_aware(true);
    let client = redis::Client::open(cluster.url(0)).unwrap();
    let mut con = client.get_connection_with_timeout(PROMPTLY).unwrap();
    con.set_read_timeout(Some(PROMPTLY)).unwrap();
    redis::cmd("PING").exec(&mut con).unwrap();

    // A request the server never answers: it is killed while it waits.
    let pid = i32::try_from(cluster.pid(0).unwrap()).unwrap();
    let killer = thread::spawn(move || {
        thread::sleep(SILENCE);
        // SAFETY: kill(2) has no memory effects; the pid is the cluster's
        // child, not reaped yet (the cluster reaps it below).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    });
    let lost = redis::cmd("BLPOP")
        .arg("never")
        .arg(0)
        .query::<redis::Value>(&mut con);
    killer.join().unwrap();
    let err = lost.unwrap_err();
    assert!(
        err.to_string().contains("ended before it answered"),
        "{err}"
    );

    cluster.kill(0).unwrap();
    cluster.start_node(0).unwrap();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(
        pong, "PONG",
        "the same client connection, and the pairing of replies is kept"
    );
}
