//! The node engine end to end on one machine: a local directory as the origin, node roots in temp dirs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use serde_json::json;
use xfd_core::Error;
use xfd_core::engine::{Engine, EngineConfig, Event, Source};
use xfd_core::origin::{StoreConfig, open_store};
use xfd_core::plan::Plan;
use xfd_core::store::{Facet, Op, Store};
use xfd_core::unpack::UnpackOptions;

const CHUNK: u64 = 1 << 20;

fn bytes(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| ((i * 31) as u8).wrapping_add(seed)).collect()
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Writes `objects` under `origin/` and returns a plan that puts them at the given destinations.
async fn plan_for(origin: &Path, objects: &[(&str, Vec<u8>, &[&str])], unpack: Option<(&str, &str, &str)>) -> Plan {
    let url = format!("file://{}", origin.display());
    let store = open_store(&StoreConfig {
        url: url.clone(),
        options: vec![],
    })
    .unwrap();
    let mut plan_objects = Vec::new();
    let mut files = Vec::new();
    for (index, (key, data, destinations)) in objects.iter().enumerate() {
        let path = origin.join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        let meta = store.head(&StorePath::from(*key)).await.unwrap();
        let id = format!("{index:032x}");
        let chunks: Vec<_> = (0..meta.size.div_ceil(CHUNK))
            .map(|i| {
                json!({"id": format!("{index:016x}{i:016x}"), "index": i, "offset": i * CHUNK,
                            "length": CHUNK.min(meta.size - i * CHUNK)})
            })
            .collect();
        plan_objects.push(
            json!({"id": id, "store": "origin", "key": key, "size": meta.size, "etag": meta.e_tag,
                                 "version": null, "last_modified": null, "chunks": chunks}),
        );
        for destination in *destinations {
            files.push(
                json!({"object_id": id, "destination": destination, "artifact": key, "sha256": null, "cache": true}),
            );
        }
    }
    let unpacks: Vec<_> = unpack
        .map(|(key, archive, to)| {
            let index = objects.iter().position(|(k, _, _)| *k == key).unwrap();
            json!({"object_id": format!("{index:032x}"), "archive": archive, "format": "auto", "to": to, "artifact": key})
        })
        .into_iter()
        .collect();
    let plan = json!({
        "format": "xfd.plan/1",
        "settings": {"chunk_size": CHUNK, "node_parallelism": 8, "upload_slots": 8, "origin_parallelism": 32, "overwrite": false},
        "stores": {"origin": {"url": url, "options": {}}},
        "objects": plan_objects, "files": files, "unpacks": unpacks,
    });
    Plan::from_json(&plan.to_string()).unwrap()
}

fn config(plan: &Plan, root: &Path, corrupt_served_bytes: bool) -> EngineConfig {
    let faults = if corrupt_served_bytes { "serve:corrupt" } else { "" };
    let url = plan.stores["origin"].url.clone();
    let stores = BTreeMap::from([("origin".to_string(), StoreConfig { url, options: vec![] })]);
    EngineConfig {
        node_root: root.to_owned(),
        stores,
        peer_token: TOKEN.into(),
        faults: Arc::new(faults.parse().unwrap()),
        state_dir: state_dir(root),
        ..Default::default()
    }
}

/// The node store of a test node: under its root, as `~/.cache/xfd` is on a real node.
fn state_dir(root: &Path) -> PathBuf {
    root.join("home/.cache/xfd")
}

fn store_of(root: &Path) -> Arc<Store> {
    Store::open(&state_dir(root)).unwrap()
}

