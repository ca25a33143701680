//! Stragglers: the commands a call no longer waits for (the slower nodes' `SET`s, extensions
//! and releases) must never land on a node after our release there, where a `SET` or an
//! extension (which puts our token back where the key is absent) would leave the key locked for
//! a ttl. Each test is an interleaving that tried to make one land late, against real
//! redis-server nodes, with a frozen node (SIGSTOP), a script the node lacks (`NOSCRIPT`), a
//! connection being reopened, a shutdown or a cancellation.
//!
//! The common shape: a command that puts our token on a node is a Lua script, sent as
//! `EVALSHA`; a node that lacks the script (it flushed its scripts, or restarted behind a proxy
//! that kept the connection) answers `NOSCRIPT`. Sent again after loading it, the command would
//! be queued behind whatever went to the node meanwhile, a release included: so the crate loads
//! those scripts on every connection when it opens, and never sends them twice (the node's vote
//! is then missing, once).

mod common;

use std::time::Duration;

use cluster_singleton::runtime::Options;
use cluster_singleton::{Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, runtime_for, Nodes, NODE_TIMEOUT, PROMPTLY};

const TTL: Duration = Duration::from_secs(10);

/// Takes and releases a throw-away lock, so that every node has run the release script (as a
/// node of a fleet that has been locking for a while has) and every connection is open.
async fn warm_up(nodes: &Nodes) {
    let lease = nodes
        .runtime
        .lock("warm-up", TTL)
        .await
        .expect("a quorum")
        .expect("free");
    assert!(eventually(PROMPTLY, || nodes.holding(lease.key(), lease.token()) == 3).await);
    lease.release().await.expect("released");
    assert!(eventually(PROMPTLY, || nodes.absent("singleton:lock:warm-up", &[])).await);
}

/// After `runtime`'s own shutdown (which waits for its backlog, so that every straggling
/// command has been answered or given up), whether a new caller, on a cluster with node 0 killed
/// (a minority down: locks must still work), can take `key`.
async fn next_caller_locks_with_node_0_down(nodes: &mut Nodes, key: &str) -> bool {
    nodes.cluster.kill(0).expect("kill node 0");
    let next = runtime_for(&nodes.cluster);
    let taken = next.lock(key, TTL).await;
    let locked = matches!(taken, Ok(Some(_)));
    let _ = next.shutdown(PROMPTLY).await;
    locked
}

/// A fenced lock's `SET` (the `SET_NX_READ_FENCE` script) lands on a slow node after our
/// release there, and leaves our token on it for a whole ttl.
///
/// Interleaving (3 nodes; node 2 lost its scripts, `SCRIPT FLUSH`, with its connection open):
/// 1. node 2 is frozen (SIGSTOP: a GC-like pause, a slow disk);
/// 2. `lock_with(fencing)`: `EVALSHA set_nx_read_fence` goes to all three; nodes 0 and 1 answer
///    NOSCRIPT, load it, and grant; a quorum: the attempt keeps its round (`Attempt::keep`), and
///    node 2's call goes to the backlog with only its first `EVALSHA` written;
/// 3. `release()`: nodes 0 and 1 delete the key (a quorum, it returns); node 2's release
///    `EVALSHA expire_if_ours` is queued behind the fenced `EVALSHA`;
/// 4. node 2 resumes: `EVALSHA set_nx_read_fence` → NOSCRIPT; the release finds no key; then the
///    backlog polls the SET's future, which sends `SCRIPT LOAD` and `EVALSHA` again: the key is
///    absent, so node 2 grants — after our release. Our token stays there for the ttl.
///
/// With node 0 down (a minority), the next caller then gets node 1 but not node 2: `Busy` for
/// 10 s, with nobody holding the lock.
///
/// What prevents it: the fenced `SET` is never sent twice (`Node::run_script_once`): on
/// `NOSCRIPT` node 2's vote is missing, and the script is loaded for the next call.
#[tokio::test]
async fn a_fenced_set_retried_after_noscript_does_not_land_after_the_release() {
    let mut nodes = Nodes::start(3);
    warm_up(&nodes).await;
    let key = "singleton:lock:fenced";
    forget_the_scripts_but_the_release(&nodes, 2).await;
    assert!(!has_script(&nodes, 2, &script_hash("SET_NX_READ_FENCE")));

    nodes.cluster.freeze(2).expect("freeze node 2");
    let options = Options::new(TTL).fencing(true);
    let lease = nodes
        .runtime
        .lock_with("fenced", &options)
        .await
        .expect("a majority is up")
        .expect("free");
    let token = lease.token().to_owned();
    lease.release().await.expect("released on a quorum");
    nodes.cluster.resume(2).expect("resume node 2");

    // Waits (within its timeout) until every command still on its way has been answered.
    nodes.runtime.shutdown(PROMPTLY).await.expect("shut down");
    let left = nodes.get(2, key);
    let next_locked = next_caller_locks_with_node_0_down(&mut nodes, "fenced").await;
    assert!(
        left.as_deref() != Some(token.as_str()) && next_locked,
        "our fenced SET landed on node 2 after our release there (node 2 holds {left:?}, ours was {token:?}); with node 0 down, the next \
         caller took the lock: {next_locked}"
    );
}

