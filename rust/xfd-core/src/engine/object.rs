//! Where each object of the plan stands on this node, and where its files go.

use std::sync::Arc;

use super::EngineConfig;
use super::config::localize;
use crate::assembly::{ChunkSpan, FileIdentity, FileRecord, FileTarget, PartFile};
use crate::error::Result;
use crate::origin::ObjectIdentity;
use crate::plan::{Plan, PlanFile, PlanObject};
use crate::store::{DestinationLock, Store};

/// Where an object stands on this node: one state at a time, so a published object never has a part
/// file and a part file is never kept beside a published one.
pub(super) enum ObjectState {
    /// Nothing of it is here, or a part file closed: a part file is opened when a chunk arrives, so a
    /// plan of 100,000 files does not hold 100,000 open files. Bundle members stay here until their
    /// bundle publishes them whole.
    Missing,
    /// Being assembled in its part file, with the chunks recorded so far. Boxed, as `Published`: the
    /// state of each object is kept for the whole run.
    Assembling(Box<PartFile>),
    /// Published at every destination of this node, as recorded.
    Published(Box<FileRecord>),
}

impl ObjectState {
    pub(super) fn is_published(&self) -> bool {
        matches!(self, ObjectState::Published(_))
    }

    /// The part file, while the object is assembled.
    pub(super) fn part(&self) -> Option<&PartFile> {
        match self {
            ObjectState::Assembling(part) => Some(part),
            _ => None,
        }
    }

    /// The record, once the object is published.
    pub(super) fn record(&self) -> Option<&FileRecord> {
        match self {
            ObjectState::Published(record) => Some(record),
            _ => None,
        }
    }

    /// `true` when the chunk `chunk_id` is here: its object published, or the chunk recorded.
    pub(super) fn holds(&self, chunk_id: &str) -> bool {
        match self {
            ObjectState::Missing => false,
            ObjectState::Assembling(part) => part.done().contains_key(chunk_id),
            ObjectState::Published(_) => true,
        }
    }

    /// The digest of the chunk `chunk_id` as recorded here; empty when it is not.
    pub(super) fn digest_of(&self, chunk_id: &str) -> String {
        match self {
            ObjectState::Missing => String::new(),
            ObjectState::Assembling(part) => part.done().get(chunk_id).map(|d| d.to_hex()).unwrap_or_default(),
            ObjectState::Published(record) => record.chunks.get(chunk_id).cloned().unwrap_or_default(),
        }
    }

    /// Closes the part file of an object being assembled (what it recorded stays, for a resume).
    pub(super) fn close_part(&mut self) {
        if let ObjectState::Assembling(_) = self {
            *self = ObjectState::Missing;
        }
    }

    /// Takes the part file out when every chunk is in (the object is missing until published).
    pub(super) fn take_complete(&mut self) -> Option<Box<PartFile>> {
        match std::mem::replace(self, ObjectState::Missing) {
            ObjectState::Assembling(part) if part.is_complete() => Some(part),
            other => {
                *self = other;
                None
            }
        }
    }
}

pub(super) struct ObjectWork {
    /// The plan, shared with the engine and every other object's work: a copy of each object would
    /// double what a plan of 100,000 small files holds.
    plan: Arc<Plan>,
    /// This object's place in the plan's objects.
    index: usize,
    /// The object travels in a bundle: never fetched, resumed or served on its own.
    pub(super) member: bool,
    /// Every destination of this object on this node; the first one is assembled, the others copied.
    pub(super) targets: Vec<FileTarget>,
    pub(super) state: ObjectState,
    /// The destinations' locks, held from the first look at them to the end of the run.
    pub(super) locks: Vec<DestinationLock>,
}

impl ObjectWork {
    pub(super) fn new(plan: Arc<Plan>, index: usize, targets: Vec<FileTarget>) -> ObjectWork {
        ObjectWork {
            plan,
            index,
            member: false,
            targets,
            state: ObjectState::Missing,
            locks: Vec::new(),
        }
    }

    pub(super) fn object(&self) -> &PlanObject {
        &self.plan.objects[self.index]
    }

