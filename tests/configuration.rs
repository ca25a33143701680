//! Bad configuration is an error that says what to fix, never a panic, and no password is ever
//! printed.

use std::time::Duration;

use cluster_singleton::runtime::Config;
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
