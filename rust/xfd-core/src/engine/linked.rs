//! The engine on a control link: work from the coordinator starts transfers at once, and their
//! outcomes go back as the link's reports (see [`crate::control`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Engine, Event, Source};
use crate::control::link::{Work, Worker};
use crate::control::wire::Report;
use crate::hash::ChunkDigest;

/// Transfers started by a link; kept so the run's end can cancel them.
pub type Running = Arc<Mutex<Vec<JoinHandle<()>>>>;

/// An engine as a link's [`Worker`].
pub struct LinkedEngine {
    pub engine: Arc<Engine>,
    pub running: Running,
}

impl Worker for LinkedEngine {
    fn start(&self, work: Work) {
        let mut tasks = Vec::with_capacity(work.origin.len() + work.peers.len());
        for unit in work.origin {
            let engine = self.engine.clone();
            // The outcome, success or failure, is reported by the engine itself.
            tasks.push(tokio::spawn(async move {
                let _ = engine.fetch_from_origin(&unit).await;
            }));
        }
        for peer_work in work.peers {
            let engine = self.engine.clone();
            tasks.push(tokio::spawn(async move {
                let unit = peer_work.unit;
                let Ok(peer) = peer_work.peer.parse::<SocketAddr>() else {
                    engine.report_bad_work(&unit, &peer_work.peer);
                    return;
                };
                let expected = peer_work.digest.as_deref().and_then(ChunkDigest::from_hex);
                let _ = engine.fetch_from_peer(&unit, peer, expected).await;
            }));
        }
        let mut running = self.running.lock().unwrap();
        running.retain(|task| !task.is_finished());
        running.extend(tasks);
    }
}

impl Engine {
    /// From now on, the outcome of every transfer also goes to the returned channel, as a control link
    /// report (followed by the origin's byte count after an origin transfer).
    pub fn tap_reports(&self) -> mpsc::UnboundedReceiver<Report> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.tap.lock().unwrap() = Some(sender);
        receiver
    }

    /// Sends `event` to the tap, if any, as a report.
    pub(super) fn tap(&self, event: &Event) {
        let tap = self.tap.lock().unwrap();
        let Some(tap) = tap.as_ref() else { return };
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
            _ => return,
        };
        let _ = tap.send(report);
        if *source == Source::Origin {
            let _ = tap.send(Report::OriginBytes {
                bytes: self.origin_bytes(),
            });
        }
    }

    /// A peer address that does not parse: the coordinator's mistake, reported as a failure of the
    /// transfer so that it is not waited for.
    fn report_bad_work(&self, unit: &str, peer: &str) {
        self.emit(Event::ChunkFailed {
            chunk_id: unit.to_owned(),
            object_id: String::new(),
            source: Source::Peer,
            peer: Some(peer.to_owned()),
            error: format!("the coordinator named peer {peer:?}, which is not an ip:port address"),
            error_kind: "fatal".into(),
        });
    }
}