    /// Takes the destinations' locks, if not held yet; `true` when they were taken now.
    pub(super) fn lock_destinations(&mut self, store: &Arc<Store>) -> Result<bool> {
        if !self.locks.is_empty() {
            return Ok(false);
        }
        self.locks = self
            .targets
            .iter()
            .map(|t| store.lock(&t.destination))
            .collect::<Result<_>>()?;
        Ok(true)
    }

    /// Opens the part file of an object that has none yet (a published object keeps its state).
    pub(super) fn open_part(&mut self, store: &Arc<Store>) -> Result<()> {
        if let ObjectState::Missing = self.state {
            let part = PartFile::open(store, self.targets[0].clone())?;
            self.state = ObjectState::Assembling(Box::new(part));
        }
        Ok(())
    }
}

/// The destinations of `object` on this node: those of its `files` (from [`Plan::index`], so that
/// making the targets of every object reads each file once) whose node selector this node matches.
pub(super) fn targets_of(
    plan: &Plan,
    object: &PlanObject,
    files: &[&PlanFile],
    config: &EngineConfig,
) -> Result<Vec<FileTarget>> {
    let store_url = plan
        .stores
        .get(&object.store)
        .map(|s| s.url.clone())
        .unwrap_or_default();
    let identity = FileIdentity {
        store_url,
        key: object.key.clone(),
        etag: object.etag.clone(),
        version: object.version.clone(),
        size: object.size,
    };
    let spans: Vec<ChunkSpan> = object
        .chunks
        .iter()
        .map(|c| ChunkSpan {
            id: c.id.clone(),
            offset: c.offset,
            length: c.length,
        })
        .collect();
    let mut targets = files
        .iter()
        .filter(|f| f.applies_to(&config.node_labels))
        .map(|file| {
            let mut destination = localize(&config.node_root, &file.destination)?;
            destination.shrink_to_fit();
            Ok(FileTarget {
                destination,
                identity: identity.clone(),
                chunks: spans.clone(),
                sha256: file.sha256.clone(),
                overwrite: plan.settings.overwrite,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Kept for the whole run: a filtered `collect` starts with room for 4 targets, and most objects
    // have one (with 100,000 objects, 55 MB of nothing).
    targets.shrink_to_fit();
    Ok(targets)
}

/// What the origin must still be serving for `object`'s bytes to be the plan's.
pub(super) fn identity_of(object: &PlanObject) -> ObjectIdentity {
    ObjectIdentity {
        key: object.key.clone(),
        size: object.size,
        etag: object.etag.clone(),
        version: object.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::ChunkDigest;

    fn target(dir: &std::path::Path) -> FileTarget {
        let span = |id: &str, offset| ChunkSpan {
            id: id.into(),
            offset,
            length: 4,
        };
        FileTarget {
            destination: dir.join("f.bin"),
            identity: FileIdentity {
                store_url: "file:///".into(),
                key: "f.bin".into(),
                etag: None,
                version: None,
                size: 8,
            },
            chunks: vec![span("c0", 0), span("c1", 4)],
            sha256: None,
            overwrite: false,
        }
    }

    /// The part file is handed over for publishing only once every chunk is in; until then, and for a
    /// published object, the state stays as it was.
    #[test]
    fn a_part_file_is_taken_for_publishing_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut part = PartFile::open(&store, target(dir.path())).unwrap();
        part.record("c0", ChunkDigest::of_bytes(b"abcd")).unwrap();
        let mut state = ObjectState::Assembling(Box::new(part));
        assert!(state.holds("c0") && !state.holds("c1"));
        assert_eq!(state.digest_of("c0"), ChunkDigest::of_bytes(b"abcd").to_hex());
        assert!(state.take_complete().is_none());
        let ObjectState::Assembling(part) = &mut state else {
            panic!("an incomplete part file must stay in place");
        };
        part.record("c1", ChunkDigest::of_bytes(b"efgh")).unwrap();
        assert!(state.take_complete().is_some());
        assert!(matches!(state, ObjectState::Missing));

        let record = FileRecord {
            identity: target(dir.path()).identity,
            chunks: [("c0".to_owned(), "d0".to_owned())].into(),
            stamp: None,
            layout: None,
        };
        let mut published = ObjectState::Published(Box::new(record));
        assert!(published.take_complete().is_none());
        published.close_part();
        assert!(published.is_published() && published.holds("c1"));
        assert_eq!(published.digest_of("c0"), "d0");
    }
}
