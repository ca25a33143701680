//! What an operator can see and do from outside a call: who holds a key (`inspect`), which keys
//! are held (`list`), each node's health, and the forced unlock; against real nodes, with nodes
//! down, restarted and inside their restart grace.

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{Error, Outcome};
use cluster_singleton_testkit::Cluster;
use common::{eventually, fresh_nodes, Nodes, NODE_TIMEOUT};

const TTL: Duration = Duration::from_secs(10);

/// A machine of the fleet, named `holder_id`.
fn machine(cluster: &Cluster, holder_id: &str) -> Runtime {
    fresh_nodes(cluster)
        .node_timeout(NODE_TIMEOUT)
        .holder_id(holder_id)
        .build()
        .expect("valid configuration")
}

#[tokio::test]
async fn inspect_names_the_holder_its_nodes_and_the_time_left() {
    let nodes = Nodes::start(3);
    let (worker, operator) = (
        machine(&nodes.cluster, "worker-1"),
        machine(&nodes.cluster, "ops"),
    );
    assert!(!operator.inspect("report").await.unwrap().is_held());

    let lease = worker
        .lock_with("report", &Options::new(TTL).fencing(true))
        .await
        .unwrap()
        .expect("free");
    // Counted once every node has the copy: a lock is taken once a majority granted it.
    assert!(
        eventually(common::PROMPTLY, || nodes
            .holding(lease.key(), lease.token())
            == 3)
        .await
    );
    let state = operator.inspect("report").await.unwrap();

    assert_eq!(state.key, "report");
    assert_eq!(state.redis_key, "singleton:lock:report");
    assert_eq!((state.nodes, state.quorum), (3, 2));
    assert!(state.unanswered.is_empty(), "{:?}", state.unanswered);
    let holder = state.holder().expect("held on a quorum");
    assert_eq!(holder.holder_id.as_deref(), Some("worker-1"));
    assert_eq!(holder.token, lease.token());
    assert_eq!(holder.nodes, 3);
    assert!(
        holder.time_left <= TTL && holder.time_left > TTL - Duration::from_secs(2),
        "{:?}",
        holder.time_left
    );
    assert_eq!(state.fencing_counter, lease.fencing_token());
    assert_eq!(state.done_this_period, None);
    // Anyone with `redis-cli` sees the holder too.
    assert!(nodes
        .get(0, "singleton:lock:report")
        .unwrap()
        .ends_with(" worker-1"));

    lease.release().await.unwrap();
    let state = operator.inspect("report").await.unwrap();
    assert!(!state.is_held(), "{state:?}");
    // The release returns once a quorum deleted the key; the last copy goes in the background.
    assert!(
        eventually(common::PROMPTLY, || nodes
            .absent("singleton:lock:report", &[]))
        .await
    );
    assert!(
        state.fencing_counter.is_some(),
        "the counter outlives the lock"
    );
}

#[tokio::test]
async fn copies_that_make_no_quorum_are_shown_but_not_as_the_holder() {
    let nodes = Nodes::start(3);
    let operator = machine(&nodes.cluster, "ops");
    let mut node_0 = nodes.cluster.connection(0).unwrap();
    let mut node_1 = nodes.cluster.connection(1).unwrap();
    let token = "0123456789abcdef0123456789abcdef crashed-worker:77";
    let _: () = redis::cmd("SET")
        .arg("singleton:lock:split")
        .arg(token)
        .arg("PX")
        .arg(5000)
        .query(&mut node_0)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("singleton:lock:split")
        .arg("written by hand")
        .arg("PX")
        .arg(9000)
        .query(&mut node_1)
        .unwrap();

    let state = operator.inspect("split").await.unwrap();

    assert!(!state.is_held(), "{state:?}");
    assert_eq!(state.copies.len(), 2, "{state:?}");
    let leftover = state
        .copies
        .iter()
        .find(|copy| copy.token == token)
        .unwrap();
    assert_eq!(leftover.holder_id.as_deref(), Some("crashed-worker:77"));
    assert_eq!(leftover.nodes, 1);
    assert!(
        leftover.time_left <= Duration::from_secs(5) && leftover.time_left > Duration::from_secs(3)
    );
    let foreign = state
        .copies
        .iter()
        .find(|copy| copy.token == "written by hand")
        .unwrap();
    assert_eq!(foreign.holder_id, None, "not a token of this crate");
}

