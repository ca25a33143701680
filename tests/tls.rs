//! `rediss://` nodes: locking through TLS with a private CA, and a server certificate that the
//! client cannot trust is a clear `NoQuorum`, never a panic and never an unchecked connection.
//!
//! Needs the `tls` feature: `cargo test --features tls --test tls`.

#![cfg(feature = "tls")]

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::{singleton, Error, NoQuorum, Outcome};
use cluster_singleton_testkit::{unrelated_ca_pem, Cluster};
use common::{eventually, PROMPTLY};

const PASSWORD: &str = "tls-pa55word";

/// Longer than the other tests' node timeout: the first command of a node waits for its TLS
/// handshake, which a loaded two-core machine may take a while to finish in a debug build.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

#[singleton(key = "tls-report", ttl = "10s")]
async fn report() -> &'static str {
    "sent"
}

fn tls_cluster(nodes: usize) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .tls(true)
        .password(PASSWORD)
        .start()
        .expect("start TLS redis-server nodes")
}

/// A runtime on `cluster`'s TLS nodes that trusts `ca_pem`.
fn runtime_trusting(cluster: &Cluster, ca_pem: &str) -> Runtime {
    Config::new(cluster.urls())
        .tls_root_certificate(ca_pem)
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .expect("valid configuration")
}

fn get(cluster: &Cluster, i: usize, key: &str) -> Option<String> {
    let mut connection = cluster.connection(i).expect("connect to node");
    redis::cmd("GET")
        .arg(key)
        .query(&mut connection)
        .expect("GET")
}

fn absent_everywhere(cluster: &Cluster, key: &str) -> bool {
    (0..cluster.len()).all(|i| get(cluster, i, key).is_none())
}

async fn locks_and_releases_through_tls(nodes: usize) {
    let cluster = tls_cluster(nodes);
    assert!(cluster.url(0).starts_with("rediss://"));
    let runtime = runtime_trusting(&cluster, cluster.tls_ca_pem());

    let lease = runtime
        .lock("tls-job", Duration::from_secs(10))
        .await
        .expect("the TLS nodes answer")
        .expect("the key is free");
    let holding = (0..nodes)
        .filter(|&i| get(&cluster, i, "singleton:lock:tls-job").as_deref() == Some(lease.token()))
        .count();
    assert!(holding > nodes / 2, "a quorum holds the token: {holding}");
    assert!(
        runtime
            .lock("tls-job", Duration::from_secs(10))
            .await
            .unwrap()
            .is_none(),
        "a held key is busy over TLS too"
    );
    lease.release().await.expect("release through TLS");
    assert!(absent_everywhere(&cluster, "singleton:lock:tls-job"));

    assert_eq!(runtime.scope(report()).await.unwrap(), Outcome::Ran("sent"));
    assert!(
        eventually(PROMPTLY, || absent_everywhere(
            &cluster,
            "singleton:lock:tls-report"
        ))
        .await,
        "the attribute's release must reach every TLS node"
    );
}

#[tokio::test]
async fn locks_and_releases_through_one_tls_node() {
    locks_and_releases_through_tls(1).await;
}

#[tokio::test]
async fn locks_and_releases_through_three_tls_nodes() {
    locks_and_releases_through_tls(3).await;
}

/// The error of a lock on `runtime`, which must be `NoQuorum`.
async fn no_quorum(runtime: &Runtime) -> NoQuorum {
    match runtime.lock("tls-job", Duration::from_secs(10)).await {
        Err(Error::NoQuorum(no_quorum)) => no_quorum,
        other => panic!("expected NoQuorum, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_ca_is_a_clear_no_quorum() {
    let cluster = tls_cluster(3);
    let runtime = runtime_trusting(&cluster, &unrelated_ca_pem().unwrap());

    let err = no_quorum(&runtime).await;

    assert_eq!((err.nodes, err.answered), (3, 0));
    // The call stops waiting once no quorum can answer: two failures out of three may be all.
    assert!(err.failures.len() >= 2, "{err}");
    for failure in &err.failures {
        assert!(failure.cause.contains("certificate"), "{failure}");
        assert!(
            failure.cause.contains("Config::tls_root_certificate"),
            "the cause must say where to fix it: {failure}"
        );
    }
    let message = err.to_string();
    assert!(message.contains("rediss://:***@127.0.0.1:"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(
        absent_everywhere(&cluster, "singleton:lock:tls-job"),
        "nothing may be written through a connection whose server was not trusted"
    );
}

#[tokio::test]
async fn without_a_root_certificate_the_systems_roots_decide() {
    // The test CA is in no system trust store, so a client that is not told about it refuses
    // the nodes, rather than trusting whatever answers.
    let cluster = tls_cluster(1);
    let runtime = Config::new(cluster.urls())
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();

    let err = no_quorum(&runtime).await;

    assert!(err.failures[0].cause.contains("certificate"), "{err}");
}

#[test]
fn a_root_certificate_that_is_not_pem_is_invalid_configuration() {
    for url in [
        "rediss://:secret@127.0.0.1:6380",
        "redis://:secret@127.0.0.1:6379",
    ] {
        for pem in [
            &b"not a certificate"[..],
            b"",
            b"-----BEGIN CERTIFICATE-----\nAAAA",
        ] {
            let err = Config::new([url])
                .tls_root_certificate(pem)
                .build()
                .unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
            assert!(message.contains("tls_root_certificate"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}

#[test]
fn insecure_urls_are_refused() {
    let err = Config::new(["rediss://:secret@127.0.0.1:6380/#insecure"])
        .build()
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert!(message.contains("#insecure"), "{message}");
    assert!(message.contains("#1"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
