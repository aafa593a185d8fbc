//! The plan as the engine reads it: the JSON written by `xfd.plan.Plan.to_json()` (format `xfd.plan/1`).
//!
//! Unknown fields are refused: a plan from another version of xfd must fail loudly, never half-work.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const PLAN_FORMAT: &str = "xfd.plan/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: String,
    pub settings: Settings,
    pub stores: BTreeMap<String, PlanStore>,
    pub objects: Vec<PlanObject>,
    pub files: Vec<PlanFile>,
    #[serde(default)]
    pub unpacks: Vec<PlanUnpack>,
    /// Small objects packed into one transfer unit each (absent in plans that predate bundles).
    #[serde(default)]
    pub bundles: Vec<PlanBundle>,
}

/// The manifest's chunk size: bytes, or `"auto"` (a size per file). Informative only: every chunk's
/// offset and length are in the plan, and the engine goes by those.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChunkSize {
    Bytes(u64),
    Automatic(Auto),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auto {
    #[serde(rename = "auto")]
    Auto,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub chunk_size: ChunkSize,
    pub node_parallelism: u32,
    pub upload_slots: u32,
    pub origin_parallelism: u32,
    pub overwrite: bool,
    /// The origin retry policy (see [`crate::origin::RetryPolicy`]); absent in plans that predate it.
    #[serde(default = "defaults::origin_attempts")]
    pub origin_attempts: u32,
    #[serde(default = "defaults::origin_backoff")]
    pub origin_backoff: f64,
    #[serde(default = "defaults::origin_max_backoff")]
    pub origin_max_backoff: f64,
    #[serde(default = "defaults::origin_timeout")]
    pub origin_timeout: f64,
    /// Ranged GETs one chunk is fetched with from the origin, in parallel.
    #[serde(default = "defaults::origin_chunk_streams")]
    pub origin_chunk_streams: u32,
    /// Bytes of free space an unpack must leave on the file system of its destination (manifest
    /// `settings.disk_reserve`).
    #[serde(default = "defaults::disk_reserve")]
    pub disk_reserve: u64,
    /// Bytes per second the whole cluster may fetch from the origin; 0: uncapped
    /// ([`crate::origin::Pace`] shares it out).
    #[serde(default = "defaults::origin_rate")]
    pub origin_rate: u64,
    /// GET requests per second the whole cluster may send to the origin; 0: uncapped.
    #[serde(default = "defaults::origin_request_rate")]
    pub origin_request_rate: u64,
    /// Bytes per second each node's peer server may send; 0: uncapped.
    #[serde(default = "defaults::upload_rate")]
    pub upload_rate: u64,
}

impl Settings {
    /// See [`origin_units`].
    pub fn origin_units(&self) -> u32 {
        origin_units(self.origin_parallelism, self.origin_chunk_streams)
    }
}

/// Origin transfers (units: chunks or bundles) the run's scheduler lets run at once across the cluster:
/// `origin_parallelism` counts GETs, and one unit makes up to `origin_chunk_streams` of them at a time.
/// The one formula for both the coordinator's scheduler (`xfd._core.Coordinator`) and the origin rate
/// caps' shares ([`crate::origin::Pace`]): the caps hold only while the two agree.
pub fn origin_units(origin_parallelism: u32, origin_chunk_streams: u32) -> u32 {
    (origin_parallelism / origin_chunk_streams.max(1)).max(1)
}