#[tokio::test]
async fn inspect_answers_with_a_node_down_and_refuses_without_a_quorum() {
    let mut nodes = Nodes::start(3);
    let (worker, operator) = (
        machine(&nodes.cluster, "worker-1"),
        machine(&nodes.cluster, "ops"),
    );
    let lease = worker.lock("report", TTL).await.unwrap().expect("free");
    assert!(
        eventually(common::PROMPTLY, || nodes
            .holding(lease.key(), lease.token())
            == 3)
        .await
    );

    nodes.cluster.kill(2).unwrap();
    let state = operator.inspect("report").await.unwrap();
    assert_eq!(state.holder().map(|holder| holder.nodes), Some(2));
    assert_eq!(state.unanswered.len(), 1, "{state:?}");
    assert_eq!(state.unanswered[0].node, nodes.cluster.url(2));

    nodes.cluster.kill(1).unwrap();
    let err = operator.inspect("report").await.unwrap_err();
    assert!(matches!(err, Error::NoQuorum(_)), "{err}");
    assert!(
        err.to_string().contains("1 of 3 Redis nodes answered"),
        "{err}"
    );
    drop(lease);
}

#[tokio::test]
async fn inspect_slot_tells_whether_this_period_is_done() {
    let nodes = Nodes::start(3);
    let (worker, operator) = (
        machine(&nodes.cluster, "worker-1"),
        machine(&nodes.cluster, "ops"),
    );
    let hour = Duration::from_secs(3600);
    let before = operator.inspect_slot("hourly", hour).await.unwrap();
    assert_eq!(before.done_this_period, Some(false));

    let options = Options::new(TTL).slot(hour);
    let ran = worker
        .run_with("hourly", options, async {}, |_| true)
        .await
        .unwrap();
    assert_eq!(ran, Outcome::Ran(()));

    let after = operator.inspect_slot("hourly", hour).await.unwrap();
    assert_eq!(after.done_this_period, Some(true));
    assert!(!after.is_held(), "released after the run");
    let err = operator
        .inspect_slot("hourly", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn list_finds_the_held_keys_with_scan_never_keys() {
    let nodes = Nodes::start(3);
    let (worker, operator) = (
        machine(&nodes.cluster, "worker-1"),
        machine(&nodes.cluster, "ops"),
    );
    let mut leases = Vec::new();
    for key in ["invoice:1", "invoice:2", "report"] {
        leases.push(worker.lock(key, TTL).await.unwrap().expect("free"));
    }
    // Not locks: a done marker and the fencing counter live in other namespaces.
    let ran = worker
        .run_with(
            "invoice:3",
            Options::new(TTL).slot(TTL).fencing(true),
            async {},
            |_| true,
        )
        .await;
    assert_eq!(ran.unwrap(), Outcome::Ran(()));
    // The release returns once a quorum deleted the key; the last copy goes in the background.
    assert!(
        eventually(common::PROMPTLY, || nodes
            .absent("singleton:lock:invoice:3", &[]))
        .await
    );

    let invoices = operator.list("invoice:*").await.unwrap();
    let keys: Vec<&str> = invoices.iter().map(|state| state.key.as_str()).collect();
    assert_eq!(keys, ["invoice:1", "invoice:2"]);
    assert!(invoices
        .iter()
        .all(|state| state.holder().unwrap().holder_id.as_deref() == Some("worker-1")));
    assert_eq!(operator.list("*").await.unwrap().len(), 3);

    for i in 0..3 {
        assert!(nodes.calls(i, "scan") > 0, "node {i} was scanned");
        assert_eq!(
            nodes.calls(i, "keys"),
            0,
            "KEYS would stop node {i} while it walks every key"
        );
    }
    drop(leases);
}

#[tokio::test]
async fn force_unlock_frees_a_key_whoever_holds_it_and_fencing_still_grows() {
    let nodes = Nodes::start(3);
    let (stuck, operator) = (
        machine(&nodes.cluster, "stuck-worker"),
        machine(&nodes.cluster, "ops"),
    );
    let fenced = Options::new(TTL).fencing(true);
    let abandoned = stuck
        .lock_with("report", &fenced)
        .await
        .unwrap()
        .expect("free");
    assert!(
        eventually(common::PROMPTLY, || nodes
            .holding(abandoned.key(), abandoned.token())
            == 3)
        .await
    );
    assert!(
        operator.lock("report", TTL).await.unwrap().is_none(),
        "held"
    );

    assert_eq!(operator.force_unlock("report").await.unwrap(), 3);

    let next = operator
        .lock_with("report", &fenced)
        .await
        .unwrap()
        .expect("free again");
    assert!(next.fencing_token() > abandoned.fencing_token());
    // The forced-out holder's release is owner-checked: it leaves the new holder's lock alone.
    let _ = abandoned.release().await;
    assert_eq!(
        operator
            .inspect("report")
            .await
            .unwrap()
            .holder()
            .unwrap()
            .holder_id
            .as_deref(),
        Some("ops")
    );
    assert_eq!(operator.force_unlock("free-key").await.unwrap(), 0);
    drop(next);
}

#[tokio::test]
async fn health_reports_every_node_down_restarted_and_in_its_grace() {
    let mut cluster = Cluster::start(3).unwrap();
    let short_grace = Duration::from_secs(3);
    // A grace as long as the longest ttl: fresh nodes do not vote for its length.
    let runtime = Config::new(cluster.urls())
        .node_timeout(NODE_TIMEOUT)
        .max_ttl(short_grace)
        .build()
        .unwrap();

    let young = runtime.health().await;
    assert_eq!(young.len(), 3);
    for (i, node) in young.iter().enumerate() {
        assert_eq!(node.node, cluster.url(i));
        assert!(node.reachable, "{node:?}");
        assert!(node.ping.unwrap() < NODE_TIMEOUT, "{node:?}");
        assert!(node.version.as_deref().unwrap().contains('.'), "{node:?}");
        assert_eq!(node.run_id.as_ref().unwrap().len(), 40, "{node:?}");
        assert!(
            !node.votes,
            "a node that just started does not vote: {node:?}"
        );
        let left = node.grace_left.expect("inside its grace");
        assert!(left <= short_grace + Duration::from_secs(1), "{left:?}");
        assert!(
            node.problem.as_deref().unwrap().contains("restart"),
            "{node:?}"
        );
    }

    let deadline = std::time::Instant::now() + short_grace + Duration::from_secs(3);
    let voting = loop {
        let health = runtime.health().await;
        if health.iter().all(|node| node.votes) {
            break health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never came of age: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(voting
        .iter()
        .all(|node| node.problem.is_none() && node.grace_left.is_none()));

    let old_run_id = voting[1].run_id.clone();
    cluster.kill(2).unwrap();
    cluster.restart(1).unwrap();
    let after = runtime.health().await;
    assert!(!after[2].reachable && !after[2].votes, "{:?}", after[2]);
    assert!(after[2].problem.is_some(), "{:?}", after[2]);
    assert!(after[0].votes, "{:?}", after[0]);
    assert!(
        after[1].reachable && after[1].run_id != old_run_id,
        "{:?}",
        after[1]
    );
    assert!(
        !after[1].votes && after[1].grace_left.is_some(),
        "restarted: {:?}",
        after[1]
    );
}

#[tokio::test]
async fn the_memory_backend_answers_too() {
    let runtime = Config::new(["memory://operations-test"])
        .holder_id("unit-test")
        .build()
        .unwrap();
    let lease = runtime.lock("invoice:9", TTL).await.unwrap().expect("free");

    let listed = runtime.list("invoice:*").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].holder().unwrap().holder_id.as_deref(),
        Some("unit-test")
    );
    let health = runtime.health().await;
    assert!(health[0].reachable && health[0].votes, "{health:?}");

    assert_eq!(runtime.force_unlock("invoice:9").await.unwrap(), 1);
    assert!(runtime.list("*").await.unwrap().is_empty());
    drop(lease);
}

#[test]
fn a_holder_id_must_be_a_printable_name() {
    for bad in ["", "two\nlines", &"x".repeat(201)] {
        let err = Config::new(["memory://"])
            .holder_id(bad)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("holder_id"), "{err}");
    }
    assert!(Config::new(["memory://"])
        .holder_id("web-3 (blue)")
        .build()
        .is_ok());
}

#[tokio::test]
async fn a_holder_that_still_renews_puts_a_forced_out_key_back() {
    let nodes = Nodes::start(3);
    let (worker, operator) = (
        machine(&nodes.cluster, "worker-1"),
        machine(&nodes.cluster, "ops"),
    );
    let ttl = Duration::from_millis(900); // renewed every 300 ms
    let (token_tx, token_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let call = tokio::spawn(worker.scope(async move {
        let runtime = cluster_singleton::runtime::Runtime::current().unwrap();
        runtime
            .run("renewed", ttl, async move {
                let lease = cluster_singleton::lease().expect("inside the body");
                token_tx.send(lease.token().to_owned()).unwrap();
                done_rx.await.unwrap();
                lease.is_held()
            })
            .await
    }));
    let token = token_rx.await.unwrap();
    assert!(
        eventually(common::PROMPTLY, || nodes
            .holding("singleton:lock:renewed", &token)
            == 3)
        .await
    );

    assert_eq!(operator.force_unlock("renewed").await.unwrap(), 3);
    assert!(nodes.absent("singleton:lock:renewed", &[]));

    // The next renewal repairs every node that lacks the key: the live holder has it back.
    assert!(
        eventually(ttl, || nodes.holding("singleton:lock:renewed", &token) == 3).await,
        "the renewal did not put the token back"
    );
    done_tx.send(()).unwrap();
    assert_eq!(call.await.unwrap().unwrap(), Outcome::Ran(true));
}
