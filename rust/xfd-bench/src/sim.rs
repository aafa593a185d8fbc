//! The scale simulator: the real [`Scheduler`] state machine driven over modeled links.
//!
//! A fluid model, event by event. Each node has an upload and a download capacity (spread by a
//! heterogeneity factor), the origin has one shared capacity, and every transfer pays a fixed latency
//! before its bytes flow. A flowing transfer gets an equal share of its source's upload (or of the
//! origin) and of its destination's download, whichever is smaller; shares are recomputed for the
//! transfers on a link whenever a transfer joins or leaves it. Equal shares leave capacity idle when
//! one side of a flow is the bottleneck, so simulated times err on the slow side.
//!
//! The scheduler sees exactly what the runtime gives it: `finished` per delivered chunk, `node_lost`
//! when a node dies, and a call to `next_transfers` after every report (the coordinator's step) and
//! every 100 ms of simulated time (its long-poll returning empty). Its own CPU time is measured.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::time::Instant;

use xfd_core::scheduler::{Scheduler, SchedulerConfig, Transfer};

/// Fixed hash keys: iteration order, hence the whole simulation, is the same from run to run.
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<DefaultHasher>>;
type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<DefaultHasher>>;

const TICK_S: f64 = 0.1;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// Artifact size in bytes.
    pub bytes: u64,
    pub chunk_size: u64,
    /// Origin egress shared by every fetch, bytes per second.
    pub origin_bps: f64,
    pub node_up_bps: f64,
    pub node_down_bps: f64,
    /// Each node's capacities are scaled by a factor drawn uniformly from `[1 - h, 1 + h]`.
    pub heterogeneity: f64,
    /// Seconds before a transfer's first byte (request, connection, first response byte).
    pub latency_s: f64,
    /// Fraction of nodes that die, each at a uniformly random moment of the lower-bound time.
    pub failure_rate: f64,
    pub scheduler: SchedulerConfig,
    pub seed: u64,
}

impl SimConfig {
    /// 25 Gb/s nodes, a 40 Gb/s origin, 1 ms latency, +-30 % heterogeneity, 64 MiB chunks, the
    /// product's slot settings.
    pub fn datacenter(nodes: usize, bytes: u64) -> Self {
        SimConfig {
            nodes,
            bytes,
            chunk_size: 64 << 20,
            origin_bps: 5e9,
            node_up_bps: 3.125e9,
            node_down_bps: 3.125e9,
            heterogeneity: 0.3,
            latency_s: 0.001,
            failure_rate: 0.0,
            scheduler: SchedulerConfig::default(),
            seed: 7,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimResult {
    pub seconds: f64,
    pub t_min: f64,
    pub origin_bytes: f64,
    pub unique_bytes: u64,
    pub deliveries: u64,
    pub decisions: u64,
    pub scheduler_cpu_s: f64,
    pub lost_nodes: usize,
    pub done: bool,
}

impl SimResult {
    pub fn efficiency(&self) -> f64 {
        self.t_min / self.seconds
    }
    /// Origin bytes over unique bytes (partial fetches cut short by a failure count too).
    pub fn amplification(&self) -> f64 {
        self.origin_bytes / self.unique_bytes as f64
    }
}

/// T_min = max(F / u_origin, F / d_slowest, N F / (u_origin + sum u_node)), over the nodes that survive.
pub fn lower_bound(bytes: f64, origin_bps: f64, up: &[f64], down: &[f64], alive: &[bool]) -> f64 {
    let live = |rates: &[f64]| {
        rates
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(r, _)| *r)
            .collect::<Vec<_>>()
    };
    let (up, down) = (live(up), live(down));
    let slowest = down.iter().copied().fold(f64::INFINITY, f64::min);
    let swarm = up.len() as f64 * bytes / (origin_bps + up.iter().sum::<f64>());
    (bytes / origin_bps).max(bytes / slowest).max(swarm)
}

struct Flow {
    transfer: Transfer,
    left: f64,
    rate: f64,
    since: f64,
    version: u64,
    flowing: bool,
}

#[derive(PartialEq)]
struct Event {
    at: f64,
    kind: EventKind,
}

#[derive(PartialEq)]
enum EventKind {
    /// A flow's latency has passed: its bytes start to move.
    Start(u64, u64),
    /// A flow is done if its version still matches (its rate was not changed meanwhile).
    Finish(u64, u64),
    NodeDies(u32),
    Tick,
}

impl Eq for Event {}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.total_cmp(&self.at) // earliest first from the max-heap
    }
}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct World {
    config: SimConfig,
    up: Vec<f64>,
    down: Vec<f64>,
    flows: HashMap<u64, Flow>,
    ids: HashMap<Transfer, u64>,
    /// Flowing transfers per link: node uploads, node downloads, the origin.
    outgoing: Vec<HashSet<u64>>,
    incoming: Vec<HashSet<u64>>,
    origin: HashSet<u64>,
    events: BinaryHeap<Event>,
    next_id: u64,
    now: f64,
    origin_bytes: f64,
}

