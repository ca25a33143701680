//! Bad configuration is an error that says what to fix, never a panic, and no password is ever
//! printed.

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Options};
use cluster_singleton::Error;
use cluster_singleton_testkit::Cluster;

const PASSWORD: &str = "s3cret-pa55word";

fn invalid(config: Config) -> String {
    match config.build() {
        Err(Error::InvalidConfig(message)) => message,
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

#[test]
fn no_urls() {
    let message = invalid(Config::new(Vec::<&str>::new()));
    assert!(message.contains("no Redis URLs given"), "{message}");
}

#[test]
fn a_url_that_does_not_parse_names_its_position_not_its_password() {
    let message = invalid(Config::new([
        "redis://127.0.0.1:6379".to_owned(),
        format!("redis://:{PASSWORD}@127.0.0.1:notaport"),
    ]));
    assert!(message.contains("#2"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

#[test]
fn a_url_of_another_scheme() {
    let message = invalid(Config::new(["http://127.0.0.1:6379"]));
    assert!(message.contains("#1"), "{message}");
}

#[test]
fn the_same_node_twice() {
    let message = invalid(Config::new([
        "redis://127.0.0.1:6379".to_owned(),
        "redis://127.0.0.1:6380".to_owned(),
        format!("redis://:{PASSWORD}@127.0.0.1:6379/0"),
    ]));
    assert!(
        message.contains("listed twice (URLs #1 and #3)"),
        "{message}"
    );
    assert!(!message.contains(PASSWORD), "{message}");
}

#[test]
#[cfg(not(feature = "tls"))]
fn tls_without_the_tls_feature() {
    let message = invalid(Config::new(["rediss://127.0.0.1:6379"]));
    assert!(message.contains("#1"), "{message}");
}

#[test]
fn debug_output_hides_passwords() {
    let config = Config::new([format!("redis://user:{PASSWORD}@127.0.0.1:6379")]);
    let runtime = config.clone().build().unwrap();
    for printed in [format!("{config:?}"), format!("{runtime:?}")] {
        assert!(!printed.contains(PASSWORD), "{printed}");
        assert!(printed.contains("user:***@127.0.0.1"), "{printed}");
    }
}

#[tokio::test]
async fn a_ttl_redis_cannot_take_is_an_error() {
    let runtime = Config::new(["redis://127.0.0.1:1"]).build().unwrap();
    for ttl in [Duration::ZERO, Duration::from_micros(1500), Duration::MAX] {
        let err = runtime.lock("job", ttl).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
}

/// A ttl no longer than what a lock sets aside for clocks (`ttl × drift_factor + 2 ms`) leaves
/// no validity: no lock could ever be held, and a campaign on it would retry forever. It is
/// refused before anything is sent, by every entry point; the shortest that leaves some is taken.
#[tokio::test]
async fn a_ttl_that_leaves_no_validity_is_an_error() {
    let nodes = common::Nodes::start(1);
    let runtime = Config::new(nodes.cluster.urls())
        .drift_factor(0.25)
        .build()
        .unwrap();
    // 0.25 × 2 ms + 2 ms = 2.5 ms: nothing left.
    let no_validity = Duration::from_millis(2);
    let err = runtime.lock("too-short", no_validity).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("sets aside for clocks"), "{err}");
    let err = runtime
        .run_with("too-short", Options::new(no_validity), async {}, |_| true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    let err = runtime.campaign("too-short", no_validity).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert!(
        nodes.absent("singleton:lock:too-short", &[]),
        "nothing was sent"
    );
    // 0.25 × 3 ms + 2 ms = 2.75 ms: a quarter of a millisecond is left, and the ttl is accepted.
    assert!(!matches!(
        runtime.lock("short", Duration::from_millis(3)).await,
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn errors_from_unreachable_nodes_hide_passwords() {
    // Port 1 on loopback: nothing listens there, so connecting is refused at once.
    let runtime = Config::new([format!("redis://:{PASSWORD}@127.0.0.1:1")])
        .build()
        .unwrap();
    let err = runtime
        .lock("job", Duration::from_secs(1))
        .await
        .unwrap_err();
    let Error::NoQuorum(no_quorum) = &err else {
        panic!("expected no quorum, got {err:?}");
    };
    assert_eq!((no_quorum.answered, no_quorum.needed), (0, 1));
    let printed = format!("{err} {err:?}");
    assert!(!printed.contains(PASSWORD), "{printed}");
    assert!(printed.contains(":***@127.0.0.1:1"), "{printed}");
}

#[tokio::test]
async fn a_password_protected_node_works_with_its_password() {
    let cluster = Cluster::builder()
        .nodes(1)
        .password(PASSWORD)
        .start()
        .unwrap();
    let right = Config::new(cluster.urls())
        .restart_grace(Duration::ZERO)
        .build()
        .unwrap();
    let lease = right.lock("job", Duration::from_secs(5)).await.unwrap();
    assert!(lease.is_some());
}

/// Every duration setting is checked before anything is sent: out of range, it is an
/// `InvalidConfig` that names the setting, never a panic at the first lock (`Duration::MAX` as a
/// node timeout once overflowed the clock) and never an outage (a ttl Redis would refuse).
#[tokio::test]
async fn out_of_range_durations_are_errors_not_panics() {
    for (config, setting) in [
        (
            Config::new(["redis://127.0.0.1:1"]).node_timeout(Duration::MAX),
            "`node_timeout`",
        ),
        (
            Config::new(["redis://127.0.0.1:1"]).connect_timeout(Duration::MAX),
            "`connect_timeout`",
        ),
        (
            Config::new(["redis://127.0.0.1:1"]).max_ttl(Duration::MAX),
            "`max_ttl`",
        ),
        (
            Config::new(["redis://127.0.0.1:1"]).restart_grace(Duration::MAX),
            "`restart_grace`",
        ),
    ] {
        let message = invalid(config);
        assert!(message.contains(setting), "{message}");
    }

    let nodes = common::Nodes::start(1);
    let day = Duration::from_secs(24 * 3600);
    let ttl = Duration::from_secs(10);
    for (options, setting) in [
        (
            Options::new(Duration::from_millis(i64::MAX as u64)),
            "`Config::max_ttl`",
        ),
        (Options::new(day), "`Config::max_ttl`"),
        (Options::new(ttl).wait(Duration::MAX), "`wait`"),
        (Options::new(ttl).max_hold(Duration::MAX), "`max_hold`"),
        (Options::new(ttl).slot(Duration::MAX), "`slot`"),
        (
            Options::new(ttl).slot(Duration::from_millis(u64::MAX)),
            "`slot`",
        ),
        (
            Options::new(ttl).min_hold(Duration::from_micros(1500)),
            "`min_hold`",
        ),
    ] {
        let err = nodes
            .runtime
            .run_with("bad-setting", options, async {}, |_| true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains(setting), "{setting}: {err}");
    }
    assert!(
        nodes.absent("singleton:lock:bad-setting", &[]),
        "nothing was sent"
    );
}

/// The longest ttl is a setting of the fleet; the grace follows it unless set, and cannot be
/// set below it (except to zero, for nodes that persist every write).
#[test]
fn the_restart_grace_covers_the_longest_ttl() {
    let message = invalid(
        Config::new(["redis://127.0.0.1:1"])
            .max_ttl(Duration::from_secs(60))
            .restart_grace(Duration::from_secs(30)),
    );
    assert!(message.contains("shorter than `max_ttl`"), "{message}");
    for grace in [
        Duration::ZERO,
        Duration::from_secs(60),
        Duration::from_secs(90),
    ] {
        Config::new(["redis://127.0.0.1:1"])
            .max_ttl(Duration::from_secs(60))
            .restart_grace(grace)
            .build()
            .unwrap();
    }
    let printed = format!("{:?}", Config::new(["redis://127.0.0.1:1"]));
    assert!(
        printed.contains("max_ttl: 600s, restart_grace: Some(600s)"),
        "{printed}"
    );
}
