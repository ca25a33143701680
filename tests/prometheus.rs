//! The metrics as an operator reads them: through a Prometheus exporter, installed as the
//! process's recorder before any runtime is built, as a program would. Every metric explains
//! itself (`# HELP`, `# TYPE`, its unit in its name), the per-node series name each node with
//! its password hidden, and keys with placeholders can be labelled by their template.
//!
//! Run with `cargo test --features metrics --test prometheus`.

#![cfg(feature = "metrics")]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use cluster_singleton::runtime::{Config, KeyLabel, Options, Runtime};
use cluster_singleton::{singleton, Error, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, NODE_TIMEOUT};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const SECRET: &str = "hunter2-scraped";
const TTL: Duration = Duration::from_secs(10);

/// The exporter, installed once as the process's recorder, before the first runtime is built:
/// the runtime describes its metrics to the recorder installed then.
fn exporter() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            // Units and `_total` go into the names, as Prometheus recommends; the crate's names
            // already carry them, so nothing is added twice.
            .with_recommended_naming(true)
            .install_recorder()
            .expect("the only recorder")
    })
}

fn scrape() -> String {
    exporter().render()
}

/// The node's name in the metrics: its URL with the password hidden.
fn node_label(cluster: &Cluster, i: usize) -> String {
    let url = cluster.url(i);
    assert!(
        url.contains(SECRET),
        "the test kit puts the password in the URL"
    );
    format!("node=\"{}\"", url.replace(SECRET, "***"))
}

/// The value of the series whose line starts with `name{` and has all of `labels`.
fn value(scraped: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scraped
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| {
            let (_, value) = line.rsplit_once(' ').expect("a value after the labels");
            value.parse().expect("a number")
        })
}

fn assert_explained(scraped: &str, name: &str, kind: &str, help: &str) {
    assert!(
        scraped.contains(&format!("# HELP {name} {help}")),
        "no description `{help}` for {name}:\n{scraped}"
    );
    assert!(
        scraped.contains(&format!("# TYPE {name} {kind}\n")),
        "{name} is not a {kind}:\n{scraped}"
    );
}

/// Three fresh nodes behind a password, and a runtime on them.
fn protected_nodes() -> (Cluster, Runtime) {
    let cluster = Cluster::builder()
        .nodes(3)
        .password(SECRET)
        .start()
        .unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    (cluster, runtime)
}

