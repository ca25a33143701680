//! Logs that page for the right thing: one event per call, at a level that says whether someone
//! should look (INFO ran, DEBUG skipped, WARN no quorum or a lost lease, never ERROR for
//! contention), and no warning for a node that could not have held the lock or for a clean
//! shutdown.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cluster_singleton::{Error, Outcome};
use common::Nodes;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One event: its level, its message and fields, and the key of the `singleton` span it is in.
#[derive(Clone, Debug)]
struct Logged {
    level: Level,
    text: String,
    key: Option<String>,
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Logged>>>);

impl Captured {
    /// The events of the calls on `key`, and every event at WARN or above that names it.
    fn about(&self, key: &str) -> Vec<Logged> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|event| event.key.as_deref() == Some(key) || event.text.contains(key))
            .cloned()
            .collect()
    }
}

/// A span's `key` field, kept in its extensions.
struct SpanKey(String);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

struct KeyOf(Option<String>);

impl Visit for KeyOf {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "key" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() == "singleton" {
            let mut key = KeyOf(None);
            attrs.record(&mut key);
            if let (Some(key), Some(span)) = (key.0, ctx.span(id)) {
                span.extensions_mut().insert(SpanKey(key));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        let key = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<SpanKey>().map(|key| key.0.clone()))
        });
        self.0.lock().unwrap().push(Logged {
            level: *event.metadata().level(),
            text,
            key,
        });
    }
}

/// Installed once for the process: the crate's own thread logs too.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(captured.clone());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        captured
    })
}

/// The levels of the events at INFO and above logged inside the calls on `key` (below that,
/// each node's vote is a DEBUG event of its own, for whoever looks closer).
fn call_levels(captured: &Captured, key: &str) -> Vec<Level> {
    captured
        .about(key)
        .iter()
        .filter(|event| event.key.as_deref() == Some(key) && event.level <= Level::INFO)
        .map(|event| event.level)
        .collect()
}

#[tokio::test]
async fn a_run_is_one_info_event_and_a_skip_one_debug_event() {
    let captured = captured();
    let nodes = Nodes::start(3);

    let ran = nodes
        .runtime
        .run("logged-ran", Duration::from_secs(10), async {})
        .await;
    assert_eq!(ran.unwrap(), Outcome::Ran(()));
    let events = captured.about("logged-ran");
    assert_eq!(
        call_levels(captured, "logged-ran"),
        [Level::INFO],
        "{events:?}"
    );
    assert!(
        events.iter().any(|event| event.level == Level::INFO
            && event.text.contains("the body ran under the lock")),
        "{events:?}"
    );

    let held = nodes
        .runtime
        .lock("logged-busy", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let skipped = nodes
        .runtime
        .run("logged-busy", Duration::from_secs(10), async {})
        .await;
    assert!(matches!(skipped, Ok(Outcome::Skipped(_))));
    let events = captured.about("logged-busy");
    assert!(
        call_levels(captured, "logged-busy").is_empty(),
        "{events:?}"
    );
    let skip = events.iter().find(|event| event.text.contains("skipped"));
    assert_eq!(
        skip.map(|event| event.level),
        Some(Level::DEBUG),
        "{events:?}"
    );
    assert!(
        skip.unwrap().text.contains("another holder has the lock"),
        "{events:?}"
    );
    held.release().await.unwrap();
}

#[tokio::test]
async fn no_quorum_is_one_warning_and_a_node_that_was_down_is_not_one() {
    let captured = captured();
    let mut nodes = Nodes::start(3);
    nodes.cluster.kill(2).unwrap();

    // Node 2 was down when the lock was taken: failing to release there is no news.
    let ran = nodes
        .runtime
        .run("logged-minority-down", Duration::from_secs(10), async {})
        .await;
    assert_eq!(ran.unwrap(), Outcome::Ran(()));
    let events = captured.about("logged-minority-down");
    assert_eq!(
        call_levels(captured, "logged-minority-down"),
        [Level::INFO],
        "{events:?}"
    );
    assert!(
        events.iter().all(|event| event.level > Level::WARN),
        "{events:?}"
    );

    nodes.cluster.kill(1).unwrap();
    let failed = nodes
        .runtime
        .run("logged-outage", Duration::from_secs(10), async {})
        .await;
    assert!(matches!(failed, Err(Error::NoQuorum(_))), "{failed:?}");
    let events = captured.about("logged-outage");
    let levels = call_levels(captured, "logged-outage");
    assert_eq!(
        levels.iter().filter(|level| **level <= Level::WARN).count(),
        1,
        "{events:?}"
    );
    assert!(
        levels.contains(&Level::WARN) && !levels.contains(&Level::ERROR),
        "{events:?}"
    );
    let warning = events
        .iter()
        .find(|event| event.level == Level::WARN)
        .unwrap();
    assert!(warning.text.contains("no quorum"), "{warning:?}");
}

#[tokio::test]
async fn a_clean_shutdown_warns_of_nothing() {
    let captured = captured();
    let nodes = Nodes::start(3);
    let runtime = nodes.runtime.clone();
    let body_started = Arc::new(tokio::sync::Notify::new());
    let started = body_started.clone();
    let call = tokio::spawn(async move {
        runtime
            .run("logged-shutdown", Duration::from_secs(10), async move {
                started.notify_one();
                std::future::pending::<()>().await
            })
            .await
    });
    body_started.notified().await;

    nodes
        .runtime
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();

    let ended = call.await.unwrap();
    assert!(matches!(ended, Err(Error::LeaseLost { .. })), "{ended:?}");
    let events = captured.about("logged-shutdown");
    assert_eq!(
        call_levels(captured, "logged-shutdown"),
        [Level::INFO],
        "{events:?}"
    );
    // Other tests of this binary run beside this one, on their own keys: count only this key's.
    assert!(
        events.iter().all(|event| event.level > Level::WARN),
        "{events:?}"
    );
}

#[tokio::test]
async fn init_on_fresh_nodes_warns_once_when_locking_will_work() {
    let captured = captured();
    let cluster = cluster_singleton_testkit::Cluster::start(3).unwrap();
    let grace = Duration::from_secs(3);
    cluster_singleton::runtime::Config::new(cluster.urls())
        .max_ttl(grace)
        .key_prefix("logged-init:")
        .init()
        .await
        .unwrap();

    let events = captured.0.lock().unwrap().clone();
    let warnings: Vec<&Logged> = events
        .iter()
        .filter(|event| event.level == Level::WARN && event.text.contains("restart grace"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    // `locking_in=3.99s`, say: the grace plus the second by which Redis rounds its uptime.
    let locking_in = warnings[0]
        .text
        .split("locking_in=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(debug_duration)
        .expect("the warning says when locking starts");
    assert!(
        locking_in <= grace + Duration::from_secs(1) && locking_in > Duration::ZERO,
        "{locking_in:?}"
    );
}

/// A `Duration` as its `Debug` prints it (`3.998s`, `250ms`).
fn debug_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_alphabetic())?);
    let seconds_per_unit = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(
        number.parse::<f64>().ok()? * seconds_per_unit,
    ))
}
