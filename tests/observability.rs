//! Every call leaves a `tracing` span with its key, votes, validity, outcome and time; lost
//! leases and failed releases are warnings; with the `metrics` feature, counters and histograms
//! reach the `metrics` facade. A capturing subscriber and recorder check them.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cluster_singleton::runtime::Options;
use cluster_singleton::{Error, Outcome};
use cluster_singleton_testkit::Cluster;
use common::Nodes;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = HashMap<String, String>;

/// Every `singleton` span (its fields as last recorded) and every event at `warn` or above.
#[derive(Clone, Default)]
struct Captured {
    spans: Arc<Mutex<HashMap<u64, Fields>>>,
    warnings: Arc<Mutex<Vec<Fields>>>,
}

impl Captured {
    fn spans_for(&self, key: &str) -> Vec<Fields> {
        let spans = self.spans.lock().unwrap();
        spans
            .values()
            .filter(|fields| fields.get("key").map(String::as_str) == Some(key))
            .cloned()
            .collect()
    }

    fn warnings_mentioning(&self, text: &str) -> Vec<Fields> {
        let warnings = self.warnings.lock().unwrap();
        warnings
            .iter()
            .filter(|fields| fields.values().any(|value| value.contains(text)))
            .cloned()
            .collect()
    }
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() == "singleton" {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            // The span it nests under, as `@parent`: the one in effect when it was made.
            if let Some(parent) = ctx.span_scope(id).and_then(|mut scope| scope.nth(1)) {
                fields.insert("@parent".to_owned(), parent.name().to_owned());
            }
            self.spans.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(fields) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            let mut fields = Fields::new();
            event.record(&mut Collect(&mut fields));
            self.warnings.lock().unwrap().push(fields);
        }
    }
}

/// The capture, installed once as the process's subscriber: the runtime's own thread emits
/// events too, and a thread-local subscriber would miss them.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(captured.clone());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        captured
    })
}

fn field(fields: &Fields, name: &str) -> String {
    fields
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no `{name}` in {fields:?}"))
}

#[tokio::test]
async fn a_call_that_runs_leaves_a_span_with_its_votes_and_outcome() {
    let captured = captured();
    let nodes = Nodes::start(3);

    let outcome = nodes
        .runtime
        .run("traced-ran", Duration::from_secs(10), async {})
        .await
        .unwrap();

    assert_eq!(outcome, Outcome::Ran(()));
    let spans = captured.spans_for("traced-ran");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(field(span, "nodes"), "3");
    assert!(
        field(span, "granted").parse::<usize>().unwrap() >= 2,
        "{span:?}"
    );
    assert_eq!(field(span, "failed"), "0");
    assert_eq!(field(span, "outcome"), "ran");
    let validity: u64 = field(span, "validity_ms").parse().unwrap();
    assert!(validity > 9_000 && validity <= 10_000, "{span:?}");
    assert!(field(span, "elapsed_ms").parse::<u64>().is_ok());
}

/// A call's span is made when the call is first polled, not when its future is made: under the
/// span that instruments that future and the subscriber given to it, timed from then; and a call
/// dropped unpolled makes none.
#[tokio::test]
async fn the_span_is_made_when_the_call_is_first_polled() {
    use tracing::instrument::WithSubscriber;
    use tracing::Instrument;
    let global = captured();
    let runtime = cluster_singleton::runtime::Config::new(["memory://span-at-first-poll"])
        .build()
        .unwrap();
    let ttl = Duration::from_secs(10);

    drop(runtime.run("span-never-polled", ttl, async {}));
    assert_eq!(global.spans_for("span-never-polled"), Vec::<Fields>::new());

    // Only this future's subscriber sees the call: a span made when the future was would have
    // gone to the global one, with no parent, and would count the wait below.
    let local = Captured::default();
    let subscriber = tracing::Dispatch::new(tracing_subscriber::registry().with(local.clone()));
    let request = tracing::dispatcher::with_default(&subscriber, || tracing::info_span!("request"));
    let wait = Duration::from_millis(300);
    let call = runtime.run("span-polled-later", ttl, async {});
    tokio::time::sleep(wait).await;
    let outcome = call
        .instrument(request)
        .with_subscriber(subscriber)
        .await
        .unwrap();

    assert_eq!(outcome, Outcome::Ran(()));
    assert_eq!(global.spans_for("span-polled-later"), Vec::<Fields>::new());
    let spans = local.spans_for("span-polled-later");
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(field(&spans[0], "@parent"), "request");
    assert_eq!(field(&spans[0], "outcome"), "ran");
    let elapsed: u64 = field(&spans[0], "elapsed_ms").parse().unwrap();
    assert!(elapsed < wait.as_millis() as u64, "{spans:?}");
}

