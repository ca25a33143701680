//! The lost signal (`Revoked`, `Leadership::lost`, `Lease::lost`, a body cancelled at its
//! deadline) comes from one timer on the crate's own thread. Code that blocks that thread delays
//! it by as long as it blocks: here a log layer whose writer stalls on the events the runtime
//! logs from that thread (as a `fmt` layer writing to a full pipe would). What is computed at
//! each call (`is_leader()`, `validity()`) stays right. README, Safety, assumption 5.
//!
//! A test binary of its own: it installs a global subscriber.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_singleton::runtime::{Config, LeaderEvent, Options};
use cluster_singleton_testkit::Cluster;
use common::{fresh_nodes, program_runtime};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const KEY: &str = "stalled-leader";
const TTL: Duration = Duration::from_secs(1);

/// While raised, an event logged on the crate's thread blocks it until lowered.
static STALLED: AtomicBool = AtomicBool::new(false);
/// Raised by the first event that blocked.
static BLOCKED: AtomicBool = AtomicBool::new(false);

/// A log layer whose writer stalls while [`STALLED`] is raised, for events on the crate's thread.
struct StallingWriter;

impl<S: tracing::Subscriber> Layer<S> for StallingWriter {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if std::thread::current().name() != Some("cluster-singleton") {
            return;
        }
        while STALLED.load(Ordering::SeqCst) {
            BLOCKED.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A leads through proxies and is cut off from every node just after a renewal; its renewal's
/// failure is logged on the crate's thread, which then blocks. B, another runtime on the nodes
/// directly, takes the key once it expires. When B holds it, A's `is_leader()` is false, but A's
/// `Revoked` has not been sent: it comes once the thread runs again, after B took over.
#[test]
fn a_stalled_crate_thread_delays_revoked_but_not_is_leader() {
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(StallingWriter.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG)),
    )
    .expect("the only subscriber of this binary");
    let program = program_runtime();
    let cluster = Cluster::builder()
        .nodes(3)
        .proxied(true)
        .start()
        .expect("start proxied redis-server nodes");
    let a = fresh_nodes(&cluster)
        .node_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let direct: Vec<String> = (0..cluster.len()).map(|i| cluster.direct_url(i)).collect();
    let b = Config::new(direct)
        .restart_grace(Duration::ZERO)
        .node_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    program.block_on(async {
        let leadership = a.campaign(KEY, TTL).unwrap();
        let mut events = leadership.events();
        let revoked_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let listener = tokio::spawn({
            let revoked_at = revoked_at.clone();
            async move {
                while let Ok(event) = events.recv().await {
                    if let LeaderEvent::Revoked { .. } = event {
                        *revoked_at.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), leadership.elected())
            .await
            .expect("A is elected")
            .expect("A is elected");
        // Just after a renewal, so that the next one (a third of the ttl later) fails while the
        // lease still has most of its validity.
        let mut last = leadership.validity();
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = leadership.validity();
            if now > last + Duration::from_millis(100) {
                break;
            }
            last = now;
        }
        for i in 0..cluster.len() {
            cluster.proxy(i).partition();
        }
        let a_deadline = Instant::now() + leadership.validity();
        STALLED.store(true, Ordering::SeqCst);
        let options = Options::new(TTL);
        let (b_lease, b_took_it) = loop {
            if let Ok(Some(lease)) = b.lock_with(KEY, &options).await {
                break (lease, Instant::now());
            }
            assert!(
                Instant::now() < a_deadline + 3 * TTL,
                "B never took the key"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let a_leads_then = leadership.is_leader();
        let revoked_by_then = revoked_at.lock().unwrap().is_some();
        let blocked = BLOCKED.load(Ordering::SeqCst);
        STALLED.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), listener)
            .await
            .expect("Revoked once the crate's thread runs again")
            .unwrap();
        for i in 0..cluster.len() {
            cluster.proxy(i).heal();
        }
        b_lease.release().await.unwrap();
        drop(leadership);
        assert!(blocked, "an event on the crate's thread blocked it");
        assert!(
            b_took_it >= a_deadline,
            "B took the key before A's deadline"
        );
        assert!(
            !a_leads_then,
            "is_leader() is false once the deadline passed"
        );
        assert!(
            !revoked_by_then,
            "Revoked was sent while the crate's thread was blocked"
        );
    });
}
