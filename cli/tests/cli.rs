//! The `cluster-singleton` command, run as a user runs it, against real redis-server nodes
//! started by the test kit, with locks held by a runtime in the test.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cluster_singleton::runtime::Options;
use cluster_singleton_testkit::Cluster;
use common::{cli, command, hold, on, run, uptime_secs, worker, PATIENCE, TTL};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn status_names_each_node_and_fails_without_a_quorum_of_votes() {
    let mut cluster = Cluster::start(3).expect("start redis-server nodes");
    // A node's vote counts once the grace the fleet announces has passed since it started;
    // here no fleet announces one, so the grace is the least there is, but Redis gives its
    // uptime in whole seconds and the runtime errs late: a node counts as up since a second
    // after the start it reports. From an uptime of 2 s on, every reader counts its vote.
    let deadline = Instant::now() + PATIENCE;
    while (0..3).any(|i| uptime_secs(&cluster, i) < 2) {
        assert!(
            Instant::now() < deadline,
            "the nodes never reached 2 s of uptime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first reader of a node also writes its epoch (see `Config::restart_grace`), and the
    // node is young until that is a millisecond old: the first look may see that.
    let deadline = Instant::now() + PATIENCE;
    let healthy = loop {
        let status = cli(&cluster, &["status"]).await;
        if status.stdout.contains("3 of 3 nodes vote") || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert!(healthy.stdout.starts_with("NODE "), "{}", healthy.stdout);
    for i in 0..3 {
        let row = healthy.line(&cluster.url(i));
        assert!(row.contains(" yes "), "up and voting: {row}");
    }
    assert!(
        healthy.stdout.contains("3 of 3 nodes vote; a lock needs 2"),
        "{}",
        healthy.stdout
    );

    cluster.kill(2).unwrap();
    let degraded = cli(&cluster, &["status"]).await;
    assert_eq!(
        degraded.code, 0,
        "two of three still make a quorum: {degraded:?}"
    );
    let row = degraded.line(&cluster.url(2));
    assert!(
        row.contains(" no ") && row.contains("connect"),
        "down, and why: {row}"
    );
    assert!(
        degraded.stdout.contains("2 of 3 nodes vote"),
        "{}",
        degraded.stdout
    );

    cluster.kill(1).unwrap();
    let down = cli(&cluster, &["status"]).await;
    assert_eq!(down.code, 3, "{down:?}");
    assert!(
        down.stdout.contains("locks FAIL until 1 more node votes"),
        "{}",
        down.stdout
    );
    let json = cli(&cluster, &["status", "--json"]).await;
    assert_eq!(json.code, 3, "{json:?}");
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["voting"], 1);
    assert_eq!(json["nodes"][1]["reachable"], false);
    assert_eq!(json["nodes"][0]["votes"], true);

    // The other commands need a quorum of answers, and say so with the same exit code.
    let inspect = cli(&cluster, &["inspect", "report"]).await;
    assert_eq!(inspect.code, 3, "{inspect:?}");
    assert!(
        inspect.stderr.contains("1 of 3 Redis nodes answered"),
        "{inspect:?}"
    );
}

#[tokio::test]
async fn status_counts_no_vote_from_a_node_inside_the_fleets_restart_grace() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let status = cli(&cluster, &["status", "--restart-grace", "1m"]).await;
    assert_eq!(status.code, 3, "{status:?}");
    for i in 0..3 {
        let row = status.line(&cluster.url(i));
        assert!(
            row.contains(" no ") && row.contains("votes in "),
            "young: {row}"
        );
    }
    assert!(
        status.stdout.contains("0 of 3 nodes vote"),
        "{}",
        status.stdout
    );
}

#[tokio::test]
async fn inspect_shows_the_holder_a_short_token_and_leftovers() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let worker = worker(&cluster);
    let lease = hold(
        &cluster,
        &worker,
        "report",
        &Options::new(TTL).fencing(true),
    )
    .await;

    let held = cli(&cluster, &["inspect", "report"]).await;
    assert_eq!(held.code, 0, "{held:?}");
    assert!(
        held.stdout.starts_with("report: held by worker-1\n"),
        "{}",
        held.stdout
    );
    assert!(
        held.line("  nodes").contains("3 of 3 hold it"),
        "{}",
        held.stdout
    );
    assert!(held.line("  time left").ends_with('s'), "{}", held.stdout);
    let token = lease.token();
    assert!(
        held.line("  token").contains(&format!("{}…", &token[..8])),
        "{}",
        held.stdout
    );
    assert!(
        !held.stdout.contains(&token[..9]),
        "only 8 hex of the token: {}",
        held.stdout
    );
    let fencing = format!("counter {}", lease.fencing_token().expect("fenced"));
    assert!(held.line("  fencing").contains(&fencing), "{}", held.stdout);

    let json = cli(&cluster, &["inspect", "report", "--json"]).await;
    assert!(!json.stdout.contains(&token[..9]), "{}", json.stdout);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["held"], true);
    assert_eq!(json["holder"]["holder_id"], "worker-1");
    assert_eq!(json["holder"]["nodes"], 3);
    assert_eq!(json["holder"]["token_prefix"], &token[..8]);

    let slot = cli(&cluster, &["inspect", "report", "--slot", "1d"]).await;
    assert!(
        slot.line("  this period")
            .starts_with("  this period not done (slot 1day)"),
        "{}",
        slot.stdout
    );

    let free = cli(&cluster, &["inspect", "nightly"]).await;
    assert_eq!(free.code, 0, "{free:?}");
    assert!(
        free.stdout.starts_with("nightly: free\n"),
        "{}",
        free.stdout
    );
    assert!(
        free.line("  fencing").contains("never fenced"),
        "{}",
        free.stdout
    );

    // A crashed holder's copy on one node: shown, but not as the holder.
    let mut node_0 = cluster.connection(0).unwrap();
    let leftover = "0123456789abcdef0123456789abcdef crashed-worker:77";
    let () = redis::cmd("SET")
        .arg("singleton:lock:split")
        .arg(leftover)
        .arg("PX")
        .arg(20_000)
        .query(&mut node_0)
        .unwrap();
    let split = cli(&cluster, &["inspect", "split"]).await;
    assert!(
        split.stdout.starts_with("split: free\n"),
        "{}",
        split.stdout
    );
    assert!(
        split.line("  crashed-worker:77").contains("on 1 node, ")
            && split.stdout.contains("token 01234567…"),
        "{}",
        split.stdout
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn list_shows_the_held_keys_that_match() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let worker = worker(&cluster);
    let mut leases = Vec::new();
    for key in ["invoice:1", "invoice:2", "report"] {
        leases.push(hold(&cluster, &worker, key, &Options::new(TTL)).await);
    }

    let invoices = cli(&cluster, &["list", "invoice:*"]).await;
    assert_eq!(invoices.code, 0, "{invoices:?}");
    let lines: Vec<&str> = invoices.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two keys: {}", invoices.stdout);
    assert!(
        lines[0].starts_with("KEY ")
            && lines[0].contains("HOLDER")
            && lines[0].ends_with("TIME LEFT")
    );
    for (line, key) in lines[1..].iter().zip(["invoice:1", "invoice:2"]) {
        assert!(
            line.starts_with(key) && line.contains(" worker-1 ") && line.contains(" 3/3 "),
            "{line}"
        );
    }

    let all = cli(&cluster, &["list", "--json"]).await;
    let all: serde_json::Value = serde_json::from_str(&all.stdout).expect("JSON");
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|state| state["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["invoice:1", "invoice:2", "report"]);

    let none = cli(&cluster, &["list", "nightly*"]).await;
    assert_eq!(
        (none.code, none.stdout.as_str()),
        (0, "no lock matching `nightly*` is held\n")
    );

    // Another prefix is another fleet.
    let other = cli(&cluster, &["--key-prefix", "billing:", "list"]).await;
    assert!(
        other.stdout.starts_with("no lock matching `*`"),
        "{other:?}"
    );
    for lease in leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn unlock_is_refused_without_force_and_deletes_every_copy_with_it() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let worker = worker(&cluster);
    let lease = hold(&cluster, &worker, "stuck", &Options::new(TTL)).await;

    let refused = cli(&cluster, &["unlock", "stuck"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("without --force") && refused.stderr.contains("mutual exclusion"),
        "{}",
        refused.stderr
    );
    assert!(
        worker.inspect("stuck").await.unwrap().is_held(),
        "refused: still held"
    );

    let forced = cli(&cluster, &["unlock", "stuck", "--force"]).await;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(
        forced
            .stdout
            .starts_with("deleted `stuck` on 3 of 3 nodes; it was held by worker-1 on 3 nodes"),
        "{}",
        forced.stdout
    );
    let state = worker.inspect("stuck").await.unwrap();
    assert!(!state.is_held() && state.copies.is_empty(), "{state:?}");

    let again = cli(&cluster, &["unlock", "stuck", "--force"]).await;
    assert_eq!(
        again.stdout, "deleted `stuck` on 0 of 3 nodes; it was not held.\n",
        "{again:?}"
    );
    drop(lease);
}

#[tokio::test]
async fn watch_prints_each_change_of_holder() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let worker = worker(&cluster);
    let mut watch = on(
        &cluster,
        &["watch", "flip", "--every", "20ms", "--changes", "2"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("the command starts");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line, not the end")
    };

    let first = next_line().await;
    assert!(first.ends_with("  flip: free"), "{first}");
    // An RFC 3339 time stamp, in UTC.
    assert!(
        first.starts_with("20") && first[..24].ends_with('Z'),
        "{first}"
    );
    let lease = hold(&cluster, &worker, "flip", &Options::new(TTL)).await;
    let held = next_line().await;
    assert!(
        held.contains(&format!(
            "  flip: held by worker-1 (token {}…",
            &lease.token()[..8]
        )),
        "{held}"
    );
    lease.release().await.unwrap();
    let freed = next_line().await;
    assert!(freed.ends_with("  flip: free"), "{freed}");

    let status = tokio::time::timeout(PATIENCE, watch.wait())
        .await
        .expect("exits after 2 changes")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn no_output_ever_shows_a_password() {
    const PASSWORD: &str = "s3cret-Pw-4242";
    let cluster = Cluster::builder()
        .nodes(3)
        .password(PASSWORD)
        .start()
        .expect("start redis-server nodes");
    let worker = worker(&cluster);
    let lease = hold(&cluster, &worker, "report", &Options::new(TTL)).await;
    let url = cluster.url(0);
    let broken_port = format!("redis://:{PASSWORD}@127.0.0.1:notaport");
    let wrong_password = url.replace(PASSWORD, "Wrong-Guess-77");
    let runs = vec![
        ("status", cli(&cluster, &["status"]).await),
        ("status --json", cli(&cluster, &["status", "--json"]).await),
        ("inspect", cli(&cluster, &["inspect", "report"]).await),
        ("list", cli(&cluster, &["list"]).await),
        ("unlock", cli(&cluster, &["unlock", "report"]).await),
        (
            "unlock --force",
            cli(&cluster, &["unlock", "report", "--force"]).await,
        ),
        (
            "an unexpected argument",
            cli(&cluster, &["status", &url]).await,
        ),
        (
            "a bad duration",
            cli(&cluster, &["--timeout", "soon", "status"]).await,
        ),
        (
            "an unparsable URL",
            run(command(&["--url", &broken_port, "status"])).await,
        ),
        (
            "a URL with a space",
            run(command(&[
                "--url",
                &format!("redis://:{PASSWORD} x@h"),
                "status",
            ]))
            .await,
        ),
        (
            "a wrong password",
            run(command(&["--url", &wrong_password, "inspect", "report"])).await,
        ),
        ("an unknown command, the URLs in REDIS_URLS", {
            let mut command = command(&["stauts"]);
            command.env("REDIS_URLS", cluster.urls().join(","));
            run(command).await
        }),
        ("--help, the URLs in REDIS_URLS", {
            let mut command = command(&["--help"]);
            command.env("REDIS_URLS", cluster.urls().join(","));
            run(command).await
        }),
    ];

    for (what, run) in &runs {
        for secret in [PASSWORD, "Wrong-Guess-77"] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{what}: {run:?}"
            );
        }
    }
    let status = &runs[0].1;
    assert!(
        status.stdout.contains(&url.replace(PASSWORD, "***")),
        "the node, named: {status:?}"
    );
    let unexpected = &runs[6].1;
    assert_eq!(unexpected.code, 2, "{unexpected:?}");
    assert!(
        unexpected
            .stderr
            .contains("unexpected argument 'redis://:***@127.0.0.1:"),
        "{unexpected:?}"
    );
    let wrong = &runs[10].1;
    assert_eq!(wrong.code, 1, "the node refused; not an outage: {wrong:?}");
    assert!(runs[12].1.stdout.contains("REDIS_URLS"), "{:?}", runs[12].1);
    drop(lease);
}

#[tokio::test]
async fn the_nodes_can_come_from_redis_urls() {
    let cluster = Cluster::start(3).expect("start redis-server nodes");
    let mut from_env = command(&["inspect", "report"]);
    from_env.env("REDIS_URLS", cluster.urls().join(","));
    let from_env = run(from_env).await;
    assert_eq!(
        (from_env.code, from_env.stdout.lines().next()),
        (0, Some("report: free")),
        "{from_env:?}"
    );

    let nowhere = run(command(&["inspect", "report"])).await;
    assert_eq!(nowhere.code, 2, "{nowhere:?}");
    assert!(
        nowhere.stderr.contains("--url") && nowhere.stderr.contains("REDIS_URLS"),
        "{nowhere:?}"
    );
}