/// An extension (`EXTEND_OR_REPAIR`, which puts our token back where the key is absent) lands on
/// a slow node after our release there, and re-creates the released key for a whole ttl.
///
/// Interleaving (3 nodes; node 2 lost its scripts, `SCRIPT FLUSH`, with its connection open):
/// 1. a lease is taken on all three nodes; node 2 is frozen;
/// 2. `extend()`: `EVALSHA extend_or_repair` to all three; nodes 0 and 1 answer NOSCRIPT, load
///    it, extend; a quorum: the round is detached, node 2's call goes to the backlog with only
///    its first `EVALSHA` written;
/// 3. `release()`: nodes 0 and 1 delete the key; node 2's release is queued behind the
///    extension's `EVALSHA`;
/// 4. node 2 resumes: the extension → NOSCRIPT; the release deletes our key; then the backlog's
///    poll sends `SCRIPT LOAD` + `EVALSHA extend_or_repair`, which finds the key absent and
///    *repairs* it: our token is back on node 2 for a ttl, after the release.
///
/// The same would hold for renewal stopped by a release. What prevents it: an extension is never
/// sent twice either (`Node::run_script_once`).
#[tokio::test]
async fn an_extension_retried_after_noscript_does_not_repair_a_released_key() {
    let mut nodes = Nodes::start(3);
    warm_up(&nodes).await;
    forget_the_scripts_but_the_release(&nodes, 2).await;
    let key = "singleton:lock:extended";

    let mut lease = nodes
        .runtime
        .lock("extended", TTL)
        .await
        .expect("a quorum")
        .expect("free");
    let token = lease.token().to_owned();
    assert!(eventually(PROMPTLY, || nodes.holding(key, &token) == 3).await);
    assert!(!has_script(
        &nodes,
        2,
        &script_hash("EXTEND_OR_REPAIR_EACH")
    ));
    nodes.cluster.freeze(2).expect("freeze node 2");
    lease.extend().await.expect("extended on a quorum");
    lease.release().await.expect("released on a quorum");
    nodes.cluster.resume(2).expect("resume node 2");

    nodes.runtime.shutdown(PROMPTLY).await.expect("shut down");
    let left = nodes.get(2, key);
    let next_locked = next_caller_locks_with_node_0_down(&mut nodes, "extended").await;
    assert!(
        left.as_deref() != Some(token.as_str()) && next_locked,
        "our extension re-created the key on node 2 after our release there (node 2 holds {left:?}, ours was {token:?}); with node 0 down, the next \
         caller took the lock: {next_locked}"
    );
}

