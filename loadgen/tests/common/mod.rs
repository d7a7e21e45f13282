//! What the loadgen's end-to-end tests share: a real origin and relay on
//! loopback, in the test process.

use std::time::Duration;

use mlcache::origin::{OriginConfig, OriginHandle, Publish};

/// An origin publishing progressive 16 KiB chunks every `cadence`, and a
/// relay in front of it with default settings.
pub async fn origin_and_relay(cadence: Duration) -> (OriginHandle, mlcache::Running) {
    let origin = mlcache::origin::start(OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cadence: Some(cadence),
        chunk_size: 16 * 1024,
        publish: Publish::Progressive,
        ..OriginConfig::default()
    })
    .await
    .unwrap();
    let listener = mlcache::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let relay = mlcache::start_on(
        mlcache::Config {
            allow_origin: vec![origin.url()],
            ..mlcache::Config::default()
        },
        listener,
        None,
    )
    .await
    .unwrap();
    (origin, relay)
}
