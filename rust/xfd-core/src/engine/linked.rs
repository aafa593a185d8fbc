//! The engine on a control link: work from the coordinator starts transfers at once, or follow-ups
//! the moment the transfer they follow ends, and their outcomes go back as the link's reports (see
//! [`crate::control`]).

use std::collections::{HashMap, HashSet};
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
/// Also the link's follow-ups waiting for the transfer ahead of them.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<Tasks>>);

/// A peer transfer of a link: unit, peer, expected digest.
type PeerTransfer = (String, SocketAddr, Option<ChunkDigest>);

#[derive(Default)]
struct Tasks {
    tasks: Vec<JoinHandle<()>>,
    /// The link's peer transfers, by (unit, peer), running or waiting for the one ahead of them.
    live: HashSet<(String, SocketAddr)>,
    /// Follow-ups waiting, by the transfer ahead of them.
    waiting: HashMap<(String, SocketAddr), Vec<PeerTransfer>>,
    /// The run is over: no follow-up starts any more.
    over: bool,
}

impl Running {
    /// Keeps `tasks`, and forgets those that already ended.
    pub fn track(&self, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
        let mut running = self.0.lock().unwrap();
        running.tasks.retain(|task| !task.is_finished());
        running.tasks.extend(tasks);
    }

    /// Every task kept so far (the caller ends them); the follow-ups still waiting never start.
    pub fn take(&self) -> Vec<JoinHandle<()>> {
        let mut running = self.0.lock().unwrap();
        running.over = true;
        running.waiting.clear();
        std::mem::take(&mut running.tasks)
    }
}

/// An engine as a link's [`Worker`].
pub struct LinkedEngine {
    pub engine: Arc<Engine>,
    pub running: Running,
}

impl Worker for LinkedEngine {
    fn start(&self, work: Work) {
        self.running.track(self.engine.start_origin(work.origin));
        for peer_work in work.peers {
            let peer = peer_work.peer.parse::<SocketAddr>();
            let digest = peer_work.digest.as_deref().map(ChunkDigest::from_hex);
            let transfer = match (peer, digest) {
                (Ok(peer), None) => (peer_work.unit, peer, None),
                (Ok(peer), Some(Some(digest))) => (peer_work.unit, peer, Some(digest)),
                // A digest that does not parse is not "no digest": the bytes could not be checked
                // against the origin's.
                _ => {
                    self.engine.report_bad_work(&peer_work);
                    continue;
                }
            };
            let ahead = peer_work.after.map(|unit| (unit, transfer.1));
            if self.running.wait_behind(ahead, &transfer) {
                continue;
            }
            spawn_linked(&self.engine, &self.running, transfer);
        }
    }
}

impl Running {
    /// Queues `transfer` behind the link's transfer `ahead` if that one is still running or waiting;
    /// whether it did (otherwise it is to start now). Either way it is live until it ends.
    fn wait_behind(&self, ahead: Option<(String, SocketAddr)>, transfer: &PeerTransfer) -> bool {
        let mut running = self.0.lock().unwrap();
        if running.over {
            return true; // the run is over: nothing starts
        }
        running.live.insert((transfer.0.clone(), transfer.1));
        match ahead.filter(|ahead| running.live.contains(ahead)) {
            Some(ahead) => {
                running.waiting.entry(ahead).or_default().push(transfer.clone());
                true
            }
            None => false,
        }
    }

    /// The link's transfer of `unit` from `peer` ended: the follow-ups waiting for it start now, kept
    /// under the same lock as [`Running::take`], so none starts unseen by the run's end.
    fn ended(&self, unit: String, peer: SocketAddr, start: impl Fn(PeerTransfer) -> JoinHandle<()>) {
        let mut running = self.0.lock().unwrap();
        let key = (unit, peer);
        running.live.remove(&key);
        for next in running.waiting.remove(&key).unwrap_or_default() {
            running.tasks.push(start(next));
        }
    }
}

/// Starts a link's peer transfer.
fn spawn_linked(engine: &Arc<Engine>, running: &Running, transfer: PeerTransfer) {
    running.track([linked_task(engine, running, transfer)]);
}

/// A task that runs a link's peer transfer and, once it reported its outcome, starts the follow-ups
/// that waited for it, on the slots it leaves.
fn linked_task(engine: &Arc<Engine>, running: &Running, transfer: PeerTransfer) -> JoinHandle<()> {
    let (engine, running) = (engine.clone(), running.clone());
    tokio::spawn(async move {
        let (unit, peer, expected) = transfer;
        let _ = engine.fetch_from_peer(&unit, peer, expected).await;
        running.ended(unit, peer, |next| linked_task(&engine, &running, next));
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(unit: &str) -> PeerTransfer {
        (unit.into(), "127.0.0.9:9".parse().unwrap(), None)
    }

    fn key(unit: &str) -> Option<(String, SocketAddr)> {
        Some((unit.into(), "127.0.0.9:9".parse().unwrap()))
    }

    /// Records the units started, in a task of the current runtime.
    fn recorder(started: &Arc<Mutex<Vec<String>>>) -> impl Fn(PeerTransfer) -> JoinHandle<()> {
        let started = started.clone();
        move |next: PeerTransfer| {
            started.lock().unwrap().push(next.0);
            tokio::spawn(async {})
        }
    }

    #[tokio::test]
    async fn a_follow_up_waits_for_the_transfer_ahead_and_a_chain_runs_in_order() {
        let running = Running::default();
        let started = Arc::new(Mutex::new(Vec::new()));
        assert!(!running.wait_behind(None, &transfer("a")), "no transfer ahead: at once");
        assert!(running.wait_behind(key("a"), &transfer("b")), "a runs: b waits");
        assert!(
            running.wait_behind(key("b"), &transfer("c")),
            "b waits: c waits behind it"
        );
        assert!(
            !running.wait_behind(key("gone"), &transfer("d")),
            "what it follows ended: at once"
        );

        running.ended("a".into(), "127.0.0.9:9".parse().unwrap(), recorder(&started));
        assert_eq!(*started.lock().unwrap(), vec!["b".to_string()]);
        running.ended("b".into(), "127.0.0.9:9".parse().unwrap(), recorder(&started));
        assert_eq!(*started.lock().unwrap(), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(running.take().len(), 2, "started follow-ups are kept for the run's end");
    }

    #[tokio::test]
    async fn the_runs_end_drops_waiting_follow_ups_and_starts_none() {
        let running = Running::default();
        let started = Arc::new(Mutex::new(Vec::new()));
        assert!(!running.wait_behind(None, &transfer("a")));
        assert!(running.wait_behind(key("a"), &transfer("b")));
        running.take();
        running.ended("a".into(), "127.0.0.9:9".parse().unwrap(), recorder(&started));
        assert!(started.lock().unwrap().is_empty());
        assert!(running.wait_behind(None, &transfer("c")), "over: nothing starts");
    }
}
