//! The control-plane benchmark: the real coordinator ([`Coordinator`], with the real scheduler) and a
//! fleet of virtual nodes, each on a control link of its own ([`link::run`] over loopback TCP), whose
//! transfers are timed by the fluid model of [`crate::fluid`] running on the wall clock.
//!
//! Everything of the product's control plane is real: handshakes, JSON frames, the links' batching,
//! the coordinator's thread and its steps. Only the bytes are modeled: a virtual node's worker hands its
//! work to the world (on a thread of its own: the network it stands for needs no CPU of the nodes),
//! which owns the links' model, starts each transfer at its fluid share after the latency, and at the
//! moment the model says the last byte arrived sends the node's `Done` report into its link. So the run takes about what the same case takes in the simulator
//! ([`crate::sim`]), plus whatever the control plane costs: efficiency against the bound, next to the
//! simulator's efficiency on the same case, shows that cost. (Not to the decimal: the simulator
//! decides after each delivery and every 100 ms, the coordinator after each batch of frames and every
//! 20 ms, so a small case may come out a little either side.)
//!
//! `time_scale` slows every link (and its latency) by that factor: model time is wall time divided by
//! it. The bound is scaled alike, so efficiencies stay comparable, but deliveries per second fall by the
//! same factor: a rate worth quoting comes from an unslowed run.
//!
//! A node's engine keeps one copy of a unit: when a transfer delivers, the node's other transfers of the
//! same unit (endgame duplicates) are shut out and report nothing, and work for a unit it already holds
//! is ignored, as the engine's fence does. A follow-up (work `after` another unit from the same peer)
//! starts the moment the transfer it follows ends, as a linked engine starts it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use xfd_core::control::core::RunPlan;
use xfd_core::control::link::{self, LinkConfig, LinkEnd, Work, Worker};
use xfd_core::control::server::{Coordinator, CoordinatorConfig, Outcome, Status};
use xfd_core::control::wire::Report;
use xfd_core::scheduler::Transfer;

use crate::fluid::{Fluid, Happened};
use crate::sim::{self, SimConfig};

/// The run's token: any printable string will do on loopback.
const TOKEN: &str = "xfd-control-bench-0123456789abcdef";
/// The digest every `Done` carries: the coordinator only stores and forwards it.
const DIGEST: &str = "00000000000000000000000000000000000000000000000000000000000000ff";
/// The name of the runtime's worker threads (CPU is counted per thread name).
const RUNTIME_THREAD: &str = "fleet-runtime";
/// The name of the world's thread.
const WORLD_THREAD: &str = "fleet-world";
/// The port in every virtual node's address; nothing listens there.
const PEER_PORT: u16 = 7070;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The case: nodes, bytes, chunk size, links, scheduler settings (as the simulator takes them).
    pub sim: SimConfig,
    /// Every link and its latency slowed by this factor (1: real speed).
    pub time_scale: f64,
    /// An idle node sends an empty report this often. Links are known to be up once every node has
    /// sent one, so it also sets how long the setup waits.
    pub heartbeat: Duration,
    /// How often the coordinator publishes a progress snapshot.
    pub snapshot_every: Duration,
    /// The run is given up after this long (wall time, from the first join).
    pub timeout: Duration,
}

impl FleetConfig {
    /// `sim`'s case at real speed. A half-second heartbeat keeps the setup short without adding
    /// frames worth counting; snapshots at 100 ms are what a notebook's progress needs; ten minutes
    /// is far beyond any case that fits on one machine.
    pub fn new(sim: SimConfig) -> Self {
        FleetConfig {
            sim,
            time_scale: 1.0,
            heartbeat: Duration::from_millis(500),
            snapshot_every: Duration::from_millis(100),
            timeout: Duration::from_secs(600),
        }
    }
}

