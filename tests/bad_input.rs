//! Bad input at run time: each gives a clear error or outcome, nothing panics, and no key is
//! left behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cluster_singleton::runtime::Config;
use cluster_singleton::{Error, Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, Nodes, NODE_TIMEOUT, PROMPTLY};

const PASSWORD: &str = "s3cret-pa55word";
/// The node timeout plus room for a loaded CI machine.
const ABOUT_ONE_NODE_TIMEOUT: Duration = NODE_TIMEOUT.saturating_add(Duration::from_millis(800));

/// A loopback listener that is not Redis: it answers every connection with `reply` (or with
/// nothing, holding the connection open) from a thread of its own.
fn impostor(reply: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request);
            if let Some(reply) = reply {
                let _ = stream.write_all(reply);
            }
            held.push(stream); // never closed: a server that stops talking
        }
    });
    url
}

/// Locks on the one node of `url`, which fails within about a node timeout; the failure's
/// message and whether the node refused (as opposed to being out of reach).
async fn fails_quickly(url: String) -> (String, bool) {
    let runtime = Config::new([url])
        .node_timeout(NODE_TIMEOUT)
        .connect_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = runtime
        .lock("job", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < ABOUT_ONE_NODE_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    let (Error::NoQuorum(no_quorum) | Error::Refused(no_quorum)) = &err else {
        panic!("expected no quorum or a refusal, got {err:?}")
    };
    assert_eq!((no_quorum.answered, no_quorum.failures.len()), (0, 1));
    (err.to_string(), matches!(err, Error::Refused(_)))
}

/// As [`fails_quickly`], for a node that is out of reach (or not Redis): an outage.
async fn no_quorum_quickly(url: String) -> String {
    let (message, refused) = fails_quickly(url).await;
    assert!(!refused, "{message}");
    message
}

/// As [`fails_quickly`], for a node that refuses: a configuration to fix, not an outage.
async fn refused_quickly(url: String) -> String {
    let (message, refused) = fails_quickly(url).await;
    assert!(refused, "{message}");
    assert!(message.contains("not an outage"), "{message}");
    message
}

#[tokio::test]
async fn a_wrong_password() {
    let cluster = Cluster::builder()
        .nodes(1)
        .password(PASSWORD)
        .start()
        .unwrap();
    let url = format!("redis://:wrong-password@127.0.0.1:{}", cluster.port(0));
    let message = refused_quickly(url).await;
    assert!(message.contains(":***@127.0.0.1"), "{message}");
    assert!(
        !message.contains("wrong-password") && !message.contains(PASSWORD),
        "{message}"
    );
    let mut connection = cluster.connection(0).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn a_password_where_none_is_set() {
    let cluster = Cluster::start(1).unwrap();
    let message =
        refused_quickly(format!("redis://:{PASSWORD}@127.0.0.1:{}", cluster.port(0))).await;
    assert!(!message.contains(PASSWORD), "{message}");
}

#[tokio::test]
async fn an_unreachable_port() {
    // Port 1 on loopback: nothing listens there, so connecting is refused at once.
    let message = no_quorum_quickly("redis://127.0.0.1:1".into()).await;
    assert!(message.contains("redis://127.0.0.1:1"), "{message}");
}

#[tokio::test]
async fn a_server_that_answers_garbage() {
    no_quorum_quickly(impostor(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n"))).await;
}

#[tokio::test]
async fn a_server_that_answers_nothing() {
    let message = no_quorum_quickly(impostor(None)).await;
    assert!(
        message.contains("timed out") || message.contains("within"),
        "{message}"
    );
}

#[tokio::test]
async fn a_key_that_holds_another_type_is_busy_and_untouched() {
    let nodes = Nodes::start(3);
    for i in 0..3 {
        let mut connection = nodes.cluster.connection(i).unwrap();
        let _: () = redis::cmd("LPUSH")
            .arg("singleton:lock:listed")
            .arg("item")
            .query(&mut connection)
            .unwrap();
    }

    let outcome = nodes
        .runtime
        .run("listed", Duration::from_secs(5), async {})
        .await
        .unwrap();

    assert_eq!(
        outcome,
        Outcome::Skipped(Skip::Busy),
        "the key is taken, by something else"
    );
    for i in 0..3 {
        let mut connection = nodes.cluster.connection(i).unwrap();
        let kind: String = redis::cmd("TYPE")
            .arg("singleton:lock:listed")
            .query(&mut connection)
            .unwrap();
        assert_eq!(kind, "list");
    }
}

#[tokio::test]
async fn our_key_turned_into_another_type_fails_the_release_cleanly() {
    let nodes = Nodes::start(1);
    let lease = nodes
        .runtime
        .lock("retyped", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let mut connection = nodes.cluster.connection(0).unwrap();
    let _: () = redis::cmd("DEL")
        .arg("singleton:lock:retyped")
        .query(&mut connection)
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("singleton:lock:retyped")
        .arg("item")
        .query(&mut connection)
        .unwrap();

    let err = lease.release().await.unwrap_err();

    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let kind: String = redis::cmd("TYPE")
        .arg("singleton:lock:retyped")
        .query(&mut connection)
        .unwrap();
    assert_eq!(kind, "list", "not ours, not deleted");
}

#[tokio::test]
async fn a_very_long_key_and_a_non_ascii_key() {
    let nodes = Nodes::start(3);
    let long = "k".repeat(64 * 1024);
    for key in [long.as_str(), "счёт-💶:2026-11"] {
        let lease = nodes
            .runtime
            .lock(key, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("free");
        let redis_key = format!("singleton:lock:{key}");
        assert_eq!(lease.key(), redis_key);
        assert!(nodes.holding(&redis_key, lease.token()) >= 2);
        assert!(nodes
            .runtime
            .lock(key, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        lease.release().await.unwrap();
        assert!(eventually(PROMPTLY, || nodes.absent(&redis_key, &[])).await);
    }
}

#[tokio::test]
async fn scripts_flushed_from_the_server_load_again_on_their_own() {
    let cluster = Cluster::start(1).unwrap();
    let runtime = fresh_nodes(&cluster).build().unwrap();
    let mut connection = cluster.connection(0).unwrap();
    for round in 0..3 {
        let lease = runtime
            .lock("flushed", Duration::from_secs(5))
            .await
            .unwrap()
            .expect("free");
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut connection)
            .unwrap();

        lease.release().await.unwrap();

        let left: Option<String> = redis::cmd("GET")
            .arg("singleton:lock:flushed")
            .query(&mut connection)
            .unwrap();
        assert_eq!(left, None, "round {round}: released after NOSCRIPT");
    }
}