pub fn run(config: &SimConfig) -> SimResult {
    let chunks = config.bytes.div_ceil(config.chunk_size) as usize;
    let mut rng = config.seed | 1;
    let mut factor = || 1.0 + config.heterogeneity * (2.0 * uniform(&mut rng) - 1.0);
    let up: Vec<f64> = (0..config.nodes).map(|_| config.node_up_bps * factor()).collect();
    let down: Vec<f64> = (0..config.nodes).map(|_| config.node_down_bps * factor()).collect();
    let mut world = World {
        config: config.clone(),
        flows: HashMap::default(),
        ids: HashMap::default(),
        outgoing: vec![HashSet::default(); config.nodes],
        incoming: vec![HashSet::default(); config.nodes],
        origin: HashSet::default(),
        events: BinaryHeap::new(),
        next_id: 0,
        now: 0.0,
        origin_bytes: 0.0,
        up,
        down,
    };
    let estimate = lower_bound(
        config.bytes as f64,
        config.origin_bps,
        &world.up,
        &world.down,
        &vec![true; config.nodes],
    );
    world.schedule_failures(estimate, &mut rng);
    let mut scheduler = Scheduler::new(chunks, config.nodes, None, config.scheduler.clone());
    let mut stats = Stats::default();
    decide(&mut scheduler, &mut world, &mut stats);
    world.events.push(Event {
        at: TICK_S,
        kind: EventKind::Tick,
    });
    while !scheduler.done() {
        let Some(event) = world.events.pop() else { break };
        world.now = event.at;
        match event.kind {
            EventKind::Start(id, version) => {
                // Bytes begin to move: no news for the coordinator, which steps on reports and ticks.
                world.start(id, version);
                continue;
            }
            EventKind::Finish(id, version) => {
                let Some(transfer) = world.finish(id, version) else {
                    continue;
                };
                stats.deliveries += 1;
                let started = Instant::now();
                let losers = scheduler.finished(transfer);
                stats.cpu += started.elapsed().as_secs_f64();
                for loser in losers {
                    world.drop_transfer(loser);
                }
            }
            EventKind::NodeDies(node) => {
                let started = Instant::now();
                let dropped = scheduler.node_lost(node);
                stats.cpu += started.elapsed().as_secs_f64();
                for transfer in dropped {
                    world.drop_transfer(transfer);
                }
            }
            EventKind::Tick => {
                if world.flows.is_empty() && !scheduler.done() && world.events.is_empty() {
                    decide(&mut scheduler, &mut world, &mut stats);
                    if world.flows.is_empty() {
                        break; // stalled: nothing runs, nothing will
                    }
                }
                world.events.push(Event {
                    at: world.now + TICK_S,
                    kind: EventKind::Tick,
                });
            }
        }
        decide(&mut scheduler, &mut world, &mut stats);
    }
    let alive: Vec<bool> = (0..config.nodes as u32).map(|n| scheduler.alive(n)).collect();
    SimResult {
        seconds: world.now,
        t_min: lower_bound(config.bytes as f64, config.origin_bps, &world.up, &world.down, &alive),
        origin_bytes: world.origin_bytes,
        unique_bytes: config.bytes,
        deliveries: stats.deliveries,
        decisions: stats.decisions,
        scheduler_cpu_s: stats.cpu,
        lost_nodes: scheduler.lost_nodes().len(),
        done: scheduler.done(),
    }
}

#[derive(Default)]
struct Stats {
    cpu: f64,
    decisions: u64,
    deliveries: u64,
}

/// One coordinator step: the scheduler's next transfers, started.
fn decide(scheduler: &mut Scheduler, world: &mut World, stats: &mut Stats) {
    let started = Instant::now();
    let mut transfers = scheduler.next_transfers();
    // The coordinator looks at a bounded number of nodes per step; with nothing running, it steps
    // again at once rather than waiting for a tick.
    let mut tries = world.config.nodes / world.config.scheduler.scan_budget.max(1) + 2;
    while transfers.is_empty() && world.flows.is_empty() && !scheduler.done() && tries > 0 {
        transfers = scheduler.next_transfers();
        tries -= 1;
    }
    stats.cpu += started.elapsed().as_secs_f64();
    stats.decisions += transfers.len() as u64;
    for transfer in transfers {
        world.begin(transfer);
    }
}

impl World {
    fn schedule_failures(&mut self, horizon: f64, rng: &mut u64) {
        let count = (self.config.failure_rate * self.config.nodes as f64).round() as usize;
        let mut victims: Vec<u32> = (0..self.config.nodes as u32).collect();
        for i in 0..count.min(victims.len()) {
            let j = i + (uniform(rng) * (victims.len() - i) as f64) as usize;
            let last = victims.len() - 1;
            victims.swap(i, j.min(last));
            let at = uniform(rng) * horizon;
            self.events.push(Event {
                at,
                kind: EventKind::NodeDies(victims[i]),
            });
        }
    }

    fn chunk_bytes(&self, chunk: u32) -> f64 {
        let start = chunk as u64 * self.config.chunk_size;
        (self.config.bytes - start).min(self.config.chunk_size) as f64
    }