/// What a run measured. Times are wall seconds.
#[derive(Clone, Debug, Serialize)]
pub struct FleetResult {
    pub nodes: usize,
    pub bytes: u64,
    pub chunk_size: u64,
    pub units: usize,
    pub time_scale: f64,
    /// `finished`, or why the run did not finish.
    pub outcome: String,
    /// From the first join to the coordinator's `Finished`.
    pub wall_s: f64,
    /// From the first join to the last (the origin waits for every node to join).
    pub join_s: f64,
    /// From the first transfer's start to the last delivery.
    pub transfer_s: f64,
    /// The bound of the case, in wall seconds (slowed by `time_scale`).
    pub lower_bound_s: f64,
    /// Bound over wall time.
    pub efficiency: f64,
    /// The simulator's efficiency on the same case.
    pub sim_efficiency: f64,
    /// Deliveries the coordinator counted.
    pub deliveries: u64,
    /// `deliveries` over `transfer_s`.
    pub deliveries_per_s: f64,
    /// `Done` reports the virtual nodes sent, and how many of them were from the origin.
    pub reported: u64,
    pub origin_fetches: u64,
    /// Units fetched from the origin other than exactly once (0 in a run without failures).
    pub units_not_fetched_once: usize,
    /// Nodes holding every unit at the end.
    pub complete_nodes: usize,
    /// Work the world could not carry out: unknown units or peers, or a source not holding the unit.
    pub bad_work: u64,
    /// Work for a unit its node already held (ignored, as the engine's fence does).
    pub ignored_work: u64,
    /// Links that ended other than by the coordinator's end of the run: how many, and why.
    pub link_errors: Vec<(usize, String)>,
    pub frames_in: u64,
    pub frames_out: u64,
    /// The longest and the mean delay of a delivery behind the model's clock (the world task's lag).
    pub max_lag_s: f64,
    pub mean_lag_s: f64,
    /// How long a node's slot freed by a delivery waited for its next transfer, on average (wall
    /// seconds; a node with nothing left to fetch is not waiting), and the follow-ups started.
    pub mean_refill_s: f64,
    pub follow_ups: u64,
    /// CPU seconds spent during `wall_s`: the whole process, the coordinator's thread, the tokio workers
    /// (links, control server and world), and the world task alone.
    pub cpu_s: f64,
    pub coordinator_cpu_s: f64,
    pub runtime_cpu_s: f64,
    pub world_busy_s: f64,
    /// Peak resident memory of the whole process (coordinator, virtual nodes and world).
    pub peak_rss_bytes: u64,
}