/// Every name under the node root (the store left out) that is xfd's: none may be beside the user's files.
fn xfd_names(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, skip: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path == skip {
                continue;
            }
            if path.file_name().unwrap().to_string_lossy().contains(".xfd") {
                found.push(path.clone());
            }
            if path.is_dir() && !path.is_symlink() {
                walk(&path, skip, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, &state_dir(root), &mut found);
    found
}

fn engine(plan: &Plan, root: &Path) -> Engine {
    Engine::new(plan.clone(), config(plan, root, false)).unwrap()
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

async fn fetch_all_from_origin(engine: &Engine) {
    for object in &engine.plan().objects {
        for chunk in &object.chunks {
            engine.fetch_from_origin(&chunk.id).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_plan_is_fetched_published_copied_and_unpacked() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model = bytes(3 * CHUNK as usize + 77, 1);
    let archive = tar_gz(&[("a.txt", b"alpha"), ("dir/b.txt", b"beta")]);
    let plan = plan_for(
        origin.path(),
        &[
            (
                "w/model.bin",
                model.clone(),
                &["/models/model.bin", "/backup/model.bin"],
            ),
            ("data.tar.gz", archive, &["/data/data.tar.gz"]),
            ("empty", vec![], &["/e/empty"]),
        ],
        Some(("data.tar.gz", "/data/data.tar.gz", "/data/data")),
    )
    .await;
    let engine = engine(&plan, root.path());
    let scan = engine.scan().await.unwrap();
    assert_eq!(scan.held.len(), 0);
    fetch_all_from_origin(&engine).await;
    assert!(engine.is_complete());
    let unpacked = engine.finish(UnpackOptions::default()).await.unwrap();
    assert_eq!(unpacked.len(), 1);

    assert_eq!(fs::read(root.path().join("models/model.bin")).unwrap(), model);
    assert_eq!(fs::read(root.path().join("backup/model.bin")).unwrap(), model);
    assert_eq!(fs::read(root.path().join("e/empty")).unwrap(), b"");
    assert_eq!(fs::read(root.path().join("data/data/dir/b.txt")).unwrap(), b"beta");

    let events = engine.drain_events();
    let origin_chunks = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ChunkDone {
                    source: Source::Origin,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        origin_chunks,
        plan.objects.iter().map(|o| o.chunks.len()).sum::<usize>()
    );
    let published = events
        .iter()
        .filter(|e| matches!(e, Event::FilePublished { .. }))
        .count();
    assert_eq!(published, 3);
    let started = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ChunkStarted {
                    source: Source::Origin,
                    ..
                }
            )
        })
        .count();
    assert_eq!(started, origin_chunks);
    assert!(engine.registry().len() >= origin_chunks);
    drop(engine);
    assert_eq!(
        xfd_names(root.path()),
        Vec::<PathBuf>::new(),
        "xfd files beside the user's"
    );
}

#[tokio::test]
async fn a_second_run_is_all_cache_hits_and_fetches_nothing() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(
        origin.path(),
        &[("k", bytes(2 * CHUNK as usize + 5, 9), &["/f", "/g"])],
        None,
    )
    .await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    fetch_all_from_origin(&first).await;
    fs::remove_file(root.path().join("g")).unwrap(); // one copy lost: restored from the other, not the origin
    drop(first); // its run is over: it lets go of the destinations

    let second = engine(&plan, root.path());
    let scan = second.scan().await.unwrap();
    assert_eq!(scan.cached_files, 1);
    assert_eq!(scan.held.len(), 3);
    assert!(second.is_complete());
    assert_eq!(
        fs::read(root.path().join("g")).unwrap(),
        bytes(2 * CHUNK as usize + 5, 9)
    );
    let done = second.fetch_from_origin(&plan.objects[0].chunks[0].id).await.unwrap();
    assert!(done.already_held);
    assert_eq!(second.origin_bytes(), 0, "nothing fetched");
    let events = second.drain_events();
    let (asked, scanned) = events.split_last().unwrap();
    assert!(
        scanned.iter().all(|e| matches!(
            e,
            Event::ChunkDone {
                source: Source::Cache,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        matches!(
            asked,
            Event::ChunkDone {
                bytes: 0,
                source: Source::Origin,
                ..
            }
        ),
        "the transfer asked for reports its unit held: {asked:?}"
    );
}

#[tokio::test]
async fn an_interrupted_run_resumes_with_only_the_missing_chunks() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("k", bytes(4 * CHUNK as usize, 3), &["/f"])], None).await;
    {
        let first = engine(&plan, root.path());
        first.scan().await.unwrap();
        first.fetch_from_origin(&plan.objects[0].chunks[1].id).await.unwrap();
        first.fetch_from_origin(&plan.objects[0].chunks[3].id).await.unwrap();
    } // interrupted
    assert!(
        !root.path().join("f").exists(),
        "a partial file must never be at the destination"
    );
    let second = engine(&plan, root.path());
    let scan = second.scan().await.unwrap();
    assert_eq!(scan.resumed_chunks, 2);
    let mut fetched = 0;
    for chunk in &plan.objects[0].chunks {
        if !second.fetch_from_origin(&chunk.id).await.unwrap().already_held {
            fetched += 1;
        }
    }
    assert_eq!(fetched, 2);
    assert_eq!(fs::read(root.path().join("f")).unwrap(), bytes(4 * CHUNK as usize, 3));
}

#[tokio::test]
async fn an_object_changed_at_the_origin_is_reported_and_never_published() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("k", bytes(2 * CHUNK as usize, 1), &["/f"])], None).await;
    let engine = engine(&plan, root.path());
    engine.scan().await.unwrap();
    engine.fetch_from_origin(&plan.objects[0].chunks[0].id).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(origin.path().join("k"), bytes(2 * CHUNK as usize, 2)).unwrap();
    let error = engine
        .fetch_from_origin(&plan.objects[0].chunks[1].id)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("changed at the origin"), "{error}");
    assert!(!root.path().join("f").exists());
    assert!(
        engine
            .drain_events()
            .iter()
            .any(|e| matches!(e, Event::ChunkFailed { .. }))
    );
}

