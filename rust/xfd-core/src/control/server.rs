//! The coordinator as a service: a control server that nodes link to, and the [`Core`] on a thread of
//! its own.
//!
//! Threads and who does what:
//! - the tokio runtime accepts links (an authenticated HTTP/1.1 upgrade), reads each link's frames and
//!   stamps them with the time they were *received*, and writes each link's work frames;
//! - one OS thread, `xfd-coordinator`, owns the [`Core`]: it takes every command that queued up, applies
//!   them, asks the scheduler once for the transfers to start, sends them out as one work frame per node,
//!   checks for silent nodes and publishes a progress snapshot at a fixed rate. Nothing it does waits
//!   for Python: a busy driver slows only its own reading of the snapshots;
//! - the caller (Python) joins nodes as their agents come up, reads snapshots, waits for the outcome and
//!   ends the run.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::core::{Core, RunPlan};
use super::progress::{NodeState, Snapshot};
use super::wire::{self, Down, Report, Up};
use crate::error::{Error, Result};

/// The coordinator thread wakes at least this often (silence checks, snapshots).
const TICK: Duration = Duration::from_millis(20);
/// Silence is looked for this often, not at every step: a step can come every few microseconds under
/// load, and a look goes over every node.
const SILENCE_CHECK: Duration = Duration::from_millis(100);
/// How long a link's writer may take to send what is queued (the run's end) once its reader stopped.
const LAST_WRITES: Duration = Duration::from_secs(2);
/// Commands applied per step at most before deciding: under a flood of reports, decisions still go out.
const COMMANDS_PER_STEP: usize = 50_000;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub plan: RunPlan,
    /// The run's token: a link must show it.
    pub token: String,
    /// Where the control server listens (the driver's address; port 0 lets the OS choose).
    pub bind: SocketAddr,
    /// A node silent this long (no frame received, heartbeats included) is lost.
    pub lost_after: Duration,
    /// How often a progress snapshot is published.
    pub snapshot_every: Duration,
    /// Whether snapshots carry every node's unit states (the notebook's chunk map needs them).
    pub with_chunks: bool,
    /// The nodes the run waits for: it is not over before each of them joined or was given up on
    /// ([`Coordinator::add_failed`]), whatever the nodes that already joined hold.
    pub expected: Vec<String>,
    /// Transfers from the origin wait until every expected node has joined, or this long after the
    /// first one did: a node still starting may hold in its cache what an early node would otherwise
    /// fetch from the origin. Peer transfers start at once.
    pub origin_hold: Duration,
}

/// How the run ended, once it has.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Every surviving node holds what it needs (some units may have failed for good: see failures).
    Finished,
    /// Nothing can make progress.
    Stalled(String),
}

/// What the caller reads: the latest snapshot and, once decided, the outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub outcome: Option<Outcome>,
    pub snapshot: Arc<Snapshot>,
    /// Node names by index (snapshots name nodes by index).
    pub nodes: Vec<String>,
    /// Seconds from the run's start until each node held everything, by index (`None`: not yet).
    pub finished_at: Vec<Option<f64>>,
    pub deliveries: u64,
    pub origin_refetches: u64,
    pub failures: Vec<String>,
    /// Origin bytes each node's engine counted, by node name.
    pub origin_bytes: HashMap<String, u64>,
    /// Frames received from nodes, and work frames sent to them.
    pub frames_in: u64,
    pub frames_out: u64,
}

enum Command {
    Join {
        name: String,
        address: String,
        needs: Vec<String>,
        held: Vec<(String, String)>,
        reply: Sender<std::result::Result<(), String>>,
    },
    AddFailed {
        name: String,
        ip: String,
        reason: String,
        lost: bool,
    },
    Lose {
        name: String,
        reason: String,
    },
    SetState {
        name: String,
        state: NodeState,
        reason: String,
    },
    Linked {
        name: String,
        down: mpsc::UnboundedSender<Down>,
        at: Instant,
    },
    Frame {
        name: String,
        reports: Vec<Report>,
        at: Instant,
    },
    Unlinked {
        name: String,
        why: String,
    },
    End,
}

struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