#[tokio::test]
async fn a_scrape_describes_every_metric_and_names_nodes_without_their_password() {
    exporter();
    let (mut cluster, runtime) = protected_nodes();

    // A call that ran, and one that was skipped.
    let ran = runtime.run("scraped", TTL, async {}).await.unwrap();
    assert_eq!(ran, Outcome::Ran(()));
    let held = runtime.lock("scraped", TTL).await.unwrap().unwrap();
    assert!(!runtime.run("scraped", TTL, async {}).await.unwrap().ran());
    held.release().await.unwrap();

    // A call against a cluster with one node down and one frozen: no quorum.
    cluster.kill(0).unwrap();
    cluster.freeze(1).unwrap();
    let failed = runtime.run("scraped", TTL, async {}).await;
    cluster.resume(1).unwrap();
    assert!(matches!(failed, Err(Error::NoQuorum(_))), "{failed:?}");

    // And one against a node inside its restart grace: it just started, and this runtime keeps
    // the default grace.
    let young_cluster = Cluster::builder()
        .nodes(1)
        .password(SECRET)
        .start()
        .unwrap();
    let careful = Config::new(young_cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let refused = careful.run("scraped-young", TTL, async {}).await;
    assert!(matches!(refused, Err(Error::NoQuorum(_))), "{refused:?}");
    // The gauges are set by the once-a-second check of every node.
    let young = node_label(&young_cluster, 0);
    let of_age = node_label(&cluster, 2);
    assert!(
        eventually(Duration::from_secs(5), || {
            let scraped = scrape();
            value(&scraped, "cluster_singleton_node_in_grace", &[&young]) == Some(1.0)
                && value(&scraped, "cluster_singleton_node_in_grace", &[&of_age]) == Some(0.0)
        })
        .await,
        "the grace gauges were never set:\n{}",
        scrape()
    );

    let scraped = scrape();
    assert!(!scraped.contains(SECRET), "a password reached the metrics");
    for (name, kind, help) in [
        ("cluster_singleton_acquired_total", "counter", "Locks taken"),
        (
            "cluster_singleton_skipped_total",
            "counter",
            "Calls that did not run their body",
        ),
        (
            "cluster_singleton_errors_total",
            "counter",
            "Calls that failed",
        ),
        (
            "cluster_singleton_acquire_seconds",
            "summary",
            "Time to take the lock",
        ),
        (
            "cluster_singleton_hold_seconds",
            "summary",
            "Time from taking the lock",
        ),
        (
            "cluster_singleton_node_votes_refused_total",
            "counter",
            "Answers of a Redis node that did not count",
        ),
        (
            "cluster_singleton_node_timeouts_total",
            "counter",
            "Commands a Redis node did not answer",
        ),
        (
            "cluster_singleton_node_in_grace",
            "gauge",
            "1 while a Redis node's vote",
        ),
        (
            "cluster_singleton_node_grace_remaining_seconds",
            "gauge",
            "Time until a Redis node's vote counts again",
        ),
    ] {
        assert_explained(&scraped, name, kind, help);
    }
    // The units are in the names already: the exporter's unit suffix adds nothing.
    assert!(!scraped.contains("_seconds_seconds"), "{scraped}");
    assert!(
        value(
            &scraped,
            "cluster_singleton_acquire_seconds_count",
            &["key=\"scraped\""]
        ) >= Some(3.0)
    );

    let key = "key=\"scraped\"";
    assert_eq!(
        value(&scraped, "cluster_singleton_acquired_total", &[key]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scraped,
            "cluster_singleton_skipped_total",
            &[key, "reason=\"busy\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scraped,
            "cluster_singleton_errors_total",
            &[key, "kind=\"no_quorum\""]
        ),
        Some(1.0)
    );
    // Per node, by name: the dead node's votes were missing, the frozen node timed out, the
    // young node's vote did not count yet.
    let down = node_label(&cluster, 0);
    let frozen = node_label(&cluster, 1);
    assert!(
        value(
            &scraped,
            "cluster_singleton_node_votes_refused_total",
            &[&down, "reason=\"unreachable\""]
        ) >= Some(1.0),
        "{scraped}"
    );
    assert!(
        value(
            &scraped,
            "cluster_singleton_node_timeouts_total",
            &[&frozen]
        ) >= Some(1.0),
        "{scraped}"
    );
    assert!(
        value(
            &scraped,
            "cluster_singleton_node_votes_refused_total",
            &[&young, "reason=\"young\""]
        ) >= Some(1.0),
        "{scraped}"
    );
    let left = value(
        &scraped,
        "cluster_singleton_node_grace_remaining_seconds",
        &[&young],
    )
    .expect("the young node's grace left");
    assert!(left > 50.0 && left <= 62.0, "{left} s of grace left");
}

#[tokio::test]
async fn a_broken_connection_counts_as_a_reconnect_of_its_node() {
    exporter();
    let (mut cluster, runtime) = protected_nodes();
    assert!(runtime
        .run("scraped-reconnect", TTL, async {})
        .await
        .unwrap()
        .ran());

    let restarted = node_label(&cluster, 2);
    assert_eq!(
        value(
            &scrape(),
            "cluster_singleton_node_reconnects_total",
            &[&restarted]
        ),
        None
    );
    // The restart breaks the open connection to node 2: the once-a-second check (or a call)
    // finds it so and gives it up for a new one.
    cluster.restart(2).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            value(
                &scrape(),
                "cluster_singleton_node_reconnects_total",
                &[&restarted],
            ) >= Some(1.0)
        })
        .await,
        "no reconnect counted:\n{}",
        scrape()
    );
    let scraped = scrape();
    assert_explained(
        &scraped,
        "cluster_singleton_node_reconnects_total",
        "counter",
        "Connections to a Redis node given up for a new one",
    );
}

#[singleton(key = "tenant-report:{tenant}", ttl = "10s")]
async fn tenant_report(tenant: u32) -> u32 {
    tenant
}

#[tokio::test]
async fn keys_with_placeholders_can_be_labelled_by_their_template() {
    exporter();
    let cluster = Cluster::start(1).unwrap();
    let by_template = fresh_nodes(&cluster)
        .metrics_key_label(KeyLabel::Template)
        .build()
        .unwrap();
    let by_key: Runtime = fresh_nodes(&cluster).build().unwrap();

    by_template
        .scope(async {
            assert_eq!(tenant_report(1).await.unwrap(), Outcome::Ran(1));
            assert_eq!(tenant_report(2).await.unwrap(), Outcome::Ran(2));
        })
        .await;
    by_key
        .scope(async { assert_eq!(tenant_report(3).await.unwrap(), Outcome::Ran(3)) })
        .await;
    // Without the attribute: a key formatted by hand is labelled by its template when one is
    // given, and by itself otherwise.
    let options = Options::new(TTL);
    let templated = options.key_template("tenant-adhoc:{id}");
    for (key, options) in [("tenant-adhoc:7", templated), ("tenant-adhoc:8", options)] {
        let outcome = by_template.run_with(key, options, async {}, |_| true).await;
        assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    }

    let scraped = scrape();
    let acquired = |key: &str| {
        value(
            &scraped,
            "cluster_singleton_acquired_total",
            &[&format!("key=\"{key}\"")],
        )
    };
    assert_eq!(acquired("tenant-report:{tenant}"), Some(2.0), "{scraped}");
    assert_eq!(acquired("tenant-report:1"), None, "{scraped}");
    assert_eq!(acquired("tenant-report:2"), None, "{scraped}");
    assert_eq!(acquired("tenant-report:3"), Some(1.0), "{scraped}");
    assert_eq!(acquired("tenant-adhoc:{id}"), Some(1.0), "{scraped}");
    assert_eq!(acquired("tenant-adhoc:8"), Some(1.0), "{scraped}");
    assert!(
        value(
            &scraped,
            "cluster_singleton_hold_seconds_count",
            &["key=\"tenant-report:{tenant}\""]
        ) == Some(2.0),
        "{scraped}"
    );
}
