//! Recording a chunk whose bytes are in the part file, and publishing the file once every chunk is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::object::{ObjectState, ObjectWork};
use super::serving::ChunkFile;
use super::{ChunkDone, Engine, Event, Source};
use crate::assembly::{self, PartFile};
use crate::error::{Error, Result};
use crate::faults::{Faults, Point};
use crate::hash::ChunkDigest;
use crate::plan::PlanChunk;

/// A file just published: its first destination, and the digests of its chunks.
pub(super) type Published = (PathBuf, BTreeMap<String, ChunkDigest>);

impl Engine {
    /// Records a chunk whose bytes were written into the part file by someone else (the peer client).
    pub(super) async fn complete(
        &self,
        work: Arc<Mutex<ObjectWork>>,
        chunk: PlanChunk,
        digest: ChunkDigest,
        source: Source,
        peer: Option<String>,
        elapsed: Duration,
    ) -> Result<ChunkDone> {
        let object_id = work.lock().unwrap().object().id.clone();
        let chunk_id = chunk.id.clone();
        let faults = self.config.faults.clone();
        let (file, published) = tokio::task::spawn_blocking(move || {
            record_and_maybe_publish(&mut work.lock().unwrap(), &chunk_id, digest, &faults)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.config.faults.crash_point(Point::ChunkRecorded);
        Ok(self.announce(&object_id, chunk, digest, source, peer, elapsed, &file, published))
    }

    /// Makes a recorded chunk servable and reports it (and the file, if this chunk completed it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announce(
        &self,
        object_id: &str,
        chunk: PlanChunk,
        digest: ChunkDigest,
        source: Source,
        peer: Option<String>,
        elapsed: Duration,
        file: &ChunkFile,
        published: Option<Published>,
    ) -> ChunkDone {
        self.register(&chunk.id, file, digest);
        self.emit(Event::ChunkDone {
            chunk_id: chunk.id.clone(),
            object_id: object_id.to_owned(),
            bytes: chunk.length,
            source,
            peer,
            seconds: elapsed.as_secs_f64(),
            digest: digest.to_hex(),
        });
        if let Some((destination, digests)) = published {
            let placed = ChunkFile::Placed(destination.clone());
            for (id, digest) in digests {
                self.register(&id, &placed, digest);
            }
            let bytes = self.objects[object_id].lock().unwrap().object().size;
            self.emit(Event::FilePublished {
                object_id: object_id.to_owned(),
                destination: destination.display().to_string(),
                bytes,
            });
        }
        ChunkDone {
            chunk_id: chunk.id,
            bytes: chunk.length,
            digest: digest.to_hex(),
            seconds: elapsed.as_secs_f64(),
            already_held: false,
        }
    }
}

/// Records `chunk_id` in the object's part file and publishes the file if that was its last missing
/// chunk. Returns the file the chunk can be served from, and what was published.
pub(super) fn record_and_maybe_publish(
    work: &mut ObjectWork,
    chunk_id: &str,
    digest: ChunkDigest,
    faults: &Faults,
) -> Result<(ChunkFile, Option<Published>)> {
    let in_part = ChunkFile::Part(work.targets[0].destination.clone());
    match &mut work.state {
        ObjectState::Published(record) => {
            // Published meanwhile (a duplicate transfer won the race): nothing left to record.
            debug_assert!(record.chunks.contains_key(chunk_id));
            return Ok((ChunkFile::Placed(work.targets[0].destination.clone()), None));
        }
        ObjectState::Missing => {
            return Err(Error::InvalidPlan(
                "chunk recorded before its part file was opened".into(),
            ));
        }
        ObjectState::Assembling(part) if part.done().contains_key(chunk_id) => return Ok((in_part, None)),
        ObjectState::Assembling(part) => part.record(chunk_id, digest)?,
    }
    match work.state.take_complete() {
        Some(part) => {
            let published = publish(work, part, faults)?;
            Ok((ChunkFile::Placed(published.0.clone()), Some(published)))
        }
        None => Ok((in_part, None)),
    }
}

/// Publishes a complete part file at the object's first destination, then copies it to the others.
/// Until the record is in, the object is missing: a publish that fails leaves no part file open.
pub(super) fn publish(work: &mut ObjectWork, part: Box<PartFile>, faults: &Faults) -> Result<Published> {
    work.state = ObjectState::Missing;
    let digests = part.done().clone();
    let store = part.store().clone();
    let record = part.publish_with(faults)?;
    let primary = work.targets[0].destination.clone();
    for target in &work.targets[1..] {
        assembly::publish_copy(&store, &primary, &record, target)?;
    }
    work.state = ObjectState::Published(Box::new(record));
    Ok((primary, digests))
}
