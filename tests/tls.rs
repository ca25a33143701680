//! `rediss://` nodes: locking through TLS with a private CA, and with a client certificate
//! where the nodes require one (mutual TLS); a server certificate that the client cannot trust,
//! or a client certificate missing or refused, is a clear `NoQuorum`, never a panic and never an
//! unchecked connection.
//!
//! Needs the `tls` feature: `cargo test --features tls --test tls` (`required-features`).

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Runtime};
use cluster_singleton::{singleton, Error, NoQuorum, Outcome};
use cluster_singleton_testkit::{
    unrelated_ca_pem, unrelated_client_certificate, ClientCertificate, Cluster,
};
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

/// TLS nodes that require a client certificate signed by their CA.
fn mutual_tls_cluster(nodes: usize) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .tls_auth_clients(true)
        .password(PASSWORD)
        .start()
        .expect("start TLS redis-server nodes that require client certificates")
}

/// The settings of a runtime on `cluster`'s TLS nodes that trusts `ca_pem`.
fn config_trusting(cluster: &Cluster, ca_pem: &str) -> Config {
    Config::new(cluster.urls())
        .tls_root_certificate(ca_pem)
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
}

/// A runtime on `cluster`'s TLS nodes that trusts `ca_pem`.
fn runtime_trusting(cluster: &Cluster, ca_pem: &str) -> Runtime {
    config_trusting(cluster, ca_pem)
        .build()
        .expect("valid configuration")
}

/// A runtime on `cluster`'s TLS nodes that trusts their CA and shows `client`.
fn runtime_showing(cluster: &Cluster, client: &ClientCertificate) -> Runtime {
    config_trusting(cluster, cluster.tls_ca_pem())
        .tls_client_certificate(client.certificate_pem(), client.private_key_pem())
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
    let runtime = runtime_trusting(&cluster, cluster.tls_ca_pem());
    locks_and_releases(&cluster, &runtime).await;
}