/// `Runtime::shutdown` releases a lease while the lease's own `extend()` waits in
/// `Nodes::open_connections`: the extension then goes out after the release and puts our token
/// back (repair) on a majority. Shutdown returned `Ok`, yet the key is locked for a whole ttl.
///
/// Interleaving (3 nodes; node 2's connection broke and node 2 is unreachable: its proxy
/// accepts connections and forwards nothing, a partition):
/// 1. a lease (`Runtime::lock`) is held on all three; node 2's connection is reset and the
///    partition begins; an `extend()` finds it broken (the link goes down);
/// 2. the holder calls `extend()` again: `Held::check` passes (the lease is valid), then
///    `open_connections` waits up to the node timeout for node 2 — nothing is queued yet on
///    nodes 0 and 1;
/// 3. meanwhile `shutdown()`: `lose(Shutdown)`, closes the register, releases on nodes 0 and 1
///    (a quorum) and returns once its backlog is empty;
/// 4. the wait ends; the extension goes out to nodes 0 and 1, finds the key absent and repairs
///    it: our token is back on a majority for a ttl (the caller gets `LeaseLost`, but the key
///    stays).
///
/// What prevents it: `Lease::extend` looks at the lease after its waits, and sends under the lock
/// that stopping the lease's extensions takes (`Renewer::extend_now`), which the release does
/// first.
#[tokio::test]
async fn shutdown_during_an_extension_waiting_for_a_connection_leaves_no_key() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let nodes = Nodes { cluster, runtime };
    let key = "singleton:lock:shut-extend";
    let mut lease = nodes
        .runtime
        .lock("shut-extend", TTL)
        .await
        .expect("a quorum")
        .expect("free");
    let token = lease.token().to_owned();
    assert!(eventually(PROMPTLY, || nodes.holding(key, &token) == 3).await);

    nodes.cluster.proxy(2).partition();
    nodes.cluster.proxy(2).reset();
    // Fails on node 2 at once (its connection is closed), which takes the link down.
    lease.extend().await.expect("extended on nodes 0 and 1");

    let mut extension = std::pin::pin!(lease.extend());
    tokio::select! {
        biased;
        done = &mut extension => panic!("the extension did not wait for node 2: {done:?}"),
        () = std::future::ready(()) => {}
    }
    let (extended, shut_down) =
        tokio::join!(extension, nodes.runtime.shutdown(Duration::from_secs(2)));
    let left = nodes.values(key, &[2]);
    let held_by_us = left
        .iter()
        .filter(|value| value.as_deref() == Some(token.as_str()))
        .count();
    nodes.cluster.proxy(2).heal();
    assert_eq!(
        held_by_us, 0,
        "after shutdown ({shut_down:?}), our token is on {held_by_us} of nodes 0 and 1 \
         ({left:?}); the extension answered {extended:?}"
    );
}

/// The done marker of a `slot` job is written only on nodes whose connection is open at that
/// instant: `mark_done` neither waits for a connection nor is preceded by
/// `Nodes::open_connections` (unlike a vote or an extension). Two nodes whose connections broke
/// during the body (and were found broken by another call on the same runtime) miss the marker
/// though they are up; the run still returns `Ran`, and once the one node with the marker is
/// down (a minority), the same period runs a second time.
///
/// Interleaving (3 nodes, all up, a slot job):
/// 1. the job takes the lock, finds no marker, and its body runs;
/// 2. meanwhile the connections to nodes 0 and 1 are reset (a middlebox restarts; new
///    connections work), and another call on the runtime (here `inspect` of another key; a
///    failed renewal does the same) finds them broken: their links go down;
/// 3. the body ends; `mark_done` sends the marker script: nodes 0 and 1 fail at once ("not
///    connected"), only node 2 stores it; the call warns and returns `Ran`;
/// 4. node 2 is killed; another machine calls the job in the same period: nodes 0 and 1 grant,
///    answer "no marker" (a quorum), and the job runs again.
///
/// What prevents it: the marker rounds open the connections first (`Nodes::open_connections`).
#[tokio::test]
async fn a_done_marker_reaches_nodes_whose_connection_was_reopening() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let mut nodes = Nodes { cluster, runtime };
    let hourly = Options::new(TTL).slot(Duration::from_secs(3600));

    let body = async {
        nodes.cluster.proxy(0).reset();
        nodes.cluster.proxy(1).reset();
        let other = nodes.runtime.inspect("other-job").await;
        assert!(other.is_err(), "nodes 0 and 1 were found broken: {other:?}");
    };
    let first = nodes
        .runtime
        .run_with("marked", hourly, body, |_| true)
        .await
        .expect("ran");
    assert_eq!(first, Outcome::Ran(()));
    let marked: Vec<bool> = (0..3)
        .map(|i| {
            let mut connection = nodes.cluster.connection(i).unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("singleton:done:marked:*")
                .query(&mut connection)
                .unwrap();
            !keys.is_empty()
        })
        .collect();

    nodes.cluster.kill(2).unwrap();
    let other_machine = runtime_for(&nodes.cluster);
    let second = other_machine
        .run_with("marked", hourly, async {}, |_| true)
        .await;
    assert!(
        matches!(second, Ok(Outcome::Skipped(Skip::AlreadyDone { .. }))),
        "the period ran again with a majority up: {second:?}; the marker was on nodes \
         {marked:?} after the first run returned Ran"
    );
}