    fn begin(&mut self, transfer: Transfer) {
        let id = self.next_id;
        self.next_id += 1;
        let flow = Flow {
            transfer,
            left: self.chunk_bytes(transfer.chunk),
            rate: 0.0,
            since: self.now,
            version: 0,
            flowing: false,
        };
        self.flows.insert(id, flow);
        self.ids.insert(transfer, id);
        self.events.push(Event {
            at: self.now + self.config.latency_s,
            kind: EventKind::Start(id, 0),
        });
    }

    fn start(&mut self, id: u64, version: u64) {
        let Some(flow) = self.flows.get_mut(&id) else { return };
        if flow.version != version || flow.flowing {
            return;
        }
        flow.flowing = true;
        let transfer = flow.transfer;
        self.links_mut(transfer, |set| {
            set.insert(id);
        });
        self.reshare(transfer);
    }

    fn finish(&mut self, id: u64, version: u64) -> Option<Transfer> {
        if self.flows.get(&id).is_none_or(|f| f.version != version || !f.flowing) {
            return None;
        }
        let transfer = self.flows[&id].transfer;
        self.remove(id);
        Some(transfer)
    }

    fn drop_transfer(&mut self, transfer: Transfer) {
        if let Some(&id) = self.ids.get(&transfer) {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        self.advance(id);
        let flow = self.flows.remove(&id).expect("flow exists");
        self.ids.remove(&flow.transfer);
        if flow.transfer.from_origin() {
            self.origin_bytes += self.chunk_bytes(flow.transfer.chunk) - flow.left.max(0.0);
        }
        if flow.flowing {
            self.links_mut(flow.transfer, |set| {
                set.remove(&id);
            });
            self.reshare(flow.transfer);
        }
    }

    fn links_mut(&mut self, transfer: Transfer, mut change: impl FnMut(&mut HashSet<u64>)) {
        change(&mut self.incoming[transfer.node as usize]);
        match transfer.source {
            Some(source) => change(&mut self.outgoing[source as usize]),
            None => change(&mut self.origin),
        }
    }

    /// Recomputes the shares of every flow on the two links `transfer` uses.
    fn reshare(&mut self, transfer: Transfer) {
        let mut affected: Vec<u64> = self.incoming[transfer.node as usize].iter().copied().collect();
        match transfer.source {
            Some(source) => affected.extend(self.outgoing[source as usize].iter().copied()),
            None => affected.extend(self.origin.iter().copied()),
        }
        for id in affected {
            self.advance(id);
            let rate = self.share(self.flows[&id].transfer);
            let flow = self.flows.get_mut(&id).expect("affected flow exists");
            if flow.flowing && flow.rate == rate && flow.transfer != transfer {
                continue; // its pending finish event still holds
            }
            flow.rate = rate;
            flow.version += 1;
            let at = self.now + flow.left.max(0.0) / rate;
            self.events.push(Event {
                at,
                kind: EventKind::Finish(id, flow.version),
            });
        }
    }

    fn share(&self, transfer: Transfer) -> f64 {
        let node = transfer.node as usize;
        let down = self.down[node] / self.incoming[node].len().max(1) as f64;
        let up = match transfer.source {
            Some(source) => self.up[source as usize] / self.outgoing[source as usize].len().max(1) as f64,
            None => self.config.origin_bps / self.origin.len().max(1) as f64,
        };
        down.min(up)
    }

    fn advance(&mut self, id: u64) {
        let now = self.now;
        let flow = self.flows.get_mut(&id).expect("flow exists");
        if flow.flowing {
            flow.left -= flow.rate * (now - flow.since);
        }
        flow.since = now;
    }
}

fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn a_small_cluster_completes_near_the_bound_with_one_origin_copy() {
        let result = run(&SimConfig::datacenter(16, GB));
        assert!(result.done);
        assert!((result.amplification() - 1.0).abs() < 1e-9, "{result:?}");
        assert!(
            result.seconds >= result.t_min * 0.999,
            "faster than physics: {result:?}"
        );
        assert!(result.efficiency() > 0.5, "{result:?}");
        assert_eq!(result.deliveries, 16 * GB.div_ceil(64 << 20));
    }

    #[test]
    fn the_origin_bound_holds_when_the_origin_is_the_bottleneck() {
        let config = SimConfig {
            origin_bps: 1e8,
            ..SimConfig::datacenter(8, GB)
        };
        let result = run(&config);
        assert!(result.done && result.seconds >= 10.0, "{result:?}");
        assert!((result.t_min - 10.0).abs() < 1e-6);
    }

    #[test]
    fn dying_nodes_are_survived_and_cost_little_extra_origin() {
        let config = SimConfig {
            failure_rate: 0.1,
            ..SimConfig::datacenter(40, 2 * GB)
        };
        let result = run(&config);
        assert!(result.done, "{result:?}");
        assert_eq!(result.lost_nodes, 4);
        assert!(result.amplification() < 1.5, "{result:?}");
    }
}