async fn locks_and_releases(cluster: &Cluster, runtime: &Runtime) {
    let nodes = cluster.len();
    assert!(cluster.url(0).starts_with("rediss://"));

    let lease = runtime
        .lock("tls-job", Duration::from_secs(10))
        .await
        .expect("the TLS nodes answer")
        .expect("the key is free");
    let holding = (0..nodes)
        .filter(|&i| get(cluster, i, "singleton:lock:tls-job").as_deref() == Some(lease.token()))
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
    assert!(absent_everywhere(cluster, "singleton:lock:tls-job"));

    assert_eq!(runtime.scope(report()).await.unwrap(), Outcome::Ran("sent"));
    assert!(
        eventually(PROMPTLY, || absent_everywhere(
            cluster,
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

#[tokio::test]
async fn locks_and_releases_with_a_client_certificate_on_one_node() {
    let cluster = mutual_tls_cluster(1);
    let runtime = runtime_showing(&cluster, cluster.tls_client_certificate());
    locks_and_releases(&cluster, &runtime).await;
}

#[tokio::test]
async fn locks_and_releases_with_a_client_certificate_on_three_nodes() {
    let cluster = mutual_tls_cluster(3);
    let runtime = runtime_showing(&cluster, cluster.tls_client_certificate());
    locks_and_releases(&cluster, &runtime).await;
}

/// Checks that every failure of `err` says `advice`, that the message names the nodes without
/// their password, and that nothing reached the nodes.
fn assert_refused_by_every_node(cluster: &Cluster, err: &NoQuorum, advice: &str) {
    assert_eq!((err.nodes, err.answered), (cluster.len(), 0), "{err}");
    // The call stops waiting once no quorum can answer: two failures out of three may be all.
    assert!(err.failures.len() > cluster.len() / 2, "{err}");
    for failure in &err.failures {
        assert!(failure.cause.contains(advice), "{failure}");
        assert!(
            failure.cause.contains("Config::tls_client_certificate"),
            "the cause must say where to fix it: {failure}"
        );
        assert!(
            (0..cluster.len()).any(|i| failure.node == redacted_url(cluster, i)),
            "the failure must name its node: {failure}"
        );
    }
    let message = err.to_string();
    assert!(message.contains("rediss://:***@127.0.0.1:"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(
        absent_everywhere(cluster, "singleton:lock:tls-job"),
        "nothing may be written by a client the nodes refused"
    );
}

/// Node `i`'s URL as the runtime prints it: with its password hidden.
fn redacted_url(cluster: &Cluster, i: usize) -> String {
    cluster.url(i).replace(PASSWORD, "***")
}

#[tokio::test]
async fn without_a_client_certificate_the_nodes_refuse_with_a_clear_no_quorum() {
    let cluster = mutual_tls_cluster(3);
    let runtime = runtime_trusting(&cluster, cluster.tls_ca_pem());

    let err = no_quorum(&runtime).await;

    assert_refused_by_every_node(&cluster, &err, "requires a TLS client certificate");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_a_clear_no_quorum() {
    let cluster = mutual_tls_cluster(3);
    let stranger = unrelated_client_certificate().unwrap();
    let runtime = runtime_showing(&cluster, &stranger);

    let err = no_quorum(&runtime).await;

    assert_refused_by_every_node(&cluster, &err, "refused the TLS client certificate");
    assert!(!err.to_string().contains(stranger.private_key_pem()));
}

/// The lines of a PEM text's body: what must never appear in a message about it.
fn pem_body_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 8)
        .collect()
}

/// Builds `config` with a client certificate of `chain` and `key`, which must fail with an
/// `InvalidConfig` that contains `needle` and no line of `key`.
fn refused_client_certificate(chain: &str, key: &str, needle: &str) {
    let err = Config::new(["rediss://:secret@127.0.0.1:6380"])
        .tls_client_certificate(chain, key)
        .build()
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert!(
        message.contains("Config::tls_client_certificate"),
        "{message}"
    );
    assert!(message.contains(needle), "{needle:?} in {message}");
    assert!(!message.contains("secret"), "{message}");
    for line in pem_body_lines(key) {
        assert!(!message.contains(line), "the key leaked: {message}");
    }
}

#[test]
fn a_client_certificate_that_cannot_be_used_is_invalid_configuration() {
    let client = unrelated_client_certificate().unwrap();
    let other = unrelated_client_certificate().unwrap();
    let (chain, key) = (client.certificate_pem(), client.private_key_pem());

    refused_client_certificate("", key, "holds no certificate");
    refused_client_certificate("not a certificate", key, "holds no certificate");
    refused_client_certificate("-----BEGIN CERTIFICATE-----\nAAAA", key, "is not valid PEM");
    refused_client_certificate(key, chain, "holds no certificate");
    refused_client_certificate(chain, chain, "holds no private key");
    refused_client_certificate(chain, "", "holds no private key");
    let truncated_key = &key[..key.len() / 2];
    refused_client_certificate(chain, truncated_key, "is not valid PEM");
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
    refused_client_certificate(chain, encrypted, "is encrypted");
    refused_client_certificate(
        chain,
        other.private_key_pem(),
        "does not belong to the first certificate",
    );
    refused_client_certificate(
        &format!("{}{chain}", other.certificate_pem()),
        key,
        "does not belong to the first certificate",
    );

    // The same certificate and key are fine, also on a `memory://` runtime, and with the CA's
    // certificate after the client's.
    let fine = |config: Config| config.tls_client_certificate(chain, key).build().unwrap();
    fine(Config::new(["rediss://127.0.0.1:6380"]));
    fine(Config::new(["memory://"]));
    let with_ca = format!("{chain}{}", unrelated_ca_pem().unwrap());
    Config::new(["rediss://127.0.0.1:6380"])
        .tls_client_certificate(with_ca, key)
        .build()
        .unwrap();
}

#[test]
fn debug_output_says_a_client_certificate_is_set_and_nothing_more() {
    let client = unrelated_client_certificate().unwrap();
    let config = Config::new(["rediss://127.0.0.1:6380"])
        .tls_client_certificate(client.certificate_pem(), client.private_key_pem());
    let runtime = config.clone().build().unwrap();
    for printed in [format!("{config:?}"), format!("{runtime:?}")] {
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        for line in pem_body_lines(client.private_key_pem())
            .into_iter()
            .chain(pem_body_lines(client.certificate_pem()))
        {
            assert!(!printed.contains(line), "{printed}");
        }
    }
    let printed = format!("{config:?}");
    assert!(
        printed.contains("tls_client_certificate: Some("),
        "{printed}"
    );
    let unset = format!("{:?}", Config::new(["rediss://127.0.0.1:6380"]));
    assert!(unset.contains("tls_client_certificate: None"), "{unset}");
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