/// Runs the case on a runtime of its own (2 workers); blocks until the run ends.
pub fn run(config: &FleetConfig) -> Result<FleetResult, String> {
    if !(config.time_scale >= 1.0 && config.time_scale.is_finite()) {
        return Err(format!("time scale: must be 1 or more, not {}", config.time_scale));
    }
    if config.sim.nodes == 0 || config.sim.bytes == 0 || config.sim.chunk_size == 0 {
        return Err("nodes, bytes and chunk size must all be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fleet = Fleet::new(&config.sim);
    let coordinator = runtime
        .block_on(Coordinator::start(coordinator_config(config, &fleet)))
        .map_err(|e| e.to_string())?;
    let (starts, inbox) = mpsc::unbounded_channel();
    let mut reports = Vec::with_capacity(config.sim.nodes);
    let mut links = Vec::with_capacity(config.sim.nodes);
    for node in 0..config.sim.nodes {
        let (report, outcomes) = mpsc::unbounded_channel();
        reports.push(report);
        let worker = Arc::new(VirtualNode {
            node: node as u32,
            world: starts.clone(),
        });
        let link = LinkConfig {
            coordinator: coordinator.address(),
            token: TOKEN.into(),
            node: fleet.name(node),
            heartbeat: config.heartbeat,
        };
        links.push(runtime.spawn(link::run(link, outcomes, worker)));
    }
    wait_for_links(&coordinator, config)?;
    let world = World::new(&config.sim, fleet.clone(), reports);
    let measured = measure(&coordinator, &fleet, config, world, inbox);
    coordinator.end();
    let _ = starts.send(Start::Stop);
    let (world, run) = measured?;
    let world = world.join().map_err(|_| "the world failed".to_owned())?;
    let link_errors = runtime.block_on(link_errors(links));
    Ok(result(config, &fleet, &world, run, link_errors))
}

fn coordinator_config(config: &FleetConfig, fleet: &Fleet) -> CoordinatorConfig {
    CoordinatorConfig {
        plan: RunPlan {
            units: fleet.units(),
            unique_bytes: config.sim.bytes,
            scheduler: config.sim.scheduler.clone(),
        },
        token: TOKEN.into(),
        bind: "127.0.0.1:0".parse().expect("a socket address"),
        lost_after: config.timeout,
        snapshot_every: config.snapshot_every,
        with_chunks: false,
        expected: (0..config.sim.nodes).map(|node| fleet.name(node)).collect(),
        // Every node joins within the first moments: the origin waits for the last of them.
        origin_hold: Duration::from_secs(10),
    }
}

/// Runs the world on a thread of its own: it stands for the network, which does not wait for a CPU,
/// so it is not queued behind the 1,024 links' tasks on the runtime's two workers (there it lagged
/// the model's clock by up to 0.7 s at 1,024 nodes x 100 GB, delaying every delivery it reported).
fn spawn_world(world: World, inbox: mpsc::UnboundedReceiver<Start>) -> Result<std::thread::JoinHandle<World>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the world's runtime: {e}"))?;
    std::thread::Builder::new()
        .name(WORLD_THREAD.into())
        .spawn(move || runtime.block_on(world.run(inbox)))
        .map_err(|e| format!("cannot start the world's thread: {e}"))
}

/// What the run measured while it ran: the status at its end and the clocks.
struct Measured {
    status: Status,
    frames_in: u64,
    frames_out: u64,
    wall_s: f64,
    join_s: f64,
    cpu: ThreadCpu,
}

/// Starts the world, joins every node, and waits for the outcome: the measured run.
fn measure(
    coordinator: &Coordinator,
    fleet: &Fleet,
    config: &FleetConfig,
    mut world: World,
    inbox: mpsc::UnboundedReceiver<Start>,
) -> Result<(std::thread::JoinHandle<World>, Measured), String> {
    let before = coordinator.status();
    let threads = ThreadCpu::read();
    let began = Instant::now();
    world.clock = Clock {
        origin: began,
        scale: config.time_scale,
    };
    let world = spawn_world(world, inbox)?;
    for node in 0..config.sim.nodes {
        let needs = fleet.unit_ids.iter().cloned().collect();
        coordinator
            .join(&fleet.name(node), &fleet.addresses[node], needs, vec![])
            .map_err(|e| e.to_string())?;
    }
    let join_s = began.elapsed().as_secs_f64();
    let status = coordinator.wait(config.timeout);
    let wall_s = began.elapsed().as_secs_f64();
    // Read before the end: the coordinator's thread, and its CPU clock, are gone after it.
    let cpu = ThreadCpu::read().since(&threads);
    Ok((
        world,
        Measured {
            frames_in: status.frames_in - before.frames_in,
            frames_out: status.frames_out - before.frames_out,
            status,
            wall_s,
            join_s,
            cpu,
        },
    ))
}

fn result(
    config: &FleetConfig,
    fleet: &Fleet,
    world: &World,
    run: Measured,
    link_errors: Vec<(usize, String)>,
) -> FleetResult {
    let outcome = match &run.status.outcome {
        Some(Outcome::Finished) => "finished".to_owned(),
        Some(Outcome::Stalled(why)) => format!("stalled: {why}"),
        None => format!("not finished within {:?}", config.timeout),
    };
    let lower_bound_s = sim::config_lower_bound(&config.sim) * config.time_scale;
    let transfer_s = world.transfer_s();
    FleetResult {
        nodes: config.sim.nodes,
        bytes: config.sim.bytes,
        chunk_size: config.sim.chunk_size,
        units: fleet.unit_ids.len(),
        time_scale: config.time_scale,
        outcome,
        wall_s: run.wall_s,
        join_s: run.join_s,
        transfer_s,
        lower_bound_s,
        efficiency: lower_bound_s / run.wall_s,
        sim_efficiency: sim::run(&reference(&config.sim)).efficiency(),
        deliveries: run.status.deliveries,
        deliveries_per_s: run.status.deliveries as f64 / transfer_s,
        reported: world.reported,
        origin_fetches: world.origin_fetches.iter().map(|&n| u64::from(n)).sum(),
        units_not_fetched_once: world.origin_fetches.iter().filter(|&&n| n != 1).count(),
        complete_nodes: world.complete_nodes(),
        bad_work: world.bad_work,
        ignored_work: world.ignored_work,
        link_errors,
        frames_in: run.frames_in,
        frames_out: run.frames_out,
        max_lag_s: world.max_lag * config.time_scale,
        mean_lag_s: world.total_lag * config.time_scale / world.reported.max(1) as f64,
        mean_refill_s: world.refill_wait * config.time_scale / world.refills.max(1) as f64,
        follow_ups: world.follow_ups,
        cpu_s: run.cpu.process,
        coordinator_cpu_s: run.cpu.coordinator,
        runtime_cpu_s: run.cpu.runtime,
        world_busy_s: world.busy,
        peak_rss_bytes: peak_rss(),
    }
}

/// The simulator's case: its coordinator answers at once, with no queue of follow-ups on the nodes (the
/// bound a control plane with no round trip would reach).
fn reference(config: &SimConfig) -> SimConfig {
    let mut reference = config.clone();
    reference.scheduler.follow_ups = None;
    reference
}

/// Every link is up once every node has sent a frame (its first heartbeat).
fn wait_for_links(coordinator: &Coordinator, config: &FleetConfig) -> Result<(), String> {
    let deadline = Instant::now() + config.heartbeat * 4 + Duration::from_secs(30);
    while coordinator.status().frames_in < config.sim.nodes as u64 {
        if Instant::now() > deadline {
            let linked = coordinator.status().frames_in;
            return Err(format!("only {linked} of {} links came up", config.sim.nodes));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// How each link ended other than by the coordinator's end of the run, as `(count, reason)`.
async fn link_errors(links: Vec<tokio::task::JoinHandle<xfd_core::error::Result<LinkEnd>>>) -> Vec<(usize, String)> {
    let mut errors: Vec<(usize, String)> = Vec::new();
    for link in links {
        let error = match tokio::time::timeout(Duration::from_secs(10), link).await {
            Ok(Ok(Ok(LinkEnd::Ended))) => continue,
            Ok(Ok(Ok(LinkEnd::Closed))) => "the node closed it".to_owned(),
            Ok(Ok(Err(error))) => error.to_string(),
            Ok(Err(error)) => format!("its task failed: {error}"),
            Err(_) => "still open 10 s after the end".to_owned(),
        };
        match errors.iter_mut().find(|(_, seen)| *seen == error) {
            Some((count, _)) => *count += 1,
            None => errors.push((1, error)),
        }
    }
    errors
}

/// The names of the run: units by plan id, nodes by name and peer address.
#[derive(Clone)]
struct Fleet {
    unit_ids: Arc<Vec<String>>,
    unit_sizes: Arc<Vec<u64>>,
    addresses: Arc<Vec<String>>,
    unit_index: Arc<HashMap<String, u32>>,
    node_index: Arc<HashMap<String, u32>>,
}

impl Fleet {
    fn new(config: &SimConfig) -> Fleet {
        let units = config.bytes.div_ceil(config.chunk_size);
        let unit_ids: Vec<String> = (0..units).map(|i| format!("c{i:031x}")).collect();
        let unit_sizes = (0..units)
            .map(|i| (config.bytes - i * config.chunk_size).min(config.chunk_size))
            .collect();
        // Loopback-looking and unique; never connected to (the world moves the bytes).
        let addresses: Vec<String> = (0..config.nodes as u32)
            .map(|i| {
                let n = i + 2;
                format!("127.{}.{}.{}:{PEER_PORT}", n >> 16, (n >> 8) & 0xff, n & 0xff)
            })
            .collect();
        Fleet {
            unit_index: Arc::new(
                unit_ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id.clone(), i as u32))
                    .collect(),
            ),
            node_index: Arc::new(
                addresses
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.clone(), i as u32))
                    .collect(),
            ),
            unit_ids: Arc::new(unit_ids),
            unit_sizes: Arc::new(unit_sizes),
            addresses: Arc::new(addresses),
        }
    }

    fn units(&self) -> Vec<(String, u64)> {
        self.unit_ids
            .iter()
            .cloned()
            .zip(self.unit_sizes.iter().copied())
            .collect()
    }

    fn name(&self, node: usize) -> String {
        format!("node-{node:05}")
    }
}