#[test]
fn destinations_never_leave_the_node_root() {
    let root = Path::new("/srv/node-1");
    assert_eq!(
        xfd_core::engine::localize(root, "/models/m.bin").unwrap(),
        root.join("models/m.bin")
    );
    for bad in ["/a/../../etc/passwd", "relative/x", "/"] {
        assert!(xfd_core::engine::localize(root, bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_node_gets_every_chunk_from_a_peer_and_nothing_from_the_origin() {
    let origin = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = bytes(3 * CHUNK as usize + 11, 5);
    let plan = plan_for(origin.path(), &[("k", data.clone(), &["/f"])], None).await;
    let seeder = engine(&plan, root_a.path());
    seeder.scan().await.unwrap();
    fetch_all_from_origin(&seeder).await;
    let address = seeder.start_server(LOOPBACK, 0, 4, None).await.unwrap();
    let digests: BTreeMap<String, String> = seeder
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ChunkDone { chunk_id, digest, .. } => Some((chunk_id, digest)),
            _ => None,
        })
        .collect();

    fs::remove_dir_all(origin.path()).unwrap(); // the origin is gone: only the peer can help now
    let leecher = engine(&plan, root_b.path());
    leecher.scan().await.unwrap();
    for chunk in &plan.objects[0].chunks {
        let expected = xfd_core::ChunkDigest::from_hex(&digests[&chunk.id]);
        leecher.fetch_from_peer(&chunk.id, address, expected).await.unwrap();
    }
    assert_eq!(fs::read(root_b.path().join("f")).unwrap(), data);
    assert_eq!(seeder.server_stats().unwrap().bytes_served, data.len() as u64);
    let sources: Vec<_> = leecher
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ChunkDone { source, .. } => Some(source),
            _ => None,
        })
        .collect();
    assert_eq!(sources, vec![Source::Peer; 4]);
    seeder.stop_server(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_peer_serving_corrupt_bytes_is_caught_and_named() {
    let origin = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = bytes(2 * CHUNK as usize, 8);
    let plan = plan_for(origin.path(), &[("k", data.clone(), &["/f"])], None).await;
    let seeder = engine(&plan, root_a.path());
    seeder.scan().await.unwrap();
    fetch_all_from_origin(&seeder).await;
    let address = seeder.start_server(LOOPBACK, 0, 4, None).await.unwrap();
    let good = xfd_core::ChunkDigest::of_bytes(&data[..CHUNK as usize]);
    // The seeder's disk rots after publication: it would serve bytes that do not match the digest.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(root_a.path().join("f"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"rot", 10).unwrap();

    let leecher = engine(&plan, root_b.path());
    leecher.scan().await.unwrap();
    let chunk = &plan.objects[0].chunks[0];
    let error = leecher
        .fetch_from_peer(&chunk.id, address, Some(good))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&chunk.id) && message.contains(&address.to_string()),
        "{message}"
    );
    assert!(!root_b.path().join("f").exists());
    let failed = leecher.drain_events();
    assert!(
        matches!(
            &failed[..],
            [Event::ChunkStarted { .. }, Event::ChunkFailed { peer: Some(_), .. }]
        ),
        "{failed:?}"
    );
}

async fn seeded(plan: &Plan, root: &Path, corrupt: bool, egress: Option<u64>) -> (Engine, std::net::SocketAddr) {
    let seeder = Engine::new(plan.clone(), config(plan, root, corrupt)).unwrap();
    seeder.scan().await.unwrap();
    fetch_all_from_origin(&seeder).await;
    let address = seeder.start_server(LOOPBACK, 0, 4, egress).await.unwrap();
    (seeder, address)
}

