//! What the engine reports: events for progress and reports, kept in a queue the runtime drains.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::Engine;

/// Where a chunk came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Origin,
    Peer,
    Cache,
}

/// Something that happened, for progress and reports. Plain data: the runtime forwards it as is.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A transfer into this node began (the chunk was missing and its region is now being written).
    ChunkStarted {
        chunk_id: String,
        object_id: String,
        source: Source,
        peer: Option<String>,
    },
    ChunkDone {
        chunk_id: String,
        object_id: String,
        bytes: u64,
        source: Source,
        peer: Option<String>,
        seconds: f64,
        digest: String,
    },
    ChunkFailed {
        chunk_id: String,
        object_id: String,
        source: Source,
        peer: Option<String>,
        error: String,
        /// See [`crate::Error::kind`]: `fatal`, `integrity`, `peer`, `origin`, `busy` or `stalled`.
        error_kind: String,
    },
    FilePublished {
        object_id: String,
        destination: String,
        bytes: u64,
    },
    Unpacked {
        object_id: String,
        destination: String,
        files: u64,
        bytes: u64,
        skipped: bool,
    },
}

/// Events not taken yet, oldest first; a waiting reader is woken by each new one.
#[derive(Default)]
pub(super) struct EventQueue {
    events: Mutex<Vec<Event>>,
    ready: Condvar,
}

impl EventQueue {
    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.ready.notify_all();
    }

    fn drain(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn wait(&self, timeout: Duration) -> Vec<Event> {
        let guard = self.events.lock().unwrap();
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |events| events.is_empty())
            .unwrap();
        std::mem::take(&mut *guard)
    }
}

impl Engine {
    /// Takes every event so far (oldest first).
    pub fn drain_events(&self) -> Vec<Event> {
        self.events.drain()
    }

    /// Waits up to `timeout` for at least one event, then takes them all.
    pub fn wait_events(&self, timeout: Duration) -> Vec<Event> {
        self.events.wait(timeout)
    }

    pub(super) fn emit(&self, event: Event) {
        if self.tap(&event) {
            // On a control link the outcomes go to the coordinator and nobody reads the queue: kept, a
            // run of 100,000 files would hold every event until the engine is dropped.
            return;
        }
        self.events.push(event);
    }
}