/// What the virtual nodes tell the world.
enum Start {
    /// `node` was given `work`.
    Work { node: u32, work: Work },
    /// The run is over: the world stops and returns what it counted.
    Stop,
}

/// A virtual node: its worker hands its work to the world.
struct VirtualNode {
    node: u32,
    world: mpsc::UnboundedSender<Start>,
}

impl Worker for VirtualNode {
    fn start(&self, work: Work) {
        let _ = self.world.send(Start::Work { node: self.node, work });
    }
}

/// Model time on the wall clock: model seconds are `scale` wall seconds from `origin`.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
    scale: f64,
}

impl Clock {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() / self.scale
    }

    fn instant(&self, at: f64) -> Instant {
        self.origin + Duration::from_secs_f64(at.max(0.0) * self.scale)
    }
}

/// A transfer under way to a node: from `source` (`None`: the origin) since `began` (model time).
struct Underway {
    source: Option<u32>,
    began: f64,
}

/// The world: the fluid model of every link, moved along the wall clock, and what the nodes hold.
struct World {
    fluid: Fluid<()>,
    fleet: Fleet,
    clock: Clock,
    reports: Vec<mpsc::UnboundedSender<Report>>,
    units: usize,
    /// `held[node * units + unit]`.
    held: Vec<bool>,
    /// Transfers under way per (node, unit).
    inflight: HashMap<(u32, u32), Vec<Underway>>,
    /// Follow-ups waiting, by the transfer ahead of them (node, unit, source), and the (node, unit,
    /// source) of each waiting one.
    following: HashMap<(u32, u32, u32), Vec<u32>>,
    waiting: HashSet<(u32, u32, u32)>,
    follow_ups: u64,
    /// Per node, when each slot freed by a delivery began to wait (model time), oldest first; the
    /// total wait until a transfer took it, and how many did.
    freed: Vec<VecDeque<f64>>,
    refill_wait: f64,
    refills: u64,
    /// Units each node holds, and its download slots (a node with more units left than slots has work
    /// for a freed slot).
    held_counts: Vec<usize>,
    slots: usize,
    origin_fetches: Vec<u32>,
    reported: u64,
    bad_work: u64,
    ignored_work: u64,
    first_start: Option<f64>,
    last_done: f64,
    max_lag: f64,
    total_lag: f64,
    /// CPU seconds the world spent (its own thread's CPU clock while it works).
    busy: f64,
}