/// Endgame: a chunk is being fetched from a slow peer (`slow`); a duplicate request to a fast peer wins.
async fn race(slow_is_corrupt: bool) {
    let origin = tempfile::tempdir().unwrap();
    let (root_a, root_b, root_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let data = bytes(CHUNK as usize, 4);
    let plan = plan_for(origin.path(), &[("k", data.clone(), &["/f"])], None).await;
    let (_slow, slow_address) = seeded(&plan, root_a.path(), slow_is_corrupt, Some(256 << 10)).await;
    let (_fast, fast_address) = seeded(&plan, root_b.path(), false, None).await;
    let leecher = engine(&plan, root_c.path());
    leecher.scan().await.unwrap();
    let chunk = plan.objects[0].chunks[0].id.clone();
    let expected = Some(xfd_core::ChunkDigest::of_bytes(&data));
    let primary = leecher.fetch_from_peer(&chunk, slow_address, expected);
    let duplicate = async {
        // Once the slow transfer has claimed the chunk (a fixed head start can be too short on a busy
        // machine, and the duplicate would then be the first writer, not the endgame's second).
        while !leecher
            .drain_events()
            .iter()
            .any(|e| matches!(e, Event::ChunkStarted { .. }))
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        leecher.fetch_from_peer(&chunk, fast_address, expected).await
    };
    let (primary, duplicate) = tokio::join!(primary, duplicate);
    let duplicate = duplicate.unwrap();
    assert!(!duplicate.already_held, "the fast duplicate must win");
    // The slow transfer was shut out: it reports the chunk as held, never as a failure of its own.
    assert!(primary.unwrap().already_held);
    assert_eq!(fs::read(root_c.path().join("f")).unwrap(), data);
    drop(leecher); // its run ends: the destination's lock goes too
    assert_eq!(
        xfd_names(root_c.path()),
        Vec::<PathBuf>::new(),
        "no scratch file, nothing else of xfd's"
    );
}

#[tokio::test]
async fn endgame_a_fast_duplicate_wins_over_a_slow_peer() {
    race(false).await;
}

#[tokio::test]
async fn endgame_a_slow_corrupt_peer_cannot_spoil_the_winning_copy() {
    race(true).await;
}

#[tokio::test]
async fn a_large_chunk_arrives_through_parallel_subranges_with_its_whole_digest() {
    let (origin, node) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = node.path();
    let data = bytes(24 << 20, 9);
    let mut plan = plan_for(origin.path(), &[("big.bin", data.clone(), &["/big.bin"])], None).await;
    // One chunk of 24 MiB: fetched as three 8 MiB ranged GETs in parallel.
    let object = &mut plan.objects[0];
    object.chunks.truncate(1);
    object.chunks[0].length = object.size;
    assert_eq!(
        xfd_core::origin::subranges(object.size, plan.settings.origin_chunk_streams).len(),
        3
    );
    let engine = engine(&plan, root);
    engine.scan().await.unwrap();
    let done = engine.fetch_from_origin(&plan.objects[0].chunks[0].id).await.unwrap();
    assert_eq!(done.bytes, 24 << 20);
    assert_eq!(done.digest, blake3::hash(&data).to_hex().to_string());
    assert_eq!(fs::read(root.join("big.bin")).unwrap(), data);
}

#[test]
fn subranges_cover_the_range_exactly_and_are_never_tiny() {
    use xfd_core::origin::{MIN_SUBRANGE, subranges};
    for (length, streams) in [
        (0, 8),
        (1, 8),
        (MIN_SUBRANGE * 2 - 1, 8),
        (64 << 20, 8),
        ((64 << 20) + 3, 8),
        (100 << 20, 1),
    ] {
        let parts = subranges(length, streams);
        assert!(!parts.is_empty() && parts.len() <= streams as usize);
        assert_eq!(parts[0].0, 0);
        assert!(parts.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), length);
        assert!(parts.len() == 1 || parts.iter().all(|p| p.1 >= MIN_SUBRANGE));
    }
}

#[tokio::test]
async fn a_second_engine_on_the_same_destinations_is_refused_until_the_first_ends() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("k", bytes(2 * CHUNK as usize, 2), &["/f"])], None).await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    let second = engine(&plan, root.path());
    match second.scan().await {
        Err(Error::DestinationBusy { path }) => assert_eq!(path, root.path().join("f")),
        other => panic!("expected DestinationBusy, got {:?}", other.map(|_| ())),
    }
    fetch_all_from_origin(&first).await;
    drop(first);
    assert_eq!(xfd_names(root.path()), Vec::<PathBuf>::new());
    let third = engine(&plan, root.path());
    assert_eq!(third.scan().await.unwrap().cached_files, 1);
}

#[tokio::test]
async fn a_closed_engine_lets_go_of_its_destinations_while_something_still_holds_it() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("k", bytes(2 * CHUNK as usize, 2), &["/f"])], None).await;
    let first = Arc::new(engine(&plan, root.path()));
    first.scan().await.unwrap();
    let still_held = first.clone(); // as a pending `wait_events` call holds it after the run stopped
    first.close();
    let late = still_held.fetch_from_origin(&plan.objects[0].chunks[0].id).await;
    assert!(
        late.is_err(),
        "a transfer of a closed engine must not take the destination again"
    );
    let second = engine(&plan, root.path());
    second.scan().await.expect("the next run starts at once");
    fetch_all_from_origin(&second).await;
    assert_eq!(fs::read(root.path().join("f")).unwrap(), bytes(2 * CHUNK as usize, 2));
}

#[tokio::test]
async fn a_refused_run_leaves_nothing_beside_the_other_destinations() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let objects: &[(&str, Vec<u8>, &[&str])] = &[
        ("a", bytes(CHUNK as usize, 1), &["/one/a.bin"]),
        ("b", bytes(CHUNK as usize, 2), &["/two/user.bin"]),
    ];
    let plan = plan_for(origin.path(), objects, None).await;
    fs::create_dir_all(root.path().join("two")).unwrap();
    fs::write(root.path().join("two/user.bin"), b"a user's file").unwrap();
    let refused = engine(&plan, root.path());
    assert!(matches!(refused.scan().await, Err(Error::DestinationExists { .. })));
    refused.close();
    assert_eq!(
        xfd_names(root.path()),
        Vec::<PathBuf>::new(),
        "xfd files left beside a destination"
    );
    assert!(
        store_of(root.path())
            .entry(&root.path().join("one/a.bin"))
            .part
            .is_none()
    );
    assert_eq!(fs::read(root.path().join("two/user.bin")).unwrap(), b"a user's file");
}

