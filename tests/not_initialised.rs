//! Calls before `runtime::init` fail with an error that names the call to make. This binary never
//! initialises.

use cluster_singleton::{runtime::Runtime, singleton, Error};

#[singleton(key = "too-early", ttl = "1s")]
async fn too_early() {
    unreachable!("never runs without a runtime");
}

#[tokio::test]
async fn a_call_before_init_names_the_call_to_make() {
    let err = too_early().await.unwrap_err();
    assert!(matches!(err, Error::NotInitialised), "{err:?}");
    assert!(
        err.to_string()
            .contains("cluster_singleton::runtime::init(redis_urls).await"),
        "{err}"
    );
    assert!(matches!(Runtime::current(), Err(Error::NotInitialised)));
}
