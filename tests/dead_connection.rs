//! A connection that silently stops answering (a flow a NAT or firewall forgot, a node replaced
//! behind its address) is replaced: the node's votes count again within two seconds, not when
//! the kernel gives the connection up a quarter of an hour later.

mod common;

use std::time::{Duration, Instant};

use cluster_singleton_testkit::Cluster;
use common::{fresh_nodes, NODE_TIMEOUT};

const TTL: Duration = Duration::from_secs(10);
const COUNTS_AGAIN_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_black_holed_connection_is_replaced_within_two_seconds() {
    let mut cluster = Cluster::builder().nodes(3).proxied(true).start().unwrap();
    let runtime = fresh_nodes(&cluster)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    let lease = runtime.lock("warm-up", TTL).await.unwrap().expect("free");
    lease.release().await.unwrap();

    // Node 1 is down, so every lock needs node 0; node 0's open connections go silent.
    cluster.freeze(1).unwrap();
    cluster.proxy(0).black_hole_open_connections();
    let silenced = Instant::now();

    let mut attempts = 0;
    loop {
        attempts += 1;
        match runtime.lock("dead-connection-job", TTL).await {
            Ok(Some(lease)) => {
                lease.release().await.unwrap();
                break;
            }
            Ok(None) => panic!("nobody else holds the key"),
            Err(err) => assert!(
                silenced.elapsed() < COUNTS_AGAIN_WITHIN,
                "node 0 still gives no vote {:?} after its connection went silent \
                 ({attempts} attempts): {err}",
                silenced.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.resume(1).unwrap();
}
