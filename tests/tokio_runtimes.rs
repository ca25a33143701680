//! The caller's tokio runtime: a multi-threaded one drives the connections itself, and the crate
//! copes when that runtime shuts down before the crate's `Runtime` does, or cannot drive
//! connections at all.

mod common;

use std::time::Duration;

use common::{block_on, eventually, fresh_nodes, program_runtime, Nodes, PROMPTLY};

const KEY: &str = "singleton:lock:shared";

#[test]
fn a_runtime_outlives_the_tokio_runtimes_that_drove_its_connections() {
    let nodes = Nodes::start(3);
    for program in 0..3 {
        let program_rt = program_runtime();
        // Connections driven by a runtime that shut down would fail every node at once:
        // NoQuorum, not a lease.
        let lease = program_rt
            .block_on(nodes.runtime.lock("shared", Duration::from_secs(60)))
            .unwrap_or_else(|err| panic!("program {program}: {err}"))
            .expect("nobody else holds it");
        program_rt.block_on(lease.release()).unwrap();
        drop(program_rt);
    }
    // The release waits for a quorum; the last node gets it in the background, on a connection
    // of the runtime that was just shut down, which may have cut it short: a quorum is free of
    // that copy (the next program took the lock each time), and it expires with the ttl.
    let copies = nodes.values(KEY, &[]).iter().flatten().count();
    assert!(
        copies < 2,
        "a quorum of nodes must be free: {copies} copies"
    );
}

#[test]
fn a_runtime_without_io_or_timers_still_locks() {
    let nodes = Nodes::start(3);
    // The first call's deadline covers the failed attempt on the bare runtime (a panic in a task
    // of its own, printed with a backtrace when RUST_BACKTRACE is set) and the second on the
    // crate's thread: give it room on a loaded machine.
    let runtime = fresh_nodes(&nodes.cluster)
        .node_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // No `enable_all()`: this runtime cannot drive a socket or a timer.
    let bare = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime");
    for _ in 0..3 {
        let lease = bare
            .block_on(runtime.lock("shared", Duration::from_secs(60)))
            .expect("the crate's own thread drives the connections instead")
            .expect("nobody else holds it");
        assert!(nodes.holding(KEY, lease.token()) >= 2);
        bare.block_on(lease.release()).unwrap();
    }
    assert!(block_on(eventually(PROMPTLY, || nodes.absent(KEY, &[]))));
}