impl World {
    /// The world of `config`'s case; its clock starts when it is set (at the first join).
    fn new(config: &SimConfig, fleet: Fleet, reports: Vec<mpsc::UnboundedSender<Report>>) -> World {
        // The simulator's capacities for the same case: same draws, same nodes.
        let (up, down) = sim::capacities(config, &mut (config.seed | 1));
        let units = fleet.unit_ids.len();
        World {
            fluid: Fluid::new(config, up, down).sweeping(),
            clock: Clock {
                origin: Instant::now(),
                scale: 1.0,
            },
            reports,
            units,
            held: vec![false; config.nodes * units],
            inflight: HashMap::new(),
            following: HashMap::new(),
            waiting: HashSet::new(),
            follow_ups: 0,
            freed: vec![VecDeque::new(); config.nodes],
            refill_wait: 0.0,
            refills: 0,
            held_counts: vec![0; config.nodes],
            slots: config.scheduler.download_slots as usize,
            origin_fetches: vec![0; units],
            reported: 0,
            bad_work: 0,
            ignored_work: 0,
            first_start: None,
            last_done: 0.0,
            max_lag: 0.0,
            total_lag: 0.0,
            busy: 0.0,
            fleet,
        }
    }

    /// Applies every event that is due, then the work that came in, and sleeps until the next event or
    /// the next work, whichever comes first.
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Start>) -> World {
        let mut came: Vec<(u32, Work)> = Vec::new();
        loop {
            let working = thread_cpu();
            let now = self.clock.now();
            self.catch_up(now);
            self.fluid.now = self.fluid.now.max(now);
            for (node, work) in came.drain(..) {
                self.begin(node, work);
            }
            loop {
                match inbox.try_recv() {
                    Ok(Start::Work { node, work }) => self.begin(node, work),
                    Ok(Start::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return self,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            self.busy += thread_cpu() - working;
            let next = self.fluid.next_at().map(|at| self.clock.instant(at));
            tokio::select! {
                start = inbox.recv() => match start {
                    Some(Start::Work { node, work }) => came.push((node, work)),
                    Some(Start::Stop) | None => return self,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {}
            }
        }
    }

    /// Applies the events due by `now` (model time), each at its own time.
    fn catch_up(&mut self, now: f64) {
        while self.fluid.next_at().is_some_and(|at| at <= now) {
            if let Some(Happened::Finished(transfer)) = self.fluid.step() {
                let lag = now - self.fluid.now;
                self.max_lag = self.max_lag.max(lag);
                self.total_lag += lag;
                self.deliver(transfer);
            }
        }
    }

    fn begin(&mut self, node: u32, work: Work) {
        let origin = work.origin.into_iter().map(|unit| (unit, None, None));
        let peers = work.peers.into_iter().map(|p| (p.unit, Some(p.peer), p.after));
        for (unit, peer, after) in origin.chain(peers) {
            let Some(&unit) = self.fleet.unit_index.get(&unit) else {
                self.bad_work += 1;
                continue;
            };
            let ahead = after.and_then(|after| self.fleet.unit_index.get(&after).copied());
            let source = peer
                .as_ref()
                .and_then(|address| self.fleet.node_index.get(address).copied());
            if let (Some(ahead), Some(source)) = (ahead, source)
                && self.live(node, ahead, source)
            {
                self.waiting.insert((node, unit, source));
                self.following.entry((node, ahead, source)).or_default().push(unit);
                continue;
            }
            if peer.is_some() && source.is_none() {
                self.bad_work += 1;
                continue;
            }
            self.start(node, unit, source);
        }
    }

    /// Whether `node`'s transfer of `unit` from `source` is under way or waiting for the one ahead.
    fn live(&self, node: u32, unit: u32, source: u32) -> bool {
        self.waiting.contains(&(node, unit, source))
            || self
                .inflight
                .get(&(node, unit))
                .is_some_and(|underway| underway.iter().any(|u| u.source == Some(source)))
    }

    /// The transfer of `unit` from `source` to `node` ended: the follow-ups waiting for it start.
    fn ended(&mut self, node: u32, unit: u32, source: Option<u32>) {
        let Some(source) = source else { return };
        for next in self.following.remove(&(node, unit, source)).unwrap_or_default() {
            self.waiting.remove(&(node, next, source));
            self.follow_ups += 1;
            self.start(node, next, Some(source));
        }
    }

    /// Starts a transfer of `unit` to `node` from `source` (`None`: the origin), unless the source
    /// lacks the unit (bad work) or the node holds it already (ignored); then whatever follows it starts.
    fn start(&mut self, node: u32, unit: u32, source: Option<u32>) {
        if source.is_some_and(|source| !self.holds(source, unit)) || self.holds(node, unit) {
            if self.holds(node, unit) {
                self.ignored_work += 1;
            } else {
                self.bad_work += 1;
            }
            self.ended(node, unit, source);
            return;
        }
        let now = self.fluid.now;
        if let Some(freed) = self.freed[node as usize].pop_front() {
            self.refill_wait += now - freed;
            self.refills += 1;
        }
        self.first_start.get_or_insert(now);
        self.inflight
            .entry((node, unit))
            .or_default()
            .push(Underway { source, began: now });
        self.fluid.begin(Transfer {
            chunk: unit,
            node,
            source,
            duplicate: false,
        });
    }

    /// `transfer` delivered: its node holds the unit, its other transfers of it are shut out, and its
    /// link reports it.
    fn deliver(&mut self, transfer: Transfer) {
        let (node, unit) = (transfer.node, transfer.chunk);
        let mut began = self.fluid.now;
        let underway = self.inflight.remove(&(node, unit)).unwrap_or_default();
        for underway in &underway {
            if underway.source == transfer.source {
                began = underway.began;
            } else {
                self.fluid.drop_transfer(Transfer {
                    source: underway.source,
                    ..transfer
                });
            }
        }
        self.held[node as usize * self.units + unit as usize] = true;
        self.held_counts[node as usize] += 1;
        let left = self.units - self.held_counts[node as usize];
        if left > self.slots {
            self.freed[node as usize].push_back(self.fluid.now);
        }
        if transfer.source.is_none() {
            self.origin_fetches[unit as usize] += 1;
        }
        self.reported += 1;
        self.last_done = self.fluid.now;
        let _ = self.reports[node as usize].send(Report::Done {
            unit: self.fleet.unit_ids[unit as usize].clone(),
            peer: transfer.source.map(|s| self.fleet.addresses[s as usize].clone()),
            seconds: (self.fluid.now - began) * self.clock.scale,
            digest: DIGEST.into(),
        });
        // Every transfer of the unit ended (the others were shut out): what followed each starts.
        for ended in underway {
            self.ended(node, unit, ended.source);
        }
    }

    fn holds(&self, node: u32, unit: u32) -> bool {
        self.held[node as usize * self.units + unit as usize]
    }

    fn complete_nodes(&self) -> usize {
        self.held
            .chunks(self.units)
            .filter(|node| node.iter().all(|&h| h))
            .count()
    }

    /// Wall seconds from the first transfer's start to the last delivery.
    fn transfer_s(&self) -> f64 {
        (self.last_done - self.first_start.unwrap_or(0.0)) * self.clock.scale
    }
}

/// CPU seconds used so far: the process, the coordinator's thread, the tokio workers.
struct ThreadCpu {
    process: f64,
    coordinator: f64,
    runtime: f64,
}

impl ThreadCpu {
    fn read() -> ThreadCpu {
        let mut cpu = ThreadCpu {
            process: cpu_seconds("/proc/self/stat").unwrap_or(0.0),
            coordinator: 0.0,
            runtime: 0.0,
        };
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return cpu;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let seconds = cpu_seconds(&path.join("stat").to_string_lossy()).unwrap_or(0.0);
            match comm.trim() {
                "xfd-coordinator" => cpu.coordinator += seconds,
                RUNTIME_THREAD => cpu.runtime += seconds,
                _ => {}
            }
        }
        cpu
    }

    fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            process: self.process - earlier.process,
            coordinator: self.coordinator - earlier.coordinator,
            runtime: self.runtime - earlier.runtime,
        }
    }
}