/// `/f` published from `data`, then its record put back to "a publish in flight": the state a crash
/// between the rename into place and the final record leaves.
async fn published_then_crashed(data: &[u8]) -> (tempfile::TempDir, tempfile::TempDir, Plan) {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("k", data.to_vec(), &["/f"])], None).await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    fetch_all_from_origin(&first).await;
    drop(first);
    let store = store_of(root.path());
    let f = root.path().join("f");
    let record = store.entry(&f).published.map(|record| *record).unwrap();
    store
        .append(&[
            Op::Publishing {
                dest: f.clone(),
                record,
            },
            Op::Forget {
                dest: f,
                what: Facet::Published,
            },
        ])
        .unwrap();
    (origin, root, plan)
}

#[tokio::test]
async fn a_crash_between_rename_and_record_is_finished_by_the_next_run() {
    let data = bytes(3 * CHUNK as usize + 1, 8);
    let (_origin, root, plan) = published_then_crashed(&data).await;

    let second = engine(&plan, root.path());
    let scan = second.scan().await.unwrap();
    assert_eq!(
        scan.cached_files, 1,
        "the file is proven to be xfd's and kept, not refused as a user's"
    );
    drop(second);
    let entry = store_of(root.path()).entry(&root.path().join("f"));
    assert!(entry.published.is_some() && entry.publishing.is_none(), "{entry:?}");
    assert_eq!(fs::read(root.path().join("f")).unwrap(), data);
}

#[tokio::test]
async fn a_publish_record_that_does_not_match_never_claims_a_users_file() {
    let data = bytes(2 * CHUNK as usize, 1);
    let (_origin, root, plan) = published_then_crashed(&data).await;
    // As if the crash came before the rename, and the user then put a file of the same size there
    // (made elsewhere and moved in: a new file, not the one the record names).
    let users = vec![7u8; data.len()];
    fs::write(root.path().join("mine"), &users).unwrap();
    fs::rename(root.path().join("mine"), root.path().join("f")).unwrap();

    let second = engine(&plan, root.path());
    let refused = second.scan().await.map(|_| ());
    assert!(matches!(refused, Err(Error::DestinationExists { .. })), "{refused:?}");
    assert_eq!(
        fs::read(root.path().join("f")).unwrap(),
        users,
        "the user's file is untouched"
    );
    drop(second);
    assert!(store_of(root.path()).entry(&root.path().join("f")).publishing.is_none());
}

#[tokio::test]
async fn a_killed_runs_part_file_is_removed_by_the_next_run_of_any_manifest() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan_a = plan_for(
        origin.path(),
        &[("a", bytes(3 * CHUNK as usize, 1), &["/a/a.bin"])],
        None,
    )
    .await;
    let plan_b = plan_for(origin.path(), &[("b", bytes(CHUNK as usize, 2), &["/b/b.bin"])], None).await;
    let first = engine(&plan_a, root.path());
    first.scan().await.unwrap();
    first.fetch_from_origin(&plan_a.objects[0].chunks[0].id).await.unwrap();
    drop(first); // as a killed run leaves it: a part file with a recorded chunk, and its record
    assert_eq!(xfd_names(root.path()), [root.path().join("a/.a.bin.xfd-part")]);

    let other = engine(&plan_b, root.path());
    other.scan().await.unwrap();
    fetch_all_from_origin(&other).await;
    drop(other);

    assert_eq!(xfd_names(root.path()), Vec::<PathBuf>::new());
    assert!(store_of(root.path()).entry(&root.path().join("a/a.bin")).part.is_none());
}

#[tokio::test]
async fn a_live_runs_part_file_is_left_alone_by_another_run() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan_a = plan_for(
        origin.path(),
        &[("a", bytes(3 * CHUNK as usize, 1), &["/a/a.bin"])],
        None,
    )
    .await;
    let plan_b = plan_for(origin.path(), &[("b", bytes(CHUNK as usize, 2), &["/b/b.bin"])], None).await;
    let running = engine(&plan_a, root.path());
    running.scan().await.unwrap();
    running
        .fetch_from_origin(&plan_a.objects[0].chunks[0].id)
        .await
        .unwrap();

    let other = engine(&plan_b, root.path());
    other.scan().await.unwrap();

    fetch_all_from_origin(&running).await;
    assert_eq!(
        fs::read(root.path().join("a/a.bin")).unwrap(),
        bytes(3 * CHUNK as usize, 1)
    );
}