#[tokio::test]
async fn a_busy_call_and_a_failing_call_say_so() {
    let captured = captured();
    let mut nodes = Nodes::start(3);
    let held = nodes
        .runtime
        .lock("traced-busy", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();

    let busy = nodes
        .runtime
        .run("traced-busy", Duration::from_secs(10), async {})
        .await
        .unwrap();
    assert!(!busy.ran());
    let span = &captured.spans_for("traced-busy")[0];
    assert_eq!(field(span, "outcome"), "busy", "{span:?}");
    // The holder returned once a majority granted it, so the busy call may still have won the
    // one node the holder had not reached yet; what makes it busy is a majority refusing.
    assert!(
        field(span, "busy").parse::<usize>().unwrap() >= 2,
        "{span:?}"
    );
    held.release().await.unwrap();

    nodes.cluster.kill(0).unwrap();
    nodes.cluster.kill(1).unwrap();
    let failed = nodes
        .runtime
        .run("traced-failed", Duration::from_secs(10), async {})
        .await;
    assert!(matches!(failed, Err(Error::NoQuorum(_))));
    let span = &captured.spans_for("traced-failed")[0];
    assert_eq!(field(span, "outcome"), "no_quorum");
    assert_eq!(field(span, "failed"), "2");
}

#[tokio::test]
async fn a_lost_lease_is_a_warning_that_names_no_password() {
    let captured = captured();
    let cluster = Cluster::builder()
        .nodes(1)
        .password("hunter2-secret")
        .start()
        .unwrap();
    let runtime = common::fresh_nodes(&cluster).build().unwrap();
    let options = Options::new(Duration::from_millis(300)).renew(false);

    let lost = runtime
        .run_with(
            "traced-lost",
            options,
            tokio::time::sleep(Duration::from_secs(1)),
            |_| true,
        )
        .await;

    assert!(matches!(lost, Err(Error::LeaseLost { .. })));
    assert_eq!(
        field(&captured.spans_for("traced-lost")[0], "outcome"),
        "lease_lost"
    );
    let warnings = captured.warnings_mentioning("traced-lost");
    assert!(!warnings.is_empty(), "no warning for the lost lease");
    let everything = format!(
        "{:?} {:?}",
        captured.warnings.lock().unwrap(),
        captured.spans.lock().unwrap()
    );
    assert!(
        !everything.contains("hunter2-secret"),
        "a password reached the logs"
    );
}

#[cfg(feature = "metrics")]
mod metrics_facade {
    use std::sync::OnceLock;
    use std::time::Duration;

    use cluster_singleton::runtime::Options;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use metrics_util::MetricKind;

    use super::common::Nodes;

    fn snapshotter() -> &'static Snapshotter {
        static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
        SNAPSHOTTER.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            metrics::set_global_recorder(recorder).expect("the only recorder");
            snapshotter
        })
    }

    type Snapshot = Vec<(metrics_util::CompositeKey, DebugValue)>;

    /// Takes the recorder's snapshot once: taking one drains histograms.
    fn snapshot() -> Snapshot {
        snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _description, value)| (key, value))
            .collect()
    }

    /// The value of the metric `name` whose labels include all of `labels`, summed over series;
    /// histograms count their samples.
    fn value(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for (key, value) in snapshot {
            let (kind, key) = (key.kind(), key.key());
            let matches = key.name() == name
                && labels.iter().all(|(label, wanted)| {
                    key.labels()
                        .any(|l| l.key() == *label && l.value() == *wanted)
                });
            if !matches {
                continue;
            }
            total += match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => *n as f64,
                (MetricKind::Histogram, DebugValue::Histogram(samples)) => samples.len() as f64,
                _ => 0.0,
            };
        }
        total
    }

    #[tokio::test]
    async fn counters_and_histograms_reach_the_metrics_facade() {
        snapshotter();
        let mut nodes = Nodes::start(3);
        let ttl = Duration::from_secs(10);

        for _ in 0..3 {
            assert!(nodes
                .runtime
                .run("metered", ttl, async {})
                .await
                .unwrap()
                .ran());
        }
        let held = nodes.runtime.lock("metered", ttl).await.unwrap().unwrap();
        assert!(!nodes
            .runtime
            .run("metered", ttl, async {})
            .await
            .unwrap()
            .ran());
        held.release().await.unwrap();
        let lost = Options::new(Duration::from_millis(200)).renew(false);
        let _ = nodes
            .runtime
            .run_with(
                "metered",
                lost,
                tokio::time::sleep(Duration::from_millis(600)),
                |_| true,
            )
            .await;
        nodes.cluster.kill(0).unwrap();
        nodes.cluster.kill(1).unwrap();
        let _ = nodes.runtime.run("metered", ttl, async {}).await;

        let taken = snapshot();
        let key = [("key", "metered")];
        assert_eq!(value(&taken, "cluster_singleton_acquired_total", &key), 4.0);
        assert_eq!(
            value(
                &taken,
                "cluster_singleton_skipped_total",
                &[("key", "metered"), ("reason", "busy")]
            ),
            1.0
        );
        assert_eq!(
            value(&taken, "cluster_singleton_leases_lost_total", &key),
            1.0
        );
        assert_eq!(
            value(
                &taken,
                "cluster_singleton_errors_total",
                &[("key", "metered"), ("kind", "lease_lost")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &taken,
                "cluster_singleton_errors_total",
                &[("key", "metered"), ("kind", "no_quorum")]
            ),
            1.0
        );
        assert_eq!(
            value(&taken, "cluster_singleton_acquire_seconds", &key),
            6.0,
            "every attempt is timed"
        );
        assert_eq!(
            value(&taken, "cluster_singleton_hold_seconds", &key),
            3.0,
            "every released run is timed"
        );
    }
}

#[tokio::test]
async fn memory_at_init_warns_that_it_locks_nothing_across_processes() {
    let captured = captured();
    cluster_singleton::runtime::init(["memory://observability"])
        .await
        .unwrap();
    let warnings = captured.warnings_mentioning("locks nothing across processes");
    assert_eq!(warnings.len(), 1, "{:?}", captured.warnings.lock().unwrap());
}
