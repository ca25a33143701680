//! Errors say what happened: a node that answers with an error (a key of another type, a missing
//! ACL permission, a script error) is not an outage; an outage names every node, also those that
//! had not answered when the call gave up; a vote that stayed split says so.

mod common;

use std::time::Duration;

use cluster_singleton::runtime::Config;
use cluster_singleton::{Error, Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use common::{fresh_nodes, Nodes, NODE_TIMEOUT};

const TTL: Duration = Duration::from_secs(5);

/// Every node refuses `SET` to this ACL user: that is a configuration to fix, not nodes to
/// restart, and the error says so.
#[tokio::test]
async fn a_missing_permission_is_a_refusal_not_an_outage() {
    let cluster = Cluster::start(3).unwrap();
    let mut urls = Vec::new();
    for i in 0..3 {
        let mut admin = cluster.connection(i).unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("reader")
            .arg("on")
            .arg(">reader-pa55")
            .arg("~*")
            .arg("+@all")
            .arg("-set")
            .query(&mut admin)
            .unwrap();
        urls.push(format!(
            "redis://reader:reader-pa55@127.0.0.1:{}",
            cluster.port(i)
        ));
    }
    let runtime = Config::new(urls)
        .restart_grace(Duration::ZERO)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let err = runtime.lock("refused-job", TTL).await.unwrap_err();
    let Error::Refused(refused) = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert_eq!(refused.failures.len(), 3);
    let message = err.to_string();
    assert!(message.contains("no permissions"), "{message}");
    assert!(message.contains("not an outage"), "{message}");
    assert!(!message.contains("reader-pa55"), "{message}");
}

/// Three of five nodes are killed and two frozen: the outage is decided by the three refused
/// connections before the frozen nodes time out, and the error still names all five.
#[tokio::test]
async fn an_outage_names_every_node_also_those_still_silent() {
    let mut nodes = Nodes::start(5);
    let lease = nodes.runtime.lock("warm-up", TTL).await.unwrap().unwrap();
    lease.release().await.unwrap();
    for i in 0..3 {
        nodes.cluster.kill(i).unwrap();
    }
    nodes.cluster.freeze(3).unwrap();
    nodes.cluster.freeze(4).unwrap();
    // The first attempt finds the connections broken; the second is refused at once.
    let _ = nodes.runtime.lock("outage-job", TTL).await;
    let err = nodes.runtime.lock("outage-job", TTL).await.unwrap_err();
    let Error::NoQuorum(no_quorum) = &err else {
        panic!("expected no quorum, got {err:?}");
    };
    assert_eq!(no_quorum.failures.len(), 5, "{err}");
    for i in 3..5 {
        let port = nodes.cluster.port(i).to_string();
        let failure = no_quorum
            .failures
            .iter()
            .find(|failure| failure.node.contains(&port))
            .unwrap_or_else(|| panic!("node {i} is not named: {err}"));
        assert!(failure.cause.contains("no answer"), "{failure}");
    }
    nodes.cluster.resume(3).unwrap();
    nodes.cluster.resume(4).unwrap();
}

/// Two other tokens hold two of three nodes, so each attempt wins one node: the vote is split on
/// every try, and nobody runs the job. The outcome says so rather than "busy". (The two rivals'
/// nodes answer 40 ms late, so that each attempt hears its own grant before the refusals;
/// how many attempts fit in the first 100 ms depends on the machine's load.)
#[tokio::test]
async fn a_vote_that_stays_split_says_so() {
    let cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    // Connections open first, so that node 1's grant does not wait for its connection while
    // the rivals' nodes answer.
    let warm_up = runtime.lock("warm-up", TTL).await.unwrap().unwrap();
    warm_up.release().await.unwrap();
    for (i, token) in [(0, "one-rival"), (2, "another-rival")] {
        let mut connection = cluster.connection(i).unwrap();
        let () = redis::cmd("SET")
            .arg("singleton:lock:split-job")
            .arg(token)
            .query(&mut connection)
            .unwrap();
        cluster.proxy(i).set_latency(Duration::from_millis(20));
    }
    let outcome = runtime.run("split-job", TTL, async {}).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Skipped(Skip::SplitVote { attempts }) if attempts >= 1),
        "{outcome:?}"
    );
    let mut connection = cluster.connection(1).unwrap();
    let left: Option<String> = redis::cmd("GET")
        .arg("singleton:lock:split-job")
        .query(&mut connection)
        .unwrap();
    assert_eq!(left, None, "given back before the call returned");
}
