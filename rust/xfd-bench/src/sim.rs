//! The scale simulator: the real [`Scheduler`] state machine driven over modeled links.
//!
//! Event by event over the fluid model of [`crate::fluid`]: per-node upload and download capacities
//! (spread by a heterogeneity factor), one shared origin capacity, a fixed latency per transfer, equal
//! shares recomputed whenever a transfer joins or leaves a link.
//!
//! The scheduler sees exactly what the runtime gives it: `finished` per delivered chunk, `node_lost`
//! when a node dies, and a call to `next_transfers` after every report (the coordinator's step) and
//! every 100 ms of simulated time (its long-poll returning empty). Its own CPU time is measured.

use std::time::Instant;

use xfd_core::scheduler::{Scheduler, SchedulerConfig};

use crate::fluid::{Fluid, Happened};

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

/// The simulator's own events, queued with the links' events.
#[derive(PartialEq)]
enum SimEvent {
    NodeDies(u32),
    Tick,
}

type World = Fluid<SimEvent>;

/// Each node's upload and download capacities: the nominal ones scaled by a factor drawn uniformly
/// from `[1 - h, 1 + h]`, uploads first, from the generator state `rng`.
pub fn capacities(config: &SimConfig, rng: &mut u64) -> (Vec<f64>, Vec<f64>) {
    let mut factor = || 1.0 + config.heterogeneity * (2.0 * uniform(rng) - 1.0);
    let up: Vec<f64> = (0..config.nodes).map(|_| config.node_up_bps * factor()).collect();
    let down: Vec<f64> = (0..config.nodes).map(|_| config.node_down_bps * factor()).collect();
    (up, down)
}

/// The bound of `config`'s run when every node survives, with the capacities [`run`] draws.
pub fn config_lower_bound(config: &SimConfig) -> f64 {
    let (up, down) = capacities(config, &mut (config.seed | 1));
    lower_bound(
        config.bytes as f64,
        config.origin_bps,
        &up,
        &down,
        &vec![true; config.nodes],
    )
}

pub fn run(config: &SimConfig) -> SimResult {
    let chunks = config.bytes.div_ceil(config.chunk_size) as usize;
    let mut rng = config.seed | 1;
    let (up, down) = capacities(config, &mut rng);
    let mut world = World::new(config, up, down);
    let estimate = lower_bound(
        config.bytes as f64,
        config.origin_bps,
        &world.up,
        &world.down,
        &vec![true; config.nodes],
    );
    schedule_failures(&mut world, config, estimate, &mut rng);
    let mut scheduler = Scheduler::new(chunks, config.nodes, None, config.scheduler.clone());
    let mut stats = Stats::default();
    decide(&mut scheduler, &mut world, config, &mut stats);
    world.schedule(TICK_S, SimEvent::Tick);
    while !scheduler.done() {
        let Some(happened) = world.step() else { break };
        match happened {
            // Bytes began to move, or a finish moved: no news for the coordinator, which steps on
            // reports and ticks.
            Happened::Nothing => continue,
            Happened::Finished(transfer) => {
                stats.deliveries += 1;
                let started = Instant::now();
                let losers = scheduler.finished(transfer);
                stats.cpu += started.elapsed().as_secs_f64();
                for loser in losers {
                    world.drop_transfer(loser);
                }
            }
            Happened::Other(SimEvent::NodeDies(node)) => {
                let started = Instant::now();
                let dropped = scheduler.node_lost(node);
                stats.cpu += started.elapsed().as_secs_f64();
                for transfer in dropped {
                    world.drop_transfer(transfer);
                }
            }
            Happened::Other(SimEvent::Tick) => {
                if world.idle() && !scheduler.done() && world.quiet() {
                    decide(&mut scheduler, &mut world, config, &mut stats);
                    if world.idle() {
                        break; // stalled: nothing runs, nothing will
                    }
                }
                world.schedule(world.now + TICK_S, SimEvent::Tick);
            }
        }
        decide(&mut scheduler, &mut world, config, &mut stats);
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
fn decide(scheduler: &mut Scheduler, world: &mut World, config: &SimConfig, stats: &mut Stats) {
    let started = Instant::now();
    let mut transfers = scheduler.next_transfers();
    // The coordinator looks at a bounded number of nodes per step; with nothing running, it steps
    // again at once rather than waiting for a tick.
    let mut tries = config.nodes / config.scheduler.scan_budget.max(1) + 2;
    while transfers.is_empty() && world.idle() && !scheduler.done() && tries > 0 {
        transfers = scheduler.next_transfers();
        tries -= 1;
    }
    stats.cpu += started.elapsed().as_secs_f64();
    stats.decisions += transfers.len() as u64;
    for transfer in transfers {
        world.begin(transfer);
    }
}

fn schedule_failures(world: &mut World, config: &SimConfig, horizon: f64, rng: &mut u64) {
    let count = (config.failure_rate * config.nodes as f64).round() as usize;
    let mut victims: Vec<u32> = (0..config.nodes as u32).collect();
    for i in 0..count.min(victims.len()) {
        let j = i + (uniform(rng) * (victims.len() - i) as f64) as usize;
        let last = victims.len() - 1;
        victims.swap(i, j.min(last));
        let at = uniform(rng) * horizon;
        world.schedule(at, SimEvent::NodeDies(victims[i]));
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