/// A call cancelled while its release waits for renewal to stop (`Held::stop_renewal`) leaves
/// the key on every node for its ttl: `release_keeping` clears `holding` before that wait, so
/// the dropped `Lease` releases nothing, and no round has been started yet to finish it.
///
/// Interleaving (3 nodes, a `run` whose body lasts past a third of the ttl, so renewal runs):
/// 1. renewal has started (a task on the crate's thread);
/// 2. the body ends; in the same poll, `release_keeping` sets `holding = false`, aborts the
///    renewal task and awaits its handle: `Pending` unless the crate's thread has carried the
///    abort out in the microseconds between (so the test makes several such calls at once);
/// 3. the caller drops the call right then (a `select!` or `timeout` around it, a task aborted
///    as its program shuts down);
/// 4. `Lease::drop` sees `holding == false` and returns: nothing is released; the key stays on
///    all three nodes until its ttl (here extended by the renewal).
///
/// What prevents it: the lease counts as held until its release round is sent
/// (`redlock::start_release`); cancelled before, `Drop` releases it in the background.
#[tokio::test]
async fn a_call_cancelled_while_its_release_stops_renewal_still_releases() {
    const CALLS: usize = 8;
    let nodes = Nodes::start(3);
    warm_up(&nodes).await;
    let names: Vec<String> = (0..CALLS)
        .map(|i| format!("cancelled-release-{i}"))
        .collect();
    let cancelled = names
        .iter()
        .map(|name| cancel_once_the_body_ends(&nodes, name));
    let left: Vec<Option<String>> = futures_util::future::join_all(cancelled).await;
    let kept = left.iter().filter(|left| left.is_some()).count();
    assert_eq!(
        kept, 0,
        "{kept} of {CALLS} calls cancelled in their release left their key on node 0: {left:?}"
    );
}

/// Runs a call on `name` until renewal has extended its lease, ends its body and polls it once
/// more (into its release), then drops it; what is left of the key on node 0 a moment later
/// (`None` when it was released).
async fn cancel_once_the_body_ends(nodes: &Nodes, name: &str) -> Option<String> {
    use futures_util::FutureExt;

    const SHORT_TTL: Duration = Duration::from_secs(3);
    let key = format!("singleton:lock:{name}");
    let pttl = || -> i64 {
        let mut connection = nodes.cluster.connection(0).unwrap();
        redis::cmd("PTTL").arg(&key).query(&mut connection).unwrap()
    };
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let mut call = Box::pin(nodes.runtime.run_with(
        name,
        Options::new(SHORT_TTL),
        async move {
            let _ = finished.await;
        },
        |_| true,
    ));
    // Driven until renewal has extended the lease (its expiry on node 0 moved up).
    let mut lowest = i64::MAX;
    tokio::select! {
        done = &mut call => panic!("the call ended early: {done:?}"),
        renewed = eventually(SHORT_TTL, || {
            // -2 until our SET has landed on node 0.
            let now = pttl();
            if now < 0 {
                return false;
            }
            lowest = lowest.min(now);
            now > lowest + 300
        }) => assert!(renewed, "renewal never ran"),
    }
    finish.send(()).unwrap();
    // The body ends in this poll, which goes on into the release until its first wait.
    if let Some(done) = call.as_mut().now_or_never() {
        // Released within that poll: this call missed the window.
        println!("{name}: the call ended in one poll: {done:?}");
        return None;
    }
    drop(call);
    if eventually(PROMPTLY, || nodes.get(0, &key).is_none()).await {
        None
    } else {
        nodes.get(0, &key)
    }
}

// Pins: the behaviours the interleavings above are measured against.

