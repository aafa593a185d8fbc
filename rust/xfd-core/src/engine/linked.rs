//! The engine on a control link: work from the coordinator starts transfers at once, and their
//! outcomes go back as the link's reports (see [`crate::control`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Engine, Event, Source};
use crate::control::link::{Work, Worker};
use crate::control::wire::{PeerWork, Report};
use crate::hash::ChunkDigest;

/// Transfers started in the background (by a link, or by a caller's `submit`), kept so that the run's
/// end can cancel them: an engine whose run is over must not go on writing beside the next run's files.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Running {
    /// Keeps `tasks`, and forgets those that already ended.
    pub fn track(&self, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
        let mut running = self.0.lock().unwrap();
        running.retain(|task| !task.is_finished());
        running.extend(tasks);
    }

    /// Every task kept so far (the caller ends them).
    pub fn take(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// An engine as a link's [`Worker`].
pub struct LinkedEngine {
    pub engine: Arc<Engine>,
    pub running: Running,
}

impl Worker for LinkedEngine {
    fn start(&self, work: Work) {
        let mut peers = Vec::with_capacity(work.peers.len());
        for peer_work in work.peers {
            let peer = peer_work.peer.parse::<SocketAddr>();
            let digest = peer_work.digest.as_deref().map(ChunkDigest::from_hex);
            match (peer, digest) {
                (Ok(peer), None) => peers.push((peer_work.unit, peer, None)),
                (Ok(peer), Some(Some(digest))) => peers.push((peer_work.unit, peer, Some(digest))),
                // A digest that does not parse is not "no digest": the bytes could not be checked
                // against the origin's.
                _ => self.engine.report_bad_work(&peer_work),
            }
        }
        self.running.track(self.engine.start_origin(work.origin));
        self.running.track(self.engine.start_peer(peers));
    }
}

impl Engine {
    /// Starts fetching `units` from the origin, each in a task of the current runtime; the outcome,
    /// success or failure, is reported by the engine itself.
    pub fn start_origin(self: &Arc<Self>, units: Vec<String>) -> Vec<JoinHandle<()>> {
        let start = |unit: String| {
            let engine = self.clone();
            tokio::spawn(async move {
                let _ = engine.fetch_from_origin(&unit).await;
            })
        };
        units.into_iter().map(start).collect()
    }

    /// Starts fetching `(unit, peer, expected digest)` from peers, as [`Engine::start_origin`] does.
    pub fn start_peer(
        self: &Arc<Self>,
        transfers: Vec<(String, SocketAddr, Option<ChunkDigest>)>,
    ) -> Vec<JoinHandle<()>> {
        let start = |(unit, peer, expected): (String, SocketAddr, Option<ChunkDigest>)| {
            let engine = self.clone();
            tokio::spawn(async move {
                let _ = engine.fetch_from_peer(&unit, peer, expected).await;
            })
        };
        transfers.into_iter().map(start).collect()
    }

    /// From now on, the outcome of every transfer also goes to the returned channel, as a control link
    /// report (followed by the origin's byte count after an origin transfer).
    pub fn tap_reports(&self) -> mpsc::UnboundedReceiver<Report> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.tap.lock().unwrap() = Some(sender);
        receiver
    }

    /// Sends `event` to the tap, if any, as a report; whether there is a tap (events then go nowhere
    /// else).
    pub(super) fn tap(&self, event: &Event) -> bool {
        let tap = self.tap.lock().unwrap();
        let Some(tap) = tap.as_ref() else {
            return false;
        };
        let (report, source) = match event {
            Event::ChunkDone {
                chunk_id,
                source,
                peer,
                seconds,
                digest,
                ..
            } if *source != Source::Cache => (
                Report::Done {
                    unit: chunk_id.clone(),
                    peer: peer.clone(),
                    seconds: *seconds,
                    digest: digest.clone(),
                },
                source,
            ),
            Event::ChunkFailed {
                chunk_id,
                source,
                peer,
                error,
                error_kind,
                ..
            } => (
                Report::Failed {
                    unit: chunk_id.clone(),
                    peer: peer.clone(),
                    error: error.clone(),
                    kind: error_kind.clone(),
                },
                source,
            ),
            _ => return true,
        };
        let _ = tap.send(report);
        if *source == Source::Origin {
            let (requests, failed) = self.origin_requests();
            let _ = tap.send(Report::OriginBytes {
                bytes: self.origin_bytes(),
                requests,
                failed,
            });
        }
        true
    }

    /// Work whose peer address or digest does not parse: the coordinator's mistake, reported as a failure
    /// of the transfer so that it is not waited for.
    fn report_bad_work(&self, work: &PeerWork) {
        self.emit(Event::ChunkFailed {
            chunk_id: work.unit.clone(),
            object_id: String::new(),
            source: Source::Peer,
            peer: Some(work.peer.clone()),
            error: format!(
                "the coordinator named peer {:?} with digest {:?}: an ip:port address and 64 hex characters were expected",
                work.peer, work.digest
            ),
            error_kind: "fatal".into(),
        });
    }
}