#[tokio::test]
async fn sidecars_of_the_previous_layout_are_imported_once_and_removed() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let data = bytes(2 * CHUNK as usize + 3, 4);
    let plan = plan_for(origin.path(), &[("k", data.clone(), &["/m/f"])], None).await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    fetch_all_from_origin(&first).await;
    drop(first);
    // The node as the previous version left it: a sidecar, a lock file and endgame scratch beside the
    // file, and no store.
    let record = store_of(root.path()).entry(&root.path().join("m/f")).published.unwrap();
    let mut sidecar = serde_json::to_value(&record).unwrap();
    sidecar["format"] = "xfd.file/1".into();
    fs::write(root.path().join("m/.f.xfd.json"), sidecar.to_string()).unwrap();
    fs::write(root.path().join("m/.f.xfd-lock"), b"").unwrap();
    fs::write(root.path().join("m/.f.xfd-duplicate-a1B2c3"), b"scratch").unwrap();
    fs::remove_dir_all(state_dir(root.path())).unwrap();

    let upgraded = engine(&plan, root.path());
    let scan = upgraded.scan().await.unwrap();

    assert_eq!(scan.cached_files, 1, "the sidecar's record makes it a cache hit");
    assert_eq!(xfd_names(root.path()), Vec::<PathBuf>::new());
    drop(upgraded);
    let again = engine(&plan, root.path());
    assert_eq!(
        again.scan().await.unwrap().cached_files,
        1,
        "and it stays one, from the store"
    );
}

// --- bundles of small files ------------------------------------------------------------------------

/// `count` small objects of different sizes under `d/`, for `/data/d/...`, packed into bundles of at
/// most 256 members in key order (as the planner packs them).
async fn small_files_plan(origin: &Path, count: usize) -> (Plan, Vec<Vec<u8>>) {
    let contents: Vec<Vec<u8>> = (0..count).map(|i| bytes(1 + (i * 37) % 3000, i as u8)).collect();
    let keys: Vec<String> = (0..count).map(|i| format!("d/f{i:04}")).collect();
    let destinations: Vec<[String; 1]> = keys.iter().map(|k| [format!("/data/{k}")]).collect();
    let destination_refs: Vec<[&str; 1]> = destinations.iter().map(|[d]| [d.as_str()]).collect();
    let objects: Vec<(&str, Vec<u8>, &[&str])> = keys
        .iter()
        .zip(&contents)
        .zip(&destination_refs)
        .map(|((key, data), to)| (key.as_str(), data.clone(), &to[..]))
        .collect();
    let mut plan = plan_for(origin, &objects, None).await;
    let members: Vec<&xfd_core::plan::PlanObject> = plan.objects.iter().collect();
    let bundles = members
        .chunks(256)
        .enumerate()
        .map(|(index, group)| xfd_core::plan::PlanBundle {
            id: format!("b{index:031x}"),
            length: group.iter().map(|o| o.size).sum(),
            members: group.iter().map(|o| o.id.clone()).collect(),
        })
        .collect();
    plan.bundles = bundles;
    let plan = Plan::from_json(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(plan.bundles.len(), count.div_ceil(256));
    (plan, contents)
}

fn bundle_digests(events: Vec<Event>) -> BTreeMap<String, String> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::ChunkDone { chunk_id, digest, .. } => Some((chunk_id, digest)),
            _ => None,
        })
        .collect()
}

fn published_files(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::FilePublished { .. }))
        .count()
}

fn assert_small_files(root: &Path, contents: &[Vec<u8>]) {
    for (i, data) in contents.iter().enumerate() {
        assert_eq!(
            &fs::read(root.join(format!("data/d/f{i:04}"))).unwrap(),
            data,
            "file {i}"
        );
    }
    assert_eq!(
        xfd_names(root),
        Vec::<PathBuf>::new(),
        "nothing of xfd's beside the files"
    );
}

#[tokio::test]
async fn small_files_travel_as_bundles_from_the_origin_once_then_from_a_peer() {
    let origin = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plan, contents) = small_files_plan(origin.path(), 300).await;
    let total: u64 = contents.iter().map(|c| c.len() as u64).sum();
    let seeder = engine(&plan, root_a.path());
    assert!(seeder.scan().await.unwrap().held.is_empty());
    for bundle in &plan.bundles {
        let done = seeder.fetch_from_origin(&bundle.id).await.unwrap();
        assert_eq!(done.bytes, bundle.length);
    }
    assert_small_files(root_a.path(), &contents);
    assert_eq!(seeder.origin_bytes(), total, "each member's bytes from the origin once");
    let events = seeder.drain_events();
    assert_eq!(published_files(&events), 300);
    let digests = bundle_digests(events);
    assert_eq!(digests.len(), 2, "one delivery per bundle: {digests:?}");
    let address = seeder.start_server(LOOPBACK, 0, 4, None).await.unwrap();

    fs::remove_dir_all(origin.path()).unwrap(); // only the peer can help now
    let leecher = engine(&plan, root_b.path());
    leecher.scan().await.unwrap();
    for bundle in &plan.bundles {
        let expected = xfd_core::ChunkDigest::from_hex(&digests[&bundle.id]);
        leecher.fetch_from_peer(&bundle.id, address, expected).await.unwrap();
    }
    assert_small_files(root_b.path(), &contents);
    assert_eq!(leecher.origin_bytes(), 0);
    assert_eq!(seeder.server_stats().unwrap().bytes_served, total);
    assert!(leecher.is_complete());
    seeder.stop_server(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_rerun_holds_whole_bundles_and_fetches_only_the_members_that_went_missing() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (plan, contents) = small_files_plan(origin.path(), 300).await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    for bundle in &plan.bundles {
        first.fetch_from_origin(&bundle.id).await.unwrap();
    }
    let digests = bundle_digests(first.drain_events());
    drop(first);

    let lost = [3usize, 100, 255];
    for i in lost {
        fs::remove_file(root.path().join(format!("data/d/f{i:04}"))).unwrap();
    }
    let second = engine(&plan, root.path());
    let scan = second.scan().await.unwrap();
    assert_eq!(scan.cached_files, 297);
    let (whole, broken) = (&plan.bundles[1].id, &plan.bundles[0].id);
    assert_eq!(scan.held, BTreeMap::from([(whole.clone(), digests[whole].clone())]));
    let done = second.fetch_from_origin(broken).await.unwrap();
    assert_eq!(done.digest, digests[broken], "the same bundle, whatever was read back");
    let refetched: u64 = lost.iter().map(|&i| contents[i].len() as u64).sum();
    assert_eq!(
        second.origin_bytes(),
        refetched,
        "only the missing members from the origin"
    );
    assert_eq!(published_files(&second.drain_events()), 3);
    assert_small_files(root.path(), &contents);
}