/// The manifest's settings defaults as Rust needs them: for the settings added after the first plans
/// (older plans lack them), the origin retry policy and [`crate::scheduler::SchedulerConfig::default`].
/// Their one home is `Settings` in `xfd/manifest/model.py`: `tests/test_one_home.py` fails when a value
/// here differs from it.
pub(crate) mod defaults {
    pub fn node_parallelism() -> u32 {
        8
    }
    pub fn upload_slots() -> u32 {
        8
    }
    pub fn origin_parallelism() -> u32 {
        32
    }
    pub fn origin_attempts() -> u32 {
        8
    }
    pub fn origin_backoff() -> f64 {
        0.1
    }
    pub fn origin_max_backoff() -> f64 {
        20.0
    }
    pub fn origin_timeout() -> f64 {
        600.0
    }
    pub fn origin_chunk_streams() -> u32 {
        8
    }
    /// Room for logs, caches and the next job's scratch files once an archive is unpacked.
    pub fn disk_reserve() -> u64 {
        1 << 30
    }
    /// The rate caps: uncapped unless the manifest sets them.
    pub fn origin_rate() -> u64 {
        0
    }
    pub fn origin_request_rate() -> u64 {
        0
    }
    pub fn upload_rate() -> u64 {
        0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStore {
    pub url: String,
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanObject {
    pub id: String,
    pub store: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub last_modified: Option<String>,
    pub chunks: Vec<PlanChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChunk {
    pub id: String,
    pub index: u64,
    pub offset: u64,
    pub length: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub object_id: String,
    pub destination: String,
    pub artifact: String,
    pub sha256: Option<String>,
    pub cache: bool,
    /// Ray labels a node must have to get this file; empty: every node.
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
}

impl PlanFile {
    /// Whether a node with these labels gets this file.
    pub fn applies_to(&self, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.iter().all(|(key, value)| labels.get(key) == Some(value))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanUnpack {
    pub object_id: String,
    pub archive: String,
    pub format: String,
    pub to: String,
    pub artifact: String,
    /// Most bytes the archive may unpack to (manifest `unpack.max_size`); `None`: the engine's default.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Most unpacked bytes per byte of archive (manifest `unpack.max_ratio`); `None`: the engine's
    /// default.
    #[serde(default)]
    pub max_ratio: Option<f64>,
}

/// Small objects that travel as one unit: fetched from the origin with one GET per member, shared
/// between peers as one chunk (the members' bytes concatenated in order, `length` bytes, one digest),
/// scheduled as one item. Each member is an object of one chunk that covers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBundle {
    pub id: String,
    pub length: u64,
    pub members: Vec<String>,
}

impl Plan {
    /// What the scheduler counts, `(unit id, bytes)`: every chunk of every object outside bundles (in
    /// object order), then every bundle; as the Python side's `Plan.unit_sizes`.
    pub fn units(&self) -> Vec<(String, u64)> {
        let bundled: std::collections::HashSet<&str> = self
            .bundles
            .iter()
            .flat_map(|b| b.members.iter().map(String::as_str))
            .collect();
        let chunks = self
            .objects
            .iter()
            .filter(|o| !bundled.contains(o.id.as_str()))
            .flat_map(|o| o.chunks.iter().map(|c| (c.id.clone(), c.length)));
        chunks
            .chain(self.bundles.iter().map(|b| (b.id.clone(), b.length)))
            .collect()
    }

    /// Parses and checks a plan: its format, and that every file and unpack names a known object.
    pub fn from_json(text: &str) -> Result<Plan> {
        let mut plan: Plan = serde_json::from_str(text).map_err(|e| Error::InvalidPlan(e.to_string()))?;
        plan.shrink_to_fit();
        if plan.format != PLAN_FORMAT {
            return Err(Error::InvalidPlan(format!(
                "format {:?}, expected {PLAN_FORMAT:?}",
                plan.format
            )));
        }
        let index = plan.index();
        if let Some(file) = plan.files.iter().find(|f| index.object(&f.object_id).is_none()) {
            return Err(Error::InvalidPlan(format!(
                "file {} names unknown object {}",
                file.destination, file.object_id
            )));
        }
        if let Some(unpack) = plan.unpacks.iter().find(|u| index.object(&u.object_id).is_none()) {
            return Err(Error::InvalidPlan(format!(
                "unpack {} names unknown object {}",
                unpack.to, unpack.object_id
            )));
        }
        if let Some(unpack) = plan
            .unpacks
            .iter()
            .find(|u| u.max_ratio.is_some_and(|r| r.is_nan() || r <= 0.0))
        {
            return Err(Error::InvalidPlan(format!(
                "unpack {} has max_ratio {:?}, expected a positive number",
                unpack.to, unpack.max_ratio
            )));
        }
        check_bundles(&plan, &index)?;
        Ok(plan)
    }

    /// Gives back the room the parser left in the plan's lists: JSON says no length up front, so each
    /// list grew by doubling, and an object's one chunk took the room of four. The plan is kept for the
    /// whole run; with 100,000 small files, this is near a third of it.
    fn shrink_to_fit(&mut self) {
        for object in &mut self.objects {
            object.chunks.shrink_to_fit();
        }
        for bundle in &mut self.bundles {
            bundle.members.shrink_to_fit();
        }
        self.objects.shrink_to_fit();
        self.files.shrink_to_fit();
        self.unpacks.shrink_to_fit();
        self.bundles.shrink_to_fit();
    }

    /// The object `id` names. A scan of the objects: for a lookup per file or per object, build
    /// [`Plan::index`] once.
    pub fn object(&self, id: &str) -> Option<&PlanObject> {
        self.objects.iter().find(|o| o.id == id)
    }

    /// Objects by id and files by object, built in one pass over the plan: with it, work done per file
    /// or per object stays linear in the plan's size (a scan per file made 100,000 files cost minutes).
    pub fn index(&self) -> PlanIndex<'_> {
        let mut objects = HashMap::with_capacity(self.objects.len());
        for object in &self.objects {
            // The first object of an id wins, as with `Plan::object`.
            objects.entry(object.id.as_str()).or_insert(object);
        }
        let mut files: HashMap<&str, Vec<&PlanFile>> = HashMap::new();
        for file in &self.files {
            files.entry(file.object_id.as_str()).or_default().push(file);
        }
        PlanIndex { objects, files }
    }
}

/// Every member of a bundle is a known object of one chunk that covers it, in no other bundle, and a
/// bundle's length is its members' sizes added up: the engine cuts a bundle's bytes by these.
fn check_bundles(plan: &Plan, index: &PlanIndex<'_>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for bundle in &plan.bundles {
        let mut length = 0u64;
        for member in &bundle.members {
            let problem = match index.object(member) {
                None => Some("is not an object of the plan"),
                Some(object) if !is_whole_chunk(object) => Some("is not an object of one whole chunk"),
                Some(_) if !seen.insert(member.as_str()) => Some("is in another bundle too"),
                Some(object) => {
                    length += object.size;
                    None
                }
            };
            if let Some(problem) = problem {
                return Err(Error::InvalidPlan(format!(
                    "bundle {}: member {member} {problem}",
                    bundle.id
                )));
            }
        }
        if length != bundle.length {
            return Err(Error::InvalidPlan(format!(
                "bundle {} has length {}, its members add up to {length}",
                bundle.id, bundle.length
            )));
        }
    }
    Ok(())
}

fn is_whole_chunk(object: &PlanObject) -> bool {
    matches!(object.chunks.as_slice(), [chunk] if chunk.offset == 0 && chunk.length == object.size && object.size > 0)
}

/// Lookups into a [`Plan`], borrowed from it (see [`Plan::index`]).
#[derive(Debug)]
pub struct PlanIndex<'a> {
    objects: HashMap<&'a str, &'a PlanObject>,
    files: HashMap<&'a str, Vec<&'a PlanFile>>,
}

impl<'a> PlanIndex<'a> {
    /// The object `id` names, as [`Plan::object`] finds it.
    pub fn object(&self, id: &str) -> Option<&'a PlanObject> {
        self.objects.get(id).copied()
    }

    /// The files of object `id`, in the plan's order; empty when none names it.
    pub fn files_of(&self, id: &str) -> &[&'a PlanFile] {
        self.files.get(id).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with_chunk_size(chunk_size: &str) -> Result<Plan, String> {
        let text = format!(
            r#"{{"format": "xfd.plan/1", "settings": {{"chunk_size": {chunk_size}, "node_parallelism": 8,
            "upload_slots": 8, "origin_parallelism": 32, "overwrite": false}}, "stores": {{}}, "objects": [],
            "files": []}}"#
        );
        Plan::from_json(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_chunk_size_is_bytes_or_auto() {
        let bytes = plan_with_chunk_size("33554432").unwrap();
        assert_eq!(bytes.settings.chunk_size, ChunkSize::Bytes(32 << 20));
        let auto = plan_with_chunk_size(r#""auto""#).unwrap();
        assert_eq!(auto.settings.chunk_size, ChunkSize::Automatic(Auto::Auto));
        assert!(plan_with_chunk_size(r#""big""#).is_err());
    }

    fn plan_of(objects: &[(&str, &str)], files: &[(&str, &str)], unpacks: &[(&str, &str)]) -> Result<Plan, String> {
        let objects: Vec<String> = objects
            .iter()
            .map(|(id, key)| {
                format!(
                    r#"{{"id": "{id}", "store": "s", "key": "{key}", "size": 1, "etag": null, "version": null,
                    "last_modified": null, "chunks": []}}"#
                )
            })
            .collect();
        let files: Vec<String> = files
            .iter()
            .map(|(object, to)| {
                format!(r#"{{"object_id": "{object}", "destination": "{to}", "artifact": "a", "sha256": null, "cache": true}}"#)
            })
            .collect();
        let unpacks: Vec<String> = unpacks
            .iter()
            .map(|(object, to)| {
                format!(r#"{{"object_id": "{object}", "archive": "/a.zip", "format": "zip", "to": "{to}", "artifact": "a"}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"format": "xfd.plan/1", "settings": {{"chunk_size": "auto", "node_parallelism": 8,
            "upload_slots": 8, "origin_parallelism": 32, "overwrite": false}}, "stores": {{}},
            "objects": [{}], "files": [{}], "unpacks": [{}]}}"#,
            objects.join(","),
            files.join(","),
            unpacks.join(",")
        );
        Plan::from_json(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_index_finds_objects_and_each_objects_files_in_plan_order() {
        let plan = plan_of(
            &[("o1", "first"), ("o2", "second"), ("o1", "again")],
            &[("o1", "/x"), ("o2", "/y"), ("o1", "/z")],
            &[],
        )
        .unwrap();
        let index = plan.index();
        // The first object of an id, as `Plan::object` finds it.
        assert_eq!(index.object("o1").map(|o| o.key.as_str()), Some("first"));
        assert_eq!(index.object("o1"), plan.object("o1"));
        assert_eq!(index.object("o2").map(|o| o.key.as_str()), Some("second"));
        assert_eq!(index.object("o3"), None);
        let destinations = |id| {
            index
                .files_of(id)
                .iter()
                .map(|f| f.destination.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(destinations("o1"), ["/x", "/z"]);
        assert_eq!(destinations("o2"), ["/y"]);
        assert!(destinations("o3").is_empty());
    }

    #[test]
    fn files_and_unpacks_of_unknown_objects_are_refused_in_a_large_plan() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("o{i}")).collect();
        let objects: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "k")).collect();
        let paths: Vec<String> = (0..20_000).map(|i| format!("/d/{i}")).collect();
        let mut files: Vec<(&str, &str)> = ids
            .iter()
            .map(String::as_str)
            .zip(paths.iter().map(String::as_str))
            .collect();
        let plan = plan_of(&objects, &files, &[("o19999", "/u")]).unwrap();
        assert_eq!(plan.index().files_of("o19999").len(), 1);
        files[12_345].0 = "gone";
        let err = plan_of(&objects, &files, &[]).unwrap_err();
        assert_eq!(err, "invalid plan: file /d/12345 names unknown object gone");
        files[12_345].0 = "o1";
        let err = plan_of(&objects, &files, &[("missing", "/u")]).unwrap_err();
        assert_eq!(err, "invalid plan: unpack /u names unknown object missing");
    }

    #[test]
    fn unpack_limits_and_the_disk_reserve_default_when_absent() {
        let plan = |settings: &str, unpack: &str| {
            let text = format!(
                r#"{{"format": "xfd.plan/1", "settings": {{"chunk_size": "auto", "node_parallelism": 8,
                "upload_slots": 8, "origin_parallelism": 32, "overwrite": false{settings}}}, "stores": {{}},
                "objects": [{{"id": "o", "store": "s", "key": "k", "size": 1, "etag": null, "version": null,
                "last_modified": null, "chunks": []}}], "files": [], "unpacks": [{{"object_id": "o",
                "archive": "a.zip", "format": "zip", "to": "a", "artifact": "x"{unpack}}}]}}"#
            );
            Plan::from_json(&text).map_err(|e| e.to_string())
        };
        let old = plan("", "").unwrap();
        assert_eq!((old.unpacks[0].max_size, old.unpacks[0].max_ratio), (None, None));
        assert_eq!(old.settings.disk_reserve, 1 << 30);
        let new = plan(r#", "disk_reserve": 0"#, r#", "max_size": 10, "max_ratio": 2.5"#).unwrap();
        assert_eq!(
            (new.unpacks[0].max_size, new.unpacks[0].max_ratio),
            (Some(10), Some(2.5))
        );
        assert_eq!(new.settings.disk_reserve, 0);
        let err = plan("", r#", "max_ratio": 0"#).unwrap_err();
        assert!(err.contains("max_ratio") && err.contains("positive"), "{err}");
    }

    fn plan_with_bundle(members: &str, length: u64) -> Result<Plan, String> {
        let object = |id: &str, size: u64, chunks: &str| {
            format!(
                r#"{{"id": "{id}", "store": "s", "key": "{id}", "size": {size}, "etag": null, "version": null,
                "last_modified": null, "chunks": [{chunks}]}}"#
            )
        };
        let whole = |size: u64| format!(r#"{{"id": "c{size}", "index": 0, "offset": 0, "length": {size}}}"#);
        let objects = [
            object("a", 10, &whole(10)),
            object("b", 5, &whole(5)),
            object("split", 4, &format!("{}, {}", whole(2), whole(2))),
        ];
        let text = format!(
            r#"{{"format": "xfd.plan/1", "settings": {{"chunk_size": "auto", "node_parallelism": 8,
            "upload_slots": 8, "origin_parallelism": 32, "overwrite": false}}, "stores": {{}},
            "objects": [{}], "files": [], "bundles": [{{"id": "b1", "length": {length}, "members": [{members}]}}]}}"#,
            objects.join(",")
        );
        Plan::from_json(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bundle_is_made_of_known_whole_chunk_objects_and_its_length_adds_up() {
        assert_eq!(
            plan_with_bundle(r#""a", "b""#, 15).unwrap().bundles[0].members,
            ["a", "b"]
        );
        let err = plan_with_bundle(r#""a", "b""#, 16).unwrap_err();
        assert!(err.contains("has length 16, its members add up to 15"), "{err}");
        let err = plan_with_bundle(r#""a", "gone""#, 10).unwrap_err();
        assert!(err.contains("member gone is not an object of the plan"), "{err}");
        let err = plan_with_bundle(r#""a", "split""#, 14).unwrap_err();
        assert!(
            err.contains("member split is not an object of one whole chunk"),
            "{err}"
        );
        let err = plan_with_bundle(r#""a", "a""#, 20).unwrap_err();
        assert!(err.contains("member a is in another bundle too"), "{err}");
    }
}