/// Pin (passes): a plain `SET NX` (one command, no script) to a frozen node, kept in the backlog
/// by a won attempt, is queued ahead of the release and never lands after it: the contrast to
/// `a_fenced_set_retried_after_noscript_does_not_land_after_the_release`.
#[tokio::test]
async fn pin_a_plain_set_to_a_frozen_node_never_lands_after_the_release() {
    let mut nodes = Nodes::start(3);
    warm_up(&nodes).await;
    let key = "singleton:lock:plain";
    let sets_before = nodes.calls(2, "set");

    nodes.cluster.freeze(2).expect("freeze node 2");
    let lease = nodes
        .runtime
        .lock("plain", TTL)
        .await
        .expect("a majority is up")
        .expect("free");
    lease.release().await.expect("released on a quorum");
    nodes.cluster.resume(2).expect("resume node 2");
    nodes.runtime.shutdown(PROMPTLY).await.expect("shut down");

    assert!(
        eventually(PROMPTLY, || nodes.calls(2, "set") > sets_before).await,
        "the SET reached node 2"
    );
    assert!(nodes.absent(key, &[]), "{:?}", nodes.values(key, &[]));
}

/// Pin (passes): an extension to a frozen node that already has the extension's script is
/// queued ahead of the release and repairs nothing after it: the contrast to
/// `an_extension_retried_after_noscript_does_not_repair_a_released_key`.
#[tokio::test]
async fn pin_an_extension_with_its_script_loaded_never_repairs_after_the_release() {
    let mut nodes = Nodes::start(3);
    warm_up(&nodes).await;
    let key = "singleton:lock:extended-loaded";

    let mut lease = nodes
        .runtime
        .lock("extended-loaded", TTL)
        .await
        .expect("a quorum")
        .expect("free");
    let token = lease.token().to_owned();
    assert!(eventually(PROMPTLY, || nodes.holding(key, &token) == 3).await);
    // Loads the extension's script on every node (node 2's is the straggler: waited for).
    lease.extend().await.expect("extended");
    let extension = script_hash("EXTEND_OR_REPAIR_EACH");
    assert!(eventually(PROMPTLY, || has_script(&nodes, 2, &extension)).await);
    let scripts_before = nodes.scripts_run(2);

    nodes.cluster.freeze(2).expect("freeze node 2");
    lease.extend().await.expect("extended on a quorum");
    lease.release().await.expect("released on a quorum");
    nodes.cluster.resume(2).expect("resume node 2");
    nodes.runtime.shutdown(PROMPTLY).await.expect("shut down");

    assert!(
        eventually(PROMPTLY, || nodes.scripts_run(2) >= scripts_before + 2).await,
        "the extension and the release reached node 2"
    );
    assert!(nodes.absent(key, &[]), "{:?}", nodes.values(key, &[]));
}

/// The SHA1 of the crate's Lua script `name` (a `static` in `runtime/src/node/scripts.rs`).
fn script_hash(name: &str) -> String {
    let source = include_str!("../runtime/src/node/scripts.rs");
    let start = source
        .find(&format!("static {name}: LazyLock<Script>"))
        .expect("the script is defined");
    let text = &source[start..];
    let text = &text[text.find("r#\"").expect("its text") + 3..];
    let text = &text[..text.find("\"#").expect("its end")];
    redis::Script::new(text).get_hash().to_owned()
}

/// Makes node `i` forget every script (`SCRIPT FLUSH`, its connections staying open), then has
/// it run a release again, so that the release script is back and the others are not: the
/// release then answers at once while a script call queued ahead of it is refused.
async fn forget_the_scripts_but_the_release(nodes: &Nodes, i: usize) {
    let mut connection = nodes.cluster.connection(i).expect("connect to node");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut connection)
        .expect("SCRIPT FLUSH");
    warm_up(nodes).await;
    assert!(has_script(nodes, i, &script_hash("EXPIRE_IF_OURS")));
}

/// Whether node `i` has the script with SHA1 `hash` loaded.
fn has_script(nodes: &Nodes, i: usize, hash: &str) -> bool {
    let mut connection = nodes.cluster.connection(i).expect("connect to node");
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(hash)
        .query(&mut connection)
        .expect("SCRIPT EXISTS");
    exists == [true]
}