#[tokio::test]
async fn a_changed_member_is_fetched_again_not_shared_as_it_is_now() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (plan, contents) = small_files_plan(origin.path(), 10).await;
    let first = engine(&plan, root.path());
    first.scan().await.unwrap();
    first.fetch_from_origin(&plan.bundles[0].id).await.unwrap();
    let digest = bundle_digests(first.drain_events())[&plan.bundles[0].id].clone();
    drop(first);

    // One member goes missing; once the next run has found the others, one of them is edited in place.
    fs::remove_file(root.path().join("data/d/f0001")).unwrap();
    let second = engine(&plan, root.path());
    assert_eq!(second.scan().await.unwrap().cached_files, 9);
    let edited = root.path().join("data/d/f0002");
    let mut changed = contents[2].clone();
    changed[0] ^= 0xFF;
    fs::write(&edited, &changed).unwrap();
    let done = second.fetch_from_origin(&plan.bundles[0].id).await.unwrap();
    assert_eq!(
        done.digest, digest,
        "the bundle as the origin has it, not with the edit"
    );
    let expected = (contents[1].len() + contents[2].len()) as u64;
    assert_eq!(
        second.origin_bytes(),
        expected,
        "the edited member came from the origin"
    );
    assert_eq!(fs::read(root.path().join("data/d/f0001")).unwrap(), contents[1]);
}

#[tokio::test]
async fn a_node_that_gets_only_some_members_of_a_bundle_refuses_the_plan() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (mut plan, _) = small_files_plan(origin.path(), 4).await;
    plan.files[0].nodes = BTreeMap::from([("gpu".to_string(), "a100".to_string())]);
    let refused = Engine::new(plan.clone(), config(&plan, root.path(), false)).map(|_| ());
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("gets 3 of its 4 members"), "{message}");
}

/// Every transfer the coordinator asks for reports once. One that finds its unit already here (an
/// earlier transfer of it, set aside by the coordinator because its source was declared lost, finished
/// first) reports done too: a silent one left the coordinator waiting for it forever.
#[tokio::test]
async fn a_transfer_that_finds_its_unit_already_here_still_reports_done() {
    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (plan, _) = small_files_plan(origin.path(), 20).await;
    let node = engine(&plan, root.path());
    node.scan().await.unwrap();
    let bundle = &plan.bundles[0].id;
    node.fetch_from_origin(bundle).await.unwrap();
    let digest = bundle_digests(node.drain_events())[bundle].clone();

    let again = node
        .fetch_from_peer(bundle, "127.0.0.9:9".parse().unwrap(), None)
        .await
        .unwrap();
    assert!(again.already_held);
    let events = node.drain_events();
    assert!(
        matches!(&events[..], [Event::ChunkDone { chunk_id, digest: d, source: Source::Peer, peer: Some(_), .. }]
            if chunk_id == bundle && *d == digest),
        "{events:?}"
    );

    let big = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("big", bytes(3000, 1), &["/data/big"])], None).await;
    let node = engine(&plan, big.path());
    node.scan().await.unwrap();
    let chunk = &plan.objects[0].chunks[0].id;
    node.fetch_from_origin(chunk).await.unwrap();
    node.drain_events();
    assert!(node.fetch_from_origin(chunk).await.unwrap().already_held);
    let events = node.drain_events();
    assert!(
        matches!(&events[..], [Event::ChunkDone { chunk_id, source: Source::Origin, .. }] if chunk_id == chunk),
        "{events:?}"
    );
}

