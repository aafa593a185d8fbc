//! The origin rate caps (`origin_rate`, `origin_request_rate`) on the engine's origin path: a local
//! directory as the origin, the caps from the plan's settings. Each check is one-sided: a capped fetch
//! never takes less time than its bytes (or requests) at the cap allow.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use xfd_core::engine::{Engine, EngineConfig};
use xfd_core::origin::StoreConfig;

const MIB: u64 = 1 << 20;

fn bytes(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| ((i * 31) as u8).wrapping_add(seed)).collect()
}

/// `objects` (key, size) written under `origin`, each one chunk of up to `chunk` bytes or more; `bundle`:
/// all of them packed into one bundle. Settings on top of the plan's defaults.
fn plan_for(
    origin: &Path,
    objects: &[(String, usize)],
    chunk: u64,
    bundle: bool,
    settings: serde_json::Value,
) -> xfd_core::plan::Plan {
    let url = format!("file://{}", origin.display());
    let mut plan_objects = Vec::new();
    let mut files = Vec::new();
    for (index, (key, size)) in objects.iter().enumerate() {
        fs::write(origin.join(key), bytes(*size, index as u8)).unwrap();
        let size = *size as u64;
        let id = format!("{index:032x}");
        let chunks: Vec<_> = (0..size.div_ceil(chunk))
            .map(|i| json!({"id": format!("{index:016x}{i:016x}"), "index": i, "offset": i * chunk, "length": chunk.min(size - i * chunk)}))
            .collect();
        plan_objects.push(
            json!({"id": id, "store": "origin", "key": key, "size": size, "etag": null,
                                 "version": null, "last_modified": null, "chunks": chunks}),
        );
        files.push(json!({"object_id": id, "destination": format!("/data/{key}"), "artifact": key, "sha256": null, "cache": true}));
    }
    let bundles = if bundle {
        let length: usize = objects.iter().map(|(_, size)| size).sum();
        let members: Vec<_> = (0..objects.len()).map(|index| format!("{index:032x}")).collect();
        vec![json!({"id": format!("b{:031x}", 0), "length": length, "members": members})]
    } else {
        vec![]
    };
    let mut all = json!({"chunk_size": chunk, "node_parallelism": 8, "upload_slots": 8, "origin_parallelism": 32,
                         "overwrite": false});
    all.as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    let plan = json!({
        "format": "xfd.plan/1", "settings": all, "stores": {"origin": {"url": url, "options": {}}},
        "objects": plan_objects, "files": files, "bundles": bundles,
    });
    xfd_core::plan::Plan::from_json(&plan.to_string()).unwrap()
}

fn engine(plan: &xfd_core::plan::Plan, root: &Path) -> Engine {
    let url = plan.stores["origin"].url.clone();
    let config = EngineConfig {
        node_root: root.to_owned(),
        stores: BTreeMap::from([("origin".to_string(), StoreConfig { url, options: vec![] })]),
        state_dir: root.join("home/.cache/xfd"),
        ..Default::default()
    };
    Engine::new(plan.clone(), config).unwrap()
}

fn seconds(amount: f64, per_sec: f64) -> Duration {
    Duration::from_secs_f64(amount / per_sec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_units_in_flight_together_stay_within_origin_rate() {
    let (origin, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // 4 units may run at once (origin_parallelism 4, one stream each): each gets a quarter of 8 MiB/s.
    let objects: Vec<_> = (0..4).map(|i| (format!("o{i}"), MIB as usize)).collect();
    let settings = json!({"origin_parallelism": 4, "origin_chunk_streams": 1, "origin_rate": 8 * MIB});
    let plan = plan_for(origin.path(), &objects, MIB, false, settings);
    let engine = Arc::new(engine(&plan, root.path()));
    engine.scan().await.unwrap();
    let started = Instant::now();
    let fetches = plan.objects.iter().map(|object| {
        let (engine, chunk) = (engine.clone(), object.chunks[0].id.clone());
        tokio::spawn(async move { engine.fetch_from_origin(&chunk).await.unwrap() })
    });
    for fetch in futures::future::join_all(fetches).await {
        assert_eq!(fetch.unwrap().bytes, MIB);
    }
    let elapsed = started.elapsed();
    assert_eq!(engine.origin_bytes(), 4 * MIB);
    // 4 MiB at 8 MiB/s: half a second at least (timer rounding aside).
    assert!(
        elapsed >= seconds(4.0 * MIB as f64, 8.0 * MIB as f64) - Duration::from_millis(5),
        "{elapsed:?}"
    );
    for (index, (key, size)) in objects.iter().enumerate() {
        assert_eq!(
            fs::read(root.path().join("data").join(key)).unwrap(),
            bytes(*size, index as u8)
        );
    }
}

#[tokio::test]
async fn a_bundle_makes_its_gets_within_its_share_of_origin_request_rate() {
    let (origin, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let objects: Vec<_> = (0..20).map(|i| (format!("s{i:02}"), 1000 + i)).collect();
    // 4 origin units (32 / 8): 160 GETs/s in all is 40/s for this bundle's 20 GETs.
    let plan = plan_for(origin.path(), &objects, MIB, true, json!({"origin_request_rate": 160}));
    let engine = engine(&plan, root.path());
    engine.scan().await.unwrap();
    let started = Instant::now();
    let done = engine.fetch_from_origin(&plan.bundles[0].id).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(done.bytes, plan.bundles[0].length);
    assert!(elapsed >= seconds(20.0, 40.0) - Duration::from_millis(5), "{elapsed:?}");
    for (index, (key, size)) in objects.iter().enumerate() {
        assert_eq!(
            fs::read(root.path().join("data").join(key)).unwrap(),
            bytes(*size, index as u8)
        );
    }
}