/// User + system CPU seconds from a `stat` file of procfs (fields 14 and 15, after the command name).
fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / per_second.max(1) as f64)
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// The process's peak resident memory (`VmHWM`), in bytes; 0 where procfs does not tell.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xfd_core::control::wire::PeerWork;

    /// A world of `nodes` nodes and 2 units of 64 MiB, with each node's report channel.
    fn world(nodes: usize) -> (World, Vec<mpsc::UnboundedReceiver<Report>>) {
        let config = SimConfig::datacenter(nodes, 128 << 20);
        let (reports, outcomes): (Vec<_>, Vec<_>) = (0..nodes).map(|_| mpsc::unbounded_channel()).unzip();
        (World::new(&config, Fleet::new(&config), reports), outcomes)
    }

    fn from_peer(world: &World, unit: usize, peer: usize) -> PeerWork {
        PeerWork {
            unit: world.fleet.unit_ids[unit].clone(),
            peer: world.fleet.addresses[peer].clone(),
            digest: None,
            after: None,
        }
    }

    fn drain(outcomes: &mut mpsc::UnboundedReceiver<Report>) -> Vec<Report> {
        std::iter::from_fn(|| outcomes.try_recv().ok()).collect()
    }

    #[test]
    fn the_first_copy_to_arrive_is_reported_and_the_duplicate_is_shut_out() {
        let (mut world, mut outcomes) = world(3);
        world.held[world.units] = true; // node 1 holds unit 0
        world.held[2 * world.units] = true; // so does node 2
        let work = Work {
            origin: vec![],
            peers: vec![from_peer(&world, 0, 1), from_peer(&world, 0, 2)],
        };
        world.begin(0, work);
        world.catch_up(60.0);

        let reports = drain(&mut outcomes[0]);
        assert_eq!(reports.len(), 1, "{reports:?}");
        let Report::Done { unit, peer, .. } = &reports[0] else {
            panic!("{reports:?}")
        };
        assert_eq!(unit, &world.fleet.unit_ids[0]);
        assert!(peer.is_some());
        assert!(world.holds(0, 0) && world.inflight.is_empty() && world.fluid.idle());
        assert_eq!((world.reported, world.origin_fetches[0]), (1, 0));
    }

    /// A follow-up starts when the transfer ahead of it delivers, not before, and reports after it.
    #[test]
    fn a_follow_up_starts_when_the_transfer_ahead_of_it_ends() {
        let (mut world, mut outcomes) = world(2);
        world.held[world.units] = true; // node 1 holds both units
        world.held[world.units + 1] = true;
        let follow_up = PeerWork {
            after: Some(world.fleet.unit_ids[0].clone()),
            ..from_peer(&world, 1, 1)
        };
        world.begin(
            0,
            Work {
                origin: vec![],
                peers: vec![from_peer(&world, 0, 1), follow_up],
            },
        );
        assert_eq!(world.inflight.len(), 1, "the follow-up waits");
        world.catch_up(60.0);

        let units: Vec<String> = drain(&mut outcomes[0])
            .into_iter()
            .filter_map(|r| r.unit().map(str::to_owned))
            .collect();
        assert_eq!(units, world.fleet.unit_ids[..2].to_vec());
        assert_eq!(world.follow_ups, 1);
        assert!(world.holds(0, 1) && world.waiting.is_empty() && world.following.is_empty());
    }

    #[test]
    fn work_for_a_unit_held_or_from_a_source_without_it_is_not_started() {
        let (mut world, mut outcomes) = world(2);
        let origin = |unit: &str| Work {
            origin: vec![unit.to_owned()],
            peers: vec![],
        };
        world.begin(0, origin(&world.fleet.unit_ids[0].clone()));
        world.catch_up(60.0);
        assert_eq!(drain(&mut outcomes[0]).len(), 1);
        assert_eq!(world.origin_fetches[0], 1);

        world.begin(0, origin(&world.fleet.unit_ids[0].clone())); // held already
        let unknown = Work {
            origin: vec!["no-such-unit".into()],
            peers: vec![from_peer(&world, 1, 0)], // node 0 does not hold unit 1
        };
        world.begin(1, unknown);
        world.catch_up(120.0);

        assert_eq!((world.ignored_work, world.bad_work), (1, 2));
        assert!(drain(&mut outcomes[0]).is_empty() && drain(&mut outcomes[1]).is_empty());
        assert!(world.inflight.is_empty() && world.fluid.idle());
    }
}