/// Runs `plan` on one engine per root, each on a control link to a real coordinator; returns the final
/// status once every node holds everything.
async fn run_linked(plan: &Plan, roots: &[&Path]) -> xfd_core::control::server::Status {
    use std::time::Duration;
    use xfd_core::control::core::RunPlan;
    use xfd_core::control::link::{self, LinkConfig};
    use xfd_core::control::server::{Coordinator, CoordinatorConfig, Outcome};
    use xfd_core::engine::LinkedEngine;

    let coordinator = Coordinator::start(CoordinatorConfig {
        plan: RunPlan {
            units: plan.units(),
            unique_bytes: plan.objects.iter().map(|o| o.size).sum(),
            scheduler: xfd_core::scheduler::SchedulerConfig::default(),
        },
        token: TOKEN.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        lost_after: Duration::from_secs(30),
        snapshot_every: Duration::from_millis(50),
        with_chunks: false,
        expected: (0..roots.len()).map(|i| format!("node-{i}")).collect(),
        origin_hold: Duration::from_secs(60),
    })
    .await
    .unwrap();
    let mut engines = Vec::new();
    for (index, root) in roots.iter().enumerate() {
        let engine = Arc::new(engine(plan, root));
        let held = engine.scan().await.unwrap().held;
        engine.drain_events(); // the scan's cache hits, as the agent drains them
        let address = engine.start_server(LOOPBACK, 0, 4, None).await.unwrap();
        let reports = engine.tap_reports();
        let worker = Arc::new(LinkedEngine {
            engine: engine.clone(),
            running: Default::default(),
        });
        let config = LinkConfig {
            coordinator: coordinator.address(),
            token: TOKEN.into(),
            node: format!("node-{index}"),
            heartbeat: Duration::from_millis(200),
        };
        tokio::spawn(link::run(config, reports, worker));
        let needs = plan.units().into_iter().map(|(unit, _)| unit).collect();
        let held = held.into_iter().collect();
        coordinator
            .join(&format!("node-{index}"), &address.to_string(), needs, held)
            .unwrap();
        engines.push(engine);
    }
    let waited = tokio::task::spawn_blocking(move || {
        let status = coordinator.wait(Duration::from_secs(60));
        (status, coordinator.end())
    });
    let (status, ended) = waited.await.unwrap();
    assert_eq!(status.outcome, Some(Outcome::Finished), "{:?}", status.failures);
    for engine in &engines {
        assert!(engine.is_complete());
        assert!(
            engine.drain_events().is_empty(),
            "a linked engine keeps no events: its outcomes went over the link"
        );
        engine.stop_server(std::time::Duration::from_secs(1)).await;
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_control_links_get_every_unit_with_each_byte_from_the_origin_once() {
    let origin = tempfile::tempdir().unwrap();
    let roots: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (plan, contents) = small_files_plan(origin.path(), 600).await;
    let total: u64 = contents.iter().map(|c| c.len() as u64).sum();
    let paths: Vec<&Path> = roots.iter().map(|r| r.path()).collect();

    let status = run_linked(&plan, &paths).await;

    for root in &paths {
        assert_small_files(root, &contents);
    }
    assert_eq!(
        status.origin_bytes.values().sum::<u64>(),
        total,
        "each byte from the origin once"
    );
    assert_eq!(
        status.deliveries,
        3 * plan.bundles.len() as u64,
        "one delivery per bundle and node"
    );
    assert!(
        status
            .snapshot
            .nodes
            .iter()
            .all(|n| n.state == xfd_core::control::progress::NodeState::Done)
    );

    let again = run_linked(&plan, &paths).await; // a rerun: everything is a cache hit
    assert_eq!(again.deliveries, 0);
    assert_eq!(again.origin_bytes.values().sum::<u64>(), 0);
}

/// Work whose digest does not parse is refused, not fetched unchecked: "no digest" and "a digest that
/// cannot be read" are not the same.
#[tokio::test]
async fn linked_work_with_a_digest_that_does_not_parse_fails_instead_of_going_unchecked() {
    use xfd_core::control::link::{Work, Worker};
    use xfd_core::control::wire::PeerWork;
    use xfd_core::engine::LinkedEngine;

    let origin = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let plan = plan_for(origin.path(), &[("big", bytes(3000, 1), &["/data/big"])], None).await;
    let node = Arc::new(engine(&plan, root.path()));
    node.scan().await.unwrap();
    node.drain_events();
    let chunk = plan.objects[0].chunks[0].id.clone();
    let worker = LinkedEngine {
        engine: node.clone(),
        running: Default::default(),
    };
    worker.start(Work {
        origin: vec![],
        peers: vec![PeerWork {
            unit: chunk.clone(),
            peer: "127.0.0.9:9".into(),
            digest: Some("not-hex".into()),
            after: None,
        }],
    });
    let events = node.drain_events();
    assert!(
        matches!(&events[..], [Event::ChunkFailed { chunk_id, error_kind, .. }] if *chunk_id == chunk && error_kind == "fatal"),
        "{events:?}"
    );
}
