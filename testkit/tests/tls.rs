//! TLS nodes: they speak TLS only, with a CA made for the cluster, and keep
//! doing so across restarts and through proxies; when told to, they require
//! a client certificate that the cluster's CA signed.

#![cfg(feature = "tls")]

use std::time::Duration;

use cluster_singleton_testkit::{
    unrelated_ca_pem, unrelated_client_certificate, ClientCertificate, Cluster, Error,
};

/// Connect timeout of the tests' own clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

/// A client of `url` that trusts only `ca_pem`.
fn client_trusting(url: &str, ca_pem: &str) -> redis::Client {
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.as_bytes().to_vec()),
        },
    )
    .expect("a TLS client")
}

/// A client of `url` that trusts only `ca_pem` and shows `client`.
fn client_showing(url: &str, ca_pem: &str, client: &ClientCertificate) -> redis::Client {
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: client.certificate_pem().as_bytes().to_vec(),
                client_key: client.private_key_pem().as_bytes().to_vec(),
            }),
            root_cert: Some(ca_pem.as_bytes().to_vec()),
        },
    )
    .expect("a TLS client with a client certificate")
}

/// Whether a connection from `client` answers a PING.
fn answers(client: &redis::Client) -> redis::RedisResult<String> {
    client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .and_then(|mut con| ping(&mut con))
}

#[test]
fn nodes_speak_tls_with_the_clusters_ca() {
    let cluster = Cluster::builder().nodes(2).tls(true).start().unwrap();
    assert!(cluster.is_tls());
    for i in 0..2 {
        assert_eq!(
            cluster.url(i),
            format!("rediss://127.0.0.1:{}", cluster.port(i))
        );
        let mut con = cluster.connection(i).unwrap();
        assert_eq!(ping(&mut con).unwrap(), "PONG");
        let mut con = client_trusting(&cluster.url(i), cluster.tls_ca_pem())
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .unwrap();
        assert_eq!(ping(&mut con).unwrap(), "PONG");
    }
}

#[test]
fn plain_tcp_and_a_wrong_ca_are_refused() {
    let cluster = Cluster::builder().tls(true).start().unwrap();
    let port = cluster.port(0);

    // The TLS port does not speak plain Redis, and nothing else listens.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .and_then(|mut con| ping(&mut con));
    assert!(plain.is_err(), "{plain:?}");

    let wrong = client_trusting(&cluster.url(0), &unrelated_ca_pem().unwrap())
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map(drop)
        .unwrap_err();
    assert!(
        wrong.to_string().contains("certificate"),
        "a wrong CA must fail on the certificate: {wrong}"
    );
}

#[test]
fn every_cluster_has_its_own_ca() {
    let first = Cluster::builder().tls(true).start().unwrap();
    let second = Cluster::builder().tls(true).start().unwrap();
    assert_ne!(first.tls_ca_pem(), second.tls_ca_pem());
    let crossed = client_trusting(&first.url(0), second.tls_ca_pem())
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map(drop);
    assert!(crossed.is_err(), "{crossed:?}");
}

#[test]
fn restarted_and_proxied_nodes_keep_tls() -> Result<(), Error> {
    let mut cluster = Cluster::builder()
        .tls(true)
        .proxied(true)
        .password("s3cret")
        .start()?;
    assert!(cluster.url(0).starts_with("rediss://:s3cret@127.0.0.1:"));
    assert_ne!(cluster.url(0), cluster.direct_url(0));

    // Through the proxy, which passes TLS through.
    let mut con = client_trusting(&cluster.url(0), cluster.tls_ca_pem())
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    cluster.restart(0)?;
    let mut con = cluster.connection(0)?;
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    Ok(())
}

#[test]
fn nodes_that_require_client_certificates_accept_only_the_clusters() -> Result<(), Error> {
    let mut cluster = Cluster::builder().tls_auth_clients(true).start()?;
    assert!(cluster.is_tls());
    let ca_pem = cluster.tls_ca_pem().to_owned();
    let url = cluster.url(0);
    let own = cluster.tls_client_certificate().clone();
    let stranger = unrelated_client_certificate()?;
    assert!(!format!("{own:?}").contains(own.private_key_pem()));

    for _start in 0..2 {
        assert_eq!(ping(&mut cluster.connection(0)?).unwrap(), "PONG");
        assert_eq!(
            answers(&client_showing(&url, &ca_pem, &own)).unwrap(),
            "PONG"
        );
        let without = answers(&client_trusting(&url, &ca_pem)).unwrap_err();
        assert!(
            without.to_string().contains("CertificateRequired"),
            "{without}"
        );
        let refused = answers(&client_showing(&url, &ca_pem, &stranger)).unwrap_err();
        assert!(refused.to_string().contains("UnknownCA"), "{refused}");
        // A restart keeps the requirement, and the certificates.
        cluster.restart(0)?;
    }
    Ok(())
}

#[test]
fn a_tls_cluster_that_does_not_require_them_accepts_client_certificates() {
    let cluster = Cluster::builder().tls(true).start().unwrap();
    let client = client_showing(
        &cluster.url(0),
        cluster.tls_ca_pem(),
        cluster.tls_client_certificate(),
    );
    assert_eq!(answers(&client).unwrap(), "PONG");
}

#[test]
#[should_panic(expected = "build it with `Cluster::builder().tls(true)`")]
fn the_ca_of_a_plain_cluster_panics_clearly() {
    let cluster = Cluster::start(0).unwrap();
    let _ = cluster.tls_ca_pem();
}