/// A running coordinator. Dropping it ends the run.
pub struct Coordinator {
    address: SocketAddr,
    commands: Sender<Command>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    /// Binds the control server on the current tokio runtime and starts the coordinator thread.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator> {
        if config.token.is_empty() || !config.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Control(
                "the run token must be printable ASCII without spaces".into(),
            ));
        }
        let cannot_listen = |e| Error::Control(format!("cannot listen on {}: {e}", config.bind));
        let listener = TcpListener::bind(config.bind).await.map_err(cannot_listen)?;
        let address = listener.local_addr().map_err(cannot_listen)?;
        let (commands, inbox) = std::sync::mpsc::channel();
        let core = Core::new(config.plan.clone());
        let shared = Arc::new(Shared {
            status: Mutex::new(status_of(
                &core,
                None,
                Arc::new(core.progress().snapshot(0.0, false)),
                0,
                0,
            )),
            changed: Condvar::new(),
        });
        let token = Arc::new(blake3::hash(config.token.as_bytes()));
        let accept = tokio::spawn(accept_links(listener, token, commands.clone()));
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xfd-coordinator".into())
            .spawn(move || Steward::new(core, config, thread_shared).run(inbox))
            .map_err(|e| Error::Control(format!("cannot start the coordinator thread: {e}")))?;
        Ok(Coordinator {
            address,
            commands,
            shared,
            thread: Mutex::new(Some(thread)),
            accept,
        })
    }

    /// The control server's address, for the nodes.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A node's agent is up (see [`Core::join`]); waits until the coordinator took it in.
    pub fn join(&self, name: &str, address: &str, needs: Vec<String>, held: Vec<(String, String)>) -> Result<()> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.send(Command::Join {
            name: name.to_owned(),
            address: address.to_owned(),
            needs,
            held,
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| Error::Control("the coordinator has stopped".into()))?
            .map_err(Error::Control)
    }

    /// A node that takes no part in the run: lost (its agent died) or failed (its engine refused).
    pub fn add_failed(&self, name: &str, ip: &str, reason: &str, lost: bool) -> Result<()> {
        self.send(Command::AddFailed {
            name: name.to_owned(),
            ip: ip.to_owned(),
            reason: reason.to_owned(),
            lost,
        })
    }

    /// A node is gone (its agent's actor died).
    pub fn lose(&self, name: &str, reason: &str) -> Result<()> {
        self.send(Command::Lose {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Sets a node's state after the transfers (`done` once unpacked, `failed` with the reason).
    pub fn set_state(&self, name: &str, state: NodeState, reason: &str) -> Result<()> {
        self.send(Command::SetState {
            name: name.to_owned(),
            state,
            reason: reason.to_owned(),
        })
    }

    /// Waits up to `timeout` for the outcome; the status as it is then.
    pub fn wait(&self, timeout: Duration) -> Status {
        let status = self.shared.status.lock().unwrap();
        let (status, _) = self
            .shared
            .changed
            .wait_timeout_while(status, timeout, |s| s.outcome.is_none())
            .unwrap();
        status.clone()
    }

    /// The latest status (its snapshot is at most `snapshot_every` old).
    pub fn status(&self) -> Status {
        self.shared.status.lock().unwrap().clone()
    }

    /// Ends the run: every link is told, the thread stops after a last snapshot. Returns the final status.
    pub fn end(&self) -> Status {
        let _ = self.commands.send(Command::End);
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
        self.accept.abort();
        self.status()
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| Error::Control("the coordinator has stopped".into()))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.end();
    }
}

fn status_of(
    core: &Core,
    outcome: Option<Outcome>,
    snapshot: Arc<Snapshot>,
    frames_in: u64,
    frames_out: u64,
) -> Status {
    Status {
        outcome,
        snapshot,
        nodes: core.node_names().map(str::to_owned).collect(),
        finished_at: (0..core.node_names().count() as u32)
            .map(|node| core.progress().finished_at(node))
            .collect(),
        deliveries: core.deliveries(),
        origin_refetches: core.origin_refetches(),
        failures: core.failures().to_vec(),
        origin_bytes: core.origin_bytes().map(|(n, b)| (n.to_owned(), b)).collect(),
        frames_in,
        frames_out,
    }
}

/// The coordinator thread's state: the core, the links, and when each node was last heard from.
struct Steward {
    core: Core,
    config: CoordinatorConfig,
    shared: Arc<Shared>,
    started: Instant,
    /// Each linked node's queue of frames to send, by name.
    links: HashMap<String, mpsc::UnboundedSender<Down>>,
    /// When each joined, surviving node was last heard from (a frame received, or its join).
    heard: HashMap<u32, Instant>,
    /// Work for nodes joined before their link came up, sent when it does.
    waiting: HashMap<String, Vec<Down>>,
    outcome: Option<Outcome>,
    /// When the first node joined.
    first_join: Option<Instant>,
    /// Whether every expected node has joined or been given up on (it stays so once it is).
    everyone: bool,
    /// When silence was last looked for.
    last_check: Instant,
    last_snapshot: Instant,
    frames_in: u64,
    frames_out: u64,
}

impl Steward {
    fn new(core: Core, config: CoordinatorConfig, shared: Arc<Shared>) -> Steward {
        let now = Instant::now();
        Steward {
            core,
            config,
            shared,
            started: now,
            links: HashMap::new(),
            heard: HashMap::new(),
            waiting: HashMap::new(),
            outcome: None,
            first_join: None,
            everyone: false,
            last_check: now,
            last_snapshot: now,
            frames_in: 0,
            frames_out: 0,
        }
    }

    fn run(mut self, inbox: Receiver<Command>) {
        loop {
            let first = match inbox.recv_timeout(TICK) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut ended = false;
            for command in first.into_iter().chain(inbox.try_iter().take(COMMANDS_PER_STEP)) {
                ended |= self.apply(command);
            }
            if ended {
                break;
            }
            self.step();
        }
        for down in self.links.values() {
            let _ = down.send(Down::End);
        }
        self.publish(true);
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Applies one command; `true` for [`Command::End`].
    fn apply(&mut self, command: Command) -> bool {
        let now = self.now();
        match command {
            Command::Join {
                name,
                address,
                needs,
                held,
                reply,
            } => {
                let joined = self.core.join(&name, &address, &needs, &held, now);
                if let Ok(node) = joined {
                    self.heard.insert(node, Instant::now());
                    self.first_join.get_or_insert_with(Instant::now);
                }
                let _ = reply.send(joined.map(|_| ()));
            }
            Command::AddFailed { name, ip, reason, lost } => self.core.add_failed(&name, &ip, &reason, lost, now),
            Command::Lose { name, reason } => self.lose(&name, &reason),
            Command::SetState { name, state, reason } => {
                if let Some(node) = self.core.node(&name) {
                    self.core.set_state(node, state, &reason, now);
                }
            }
            Command::Linked { name, down, at } => {
                for frame in self.waiting.remove(&name).unwrap_or_default() {
                    self.frames_out += 1;
                    let _ = down.send(frame);
                }
                if let Some(node) = self.core.node(&name) {
                    self.heard.insert(node, at);
                }
                self.links.insert(name, down);
            }
            Command::Frame { name, reports, at } => {
                self.frames_in += 1;
                if let Some(node) = self.core.node(&name).filter(|&n| self.core.is_alive(n)) {
                    self.heard.insert(node, at);
                    self.core.report(node, reports, now);
                }
            }
            Command::Unlinked { name, why } => {
                self.links.remove(&name);
                if self.outcome.is_none() {
                    self.lose(&name, &format!("its control link closed: {why}"));
                }
            }
            Command::End => return true,
        }
        false
    }

    fn lose(&mut self, name: &str, reason: &str) {
        if let Some(node) = self.core.node(name) {
            self.lose_node(node, reason);
        }
    }

    fn lose_node(&mut self, node: u32, reason: &str) {
        self.core.lose(node, reason, self.now());
        self.heard.remove(&node);
    }

    /// One step: decide, send, check for silence, see whether the run is over, publish.
    fn step(&mut self) {
        let now = self.now();
        let everyone = self.everyone();
        let waited = self
            .first_join
            .is_some_and(|first| first.elapsed() >= self.config.origin_hold);
        self.core.hold_origin(!everyone && !waited);
        for (node, work) in self.core.decide(now) {
            let name = self.core.name(node).to_owned();
            let frame = Down::Work {
                origin: work.origin,
                peers: work.peers,
            };
            match self.links.get(&name) {
                Some(down) => {
                    self.frames_out += 1;
                    let _ = down.send(frame);
                }
                None => self.waiting.entry(name).or_default().push(frame),
            }
        }
        self.lose_silent();
        if self.outcome.is_none() && everyone {
            self.outcome = if self.core.finished() {
                Some(Outcome::Finished)
            } else {
                self.core.stalled().map(Outcome::Stalled)
            };
            if self.outcome.is_some() {
                self.publish(true);
                return;
            }
        }
        self.publish(false);
    }

    fn everyone(&mut self) -> bool {
        if !self.everyone {
            self.everyone = self.config.expected.iter().all(|name| self.core.node(name).is_some());
        }
        self.everyone
    }

    /// Loses nodes not heard from for `lost_after`. Silence is measured where frames are received; if
    /// this thread itself was held up (a stopped process, a starved machine), nothing was heard during
    /// the gap for lack of listening, so every clock restarts instead of every node being lost.
    fn lose_silent(&mut self) {
        let now = Instant::now();
        let gap = now - self.last_check;
        if gap < SILENCE_CHECK {
            return;
        }
        self.last_check = now;
        if gap > self.config.lost_after / 2 {
            self.heard.values_mut().for_each(|heard| *heard = now);
            return;
        }
        let silent: Vec<u32> = self
            .heard
            .iter()
            .filter(|(_, heard)| now.saturating_duration_since(**heard) > self.config.lost_after)
            .map(|(node, _)| *node)
            .collect();
        let reason = format!(
            "no frame from its agent for {:.0} s",
            self.config.lost_after.as_secs_f64()
        );
        for node in silent {
            self.lose_node(node, &reason);
        }
    }

    fn publish(&mut self, force: bool) {
        if !force && self.last_snapshot.elapsed() < self.config.snapshot_every {
            return;
        }
        self.last_snapshot = Instant::now();
        let snapshot = Arc::new(self.core.progress().snapshot(self.now(), self.config.with_chunks));
        let status = status_of(
            &self.core,
            self.outcome.clone(),
            snapshot,
            self.frames_in,
            self.frames_out,
        );
        *self.shared.status.lock().unwrap() = status;
        self.shared.changed.notify_all();
    }
}

async fn accept_links(listener: TcpListener, token: Arc<blake3::Hash>, commands: Sender<Command>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true).ok();
        let (token, commands) = (token.clone(), commands.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (token, commands) = (token.clone(), commands.clone());
                async move { Ok::<_, Infallible>(handshake(request, &token, commands)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers a link's handshake: 101 and the link starts, or the reason it may not.
fn handshake(mut request: Request<Incoming>, token: &blake3::Hash, commands: Sender<Command>) -> Response<String> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let shown = header(AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let refuse = |status: StatusCode, why: &str| {
        let mut response = Response::new(why.to_owned());
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != wire::PATH || header(UPGRADE.as_str()).as_deref() != Some(wire::PROTOCOL) {
        return refuse(StatusCode::NOT_FOUND, "not a control link");
    }
    if shown.is_none_or(|shown| blake3::hash(shown.as_bytes()) != *token) {
        return refuse(StatusCode::UNAUTHORIZED, "wrong run token");
    }
    let Some(name) = header(wire::NODE_HEADER).filter(|n| !n.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "no node named");
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            serve_link(TokioIo::new(upgraded), name, commands).await;
        }
    });
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response
        .headers_mut()
        .insert(UPGRADE, wire::PROTOCOL.parse().expect("a valid header value"));
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        "upgrade".parse().expect("a valid header value"),
    );
    response
}

/// Runs one link: its frames go to the coordinator thread stamped with their arrival; its work frames
/// are written as they come (a backlog in one write).
async fn serve_link<S>(stream: S, name: String, commands: Sender<Command>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let (down, mut outgoing) = mpsc::unbounded_channel();
    // Refused when the run has already ended: the queue is then closed, and the writer says so.
    let _ = commands.send(Command::Linked {
        name: name.clone(),
        down,
        at: Instant::now(),
    });
    let writer = tokio::spawn(async move {
        loop {
            let Some(first) = outgoing.recv().await else {
                // The coordinator let go of this link without a last frame: the run ended before it
                // took the link in (a node that linked late), or it dropped the link. Either way the
                // run is over for this node, and it is told so rather than cut off.
                let _ = wire::write_frames(&mut write, &[Down::End]).await;
                break;
            };
            let mut frames = vec![first];
            while let Ok(frame) = outgoing.try_recv() {
                frames.push(frame);
            }
            let end = frames.contains(&Down::End);
            if wire::write_frames(&mut write, &frames).await.is_err() || end {
                break;
            }
        }
    });
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    let why = loop {
        match wire::read_frame::<_, Up>(&mut read, &mut line).await {
            Ok(Some(Up::Report { events })) => {
                let frame = Command::Frame {
                    name: name.clone(),
                    reports: events,
                    at: Instant::now(),
                };
                if commands.send(frame).is_err() {
                    break "the run ended".to_owned();
                }
            }
            Ok(None) => break "the node closed it".to_owned(),
            Err(error) => break error.to_string(),
        }
    };
    let _ = commands.send(Command::Unlinked { name, why });
    // What is queued (the run's end, most often) still goes out; the writer ends when the coordinator
    // drops its end of the queue, or at the latest after LAST_WRITES.
    let _ = tokio::time::timeout(LAST_WRITES, writer).await;
}
