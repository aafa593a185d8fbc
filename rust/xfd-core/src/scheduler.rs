//! The transfer scheduler: a pure state machine (no I/O, no clock), in Rust for speed at scale.
//!
//! Chunks and nodes are dense indices (`0..chunks`, `0..nodes`); the Python side maps names to them.
//! Inputs are facts (a node holds chunks, a transfer finished or failed, a node was lost); the output
//! of [`Scheduler::next_transfers`] is the transfers to start now. Policy (see `docs/runtime.md`):
//! origin once and spread out; rarest first from the least busy holder; endgame duplicates; penalties
//! for peers that serve bad bytes; lost nodes' transfers requeued and orphaned chunks back to the origin.
//!
//! Every structure is kept up to date incrementally: a decision costs O(sample size) per node looked
//! at, and one call looks at a bounded number of nodes (`scan_budget`), taking turns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Keys here are small dense integers (and transfers made of them) chosen by xfd itself, never by an
/// adversary: a multiplicative hash is enough, and several times cheaper than the default SipHash on the
/// scheduler's hottest paths (measured with the scale simulator, `docs/benchmarks.md`).
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.write_u64(b.into()));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(value.into());
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(value.into());
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IndexMap<K, V> = HashMap<K, V, BuildHasherDefault<IndexHasher>>;
type IndexSet<K> = HashSet<K, BuildHasherDefault<IndexHasher>>;

/// Free nodes considered for each origin fetch: enough to spread origin load evenly, few enough that
/// choosing costs the same on 10 nodes and on 10,000.
const ORIGIN_CANDIDATES: usize = 32;

/// Chunks of a sample tried, rarest first, before a node gives up until its next turn.
const RAREST_TRIED: usize = 8;

/// One transfer: bring `chunk` to `node` from `source` (a node) or from the origin (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Transfer {
    pub chunk: u32,
    pub node: u32,
    pub source: Option<u32>,
    pub duplicate: bool,
}

impl Transfer {
    pub fn from_origin(&self) -> bool {
        self.source.is_none()
    }
}

/// How a transfer failed, as the engine classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The source misbehaved (bytes that do not match the chunk's digest, or no answer before the
    /// deadline): penalize it.
    Integrity,
    /// A peer could not deliver (gone, busy, refused): try again, elsewhere if possible.
    Peer,
    /// The origin could not deliver even after retries: try again, up to `max_origin_failures` times.
    Origin,
    /// Retrying cannot help (the object changed, a destination is refused).
    Fatal,
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub origin_parallelism: u32,
    pub download_slots: u32,
    pub upload_slots: u32,
    /// Chunks looked at per decision (rarest-first among a random window of this many).
    pub sample_size: usize,
    /// Nodes with free slots looked at per call of [`Scheduler::next_transfers`] besides the ones whose
    /// own transfer just ended (those are always looked at): others take turns, so a node waiting for a
    /// source is looked at again within a few calls, and a call costs the same whatever the cluster size.
    pub scan_budget: usize,
    /// Integrity failures after which a node is never a source again.
    pub max_penalties: u32,
    /// Origin failures of one chunk after which it fails for good. Each is already a whole round of
    /// the engine's retries (`origin_attempts` within `origin_timeout`), so a few rounds tell an origin
    /// that is down, or that this cluster's nodes cannot reach, from a passing fault: the run then
    /// ends with the origin's error instead of retrying until its timeout.
    pub max_origin_failures: u32,
    pub endgame: bool,
    pub seed: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            origin_parallelism: 32,
            download_slots: 8,
            upload_slots: 8,
            sample_size: 64,
            scan_budget: 16,
            max_penalties: 2,
            max_origin_failures: 3,
            endgame: true,
            seed: 0,
        }
    }
}

/// A node's counters, for tests, progress and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub downloads: u32,
    pub uploads: u32,
    pub origin_fetches: u32,
    pub penalties: u32,
    pub wanting: usize,
    pub inflight: usize,
}

/// A set of dense indices with O(1) add, remove, membership and window sampling.
#[derive(Clone, Debug, Default)]
struct IndexedSet {
    items: Vec<u32>,
    positions: IndexMap<u32, u32>,
}

impl IndexedSet {
    fn add(&mut self, item: u32) {
        if !self.positions.contains_key(&item) {
            self.positions.insert(item, self.items.len() as u32);
            self.items.push(item);
        }
    }

    fn remove(&mut self, item: u32) {
        if let Some(position) = self.positions.remove(&item) {
            let last = self.items.pop().expect("non-empty");
            if (position as usize) < self.items.len() {
                self.items[position as usize] = last;
                self.positions.insert(last, position);
            }
        }
    }

    fn contains(&self, item: u32) -> bool {
        self.positions.contains_key(&item)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// `k` items from a random position on: removals swap items around, so a window is as good as a
    /// random pick at a fraction of the cost (and copies nothing).
    fn window<'a>(&'a self, k: usize, rng: &mut Rng) -> impl Iterator<Item = u32> + 'a {
        let len = self.items.len();
        let (first, wrapped) = if len <= k {
            (&self.items[..], &self.items[..0])
        } else {
            let start = rng.below(len);
            (
                &self.items[start..(start + k).min(len)],
                &self.items[..(start + k).saturating_sub(len)],
            )
        };
        first.iter().chain(wrapped).copied()
    }
}

/// The rarest few chunks of a sample, rarest first (fewest holders, then lowest id): a small array kept
/// sorted by insertion, so ranking a sample is one pass that allocates nothing.
#[derive(Default)]
struct Rarest {
    items: [(usize, u32); RAREST_TRIED],
    len: usize,
}

impl Rarest {
    fn offer(&mut self, holders: usize, chunk: u32) {
        let item = (holders, chunk);
        if self.len == RAREST_TRIED && item >= self.items[RAREST_TRIED - 1] {
            return;
        }
        let mut at = if self.len < RAREST_TRIED {
            self.len += 1;
            self.len - 1
        } else {
            RAREST_TRIED - 1
        };
        while at > 0 && self.items[at - 1] > item {
            self.items[at] = self.items[at - 1];
            at -= 1;
        }
        self.items[at] = item;
    }

    fn chunks(&self) -> impl Iterator<Item = u32> + '_ {
        self.items[..self.len].iter().map(|&(_, chunk)| chunk)
    }
}

/// The rarest few of `sample` among the chunks that have a holder and have not failed for good.
fn rank(sample: impl Iterator<Item = u32>, holders: &[IndexedSet], failed: &BTreeMap<u32, String>) -> Rarest {
    let mut rarest = Rarest::default();
    for chunk in sample {
        let count = holders[chunk as usize].len();
        if count > 0 && !failed.contains_key(&chunk) {
            rarest.offer(count, chunk);
        }
    }
    rarest
}

/// splitmix64: small, fast, reproducible from the seed.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Debug, Default)]
struct NodeState {
    alive: bool,
    wanting: IndexedSet,
    inflight: BTreeMap<u32, Vec<Transfer>>,
    downloads: u32,
    uploads: u32,
    origin_fetches: u32,
    penalties: u32,
}

pub struct Scheduler {
    config: SchedulerConfig,
    chunks: usize,
    nodes: Vec<NodeState>,
    holders: Vec<IndexedSet>,
    needers: Vec<IndexSet<u32>>,
    open: usize,
    free: IndexedSet,
    /// Nodes whose download slot was freed since the last call: looked at first.
    dirty: IndexedSet,
    turn: usize,
    unseeded: BTreeSet<u32>,
    origin_busy: u32,
    origin_inflight: IndexSet<u32>,
    origin_done: IndexSet<u32>,
    origin_refetches: u64,
    origin_failures: IndexMap<u32, u32>,
    failed: BTreeMap<u32, String>,
    lost: Vec<u32>,
    active: IndexSet<Transfer>,
    rng: Rng,
}

impl Scheduler {
    /// `needs[node]` lists the chunks that node needs; `None`: every node needs every chunk.
    pub fn new(chunks: usize, nodes: usize, needs: Option<&[Vec<u32>]>, config: SchedulerConfig) -> Self {
        let mut scheduler = Scheduler {
            rng: Rng(config.seed),
            config,
            chunks,
            nodes: Vec::with_capacity(nodes),
            holders: vec![IndexedSet::default(); chunks],
            needers: vec![IndexSet::default(); chunks],
            open: 0,
            free: IndexedSet::default(),
            dirty: IndexedSet::default(),
            turn: 0,
            unseeded: BTreeSet::new(),
            origin_busy: 0,
            origin_inflight: IndexSet::default(),
            origin_done: IndexSet::default(),
            origin_refetches: 0,
            origin_failures: IndexMap::default(),
            failed: BTreeMap::new(),
            lost: Vec::new(),
            active: IndexSet::default(),
        };
        for node in 0..nodes as u32 {
            let wanted: Vec<u32> = match needs {
                None => (0..chunks as u32).collect(),
                Some(needs) => needs.get(node as usize).cloned().unwrap_or_default(),
            };
            let mut state = NodeState {
                alive: true,
                ..NodeState::default()
            };
            for &chunk in &wanted {
                if !state.wanting.contains(chunk) {
                    state.wanting.add(chunk);
                    scheduler.needers[chunk as usize].insert(node);
                    scheduler.open += 1;
                }
            }
            scheduler.nodes.push(state);
            scheduler.free.add(node);
            scheduler.dirty.add(node);
        }
        scheduler.unseeded = (0..chunks as u32)
            .filter(|&c| !scheduler.needers[c as usize].is_empty())
            .collect();
        scheduler
    }

    // --- facts ---------------------------------------------------------------------------------------

    /// `node` holds `chunks` (a cache hit, a resumed part, or a finished transfer).
    pub fn held(&mut self, node: u32, chunks: &[u32]) {
        if !self.alive(node) {
            return;
        }
        for &chunk in chunks {
            self.holders[chunk as usize].add(node);
            let state = &mut self.nodes[node as usize];
            state.wanting.remove(chunk);
            let usable = state.penalties < self.config.max_penalties;
            if self.needers[chunk as usize].remove(&node) && !self.failed.contains_key(&chunk) {
                self.open -= 1;
            }
            if usable {
                self.unseeded.remove(&chunk);
            }
        }
    }

    /// A transfer completed and verified. Returns its duplicates, now losers (the engine shuts them out).
    pub fn finished(&mut self, transfer: Transfer) -> Vec<Transfer> {
        self.release(transfer);
        let mut losers = Vec::new();
        if self.alive(transfer.node) {
            let others = self.nodes[transfer.node as usize]
                .inflight
                .remove(&transfer.chunk)
                .unwrap_or_default();
            losers = others.into_iter().filter(|t| *t != transfer).collect();
        }
        for loser in &losers {
            self.release(*loser);
        }
        if transfer.from_origin() {
            self.origin_done.insert(transfer.chunk);
        }
        self.held(transfer.node, &[transfer.chunk]);
        losers
    }

    /// A transfer failed. A late report of a transfer already dropped (lost node, endgame loser) is
    /// ignored.
    pub fn failed(&mut self, transfer: Transfer, kind: FailureKind, reason: &str) {
        if !self.active.contains(&transfer) {
            return;
        }
        self.release(transfer);
        if !self.alive(transfer.node) {
            return;
        }
        let state = &mut self.nodes[transfer.node as usize];
        if let Some(transfers) = state.inflight.get_mut(&transfer.chunk) {
            transfers.retain(|t| *t != transfer);
            if transfers.is_empty() {
                state.inflight.remove(&transfer.chunk);
            }
        }
        if kind == FailureKind::Integrity
            && let Some(source) = transfer.source
        {
            self.penalize(source);
        }
        if kind == FailureKind::Origin && transfer.from_origin() {
            let failures = self.origin_failures.entry(transfer.chunk).or_default();
            *failures += 1;
            if *failures >= self.config.max_origin_failures {
                self.fail_chunk(transfer.chunk, reason);
                return;
            }
        }
        if kind == FailureKind::Fatal {
            self.fail_chunk(transfer.chunk, reason);
            return;
        }
        let state = &mut self.nodes[transfer.node as usize];
        if !state.inflight.contains_key(&transfer.chunk)
            && !self.holders[transfer.chunk as usize].contains(transfer.node)
        {
            state.wanting.add(transfer.chunk);
        }
        self.reseed_if_orphaned(transfer.chunk);
    }

    /// `node` is gone. Returns the transfers that were running from it or to it (to forget).
    pub fn node_lost(&mut self, node: u32) -> Vec<Transfer> {
        if !self.alive(node) {
            return Vec::new();
        }
        self.lost.push(node);
        self.free.remove(node);
        let state = std::mem::take(&mut self.nodes[node as usize]);
        let mut dropped: Vec<Transfer> = state.inflight.into_values().flatten().collect();
        for transfer in dropped.clone() {
            self.release(transfer);
        }
        for other in 0..self.nodes.len() {
            if !self.nodes[other].alive {
                continue;
            }
            let chunks: Vec<u32> = self.nodes[other].inflight.keys().copied().collect();
            for chunk in chunks {
                let transfers = self.nodes[other].inflight.get(&chunk).cloned().unwrap_or_default();
                let (from_lost, kept): (Vec<Transfer>, Vec<Transfer>) =
                    transfers.into_iter().partition(|t| t.source == Some(node));
                for transfer in &from_lost {
                    self.release(*transfer);
                }
                dropped.extend(from_lost);
                if kept.is_empty() {
                    self.nodes[other].inflight.remove(&chunk);
                    self.nodes[other].wanting.add(chunk);
                } else {
                    self.nodes[other].inflight.insert(chunk, kept);
                }
            }
        }
        for chunk in 0..self.chunks as u32 {
            if self.needers[chunk as usize].remove(&node) && !self.failed.contains_key(&chunk) {
                self.open -= 1;
            }
            if self.holders[chunk as usize].contains(node) {
                self.holders[chunk as usize].remove(node);
                self.reseed_if_orphaned(chunk);
            }
        }
        dropped
    }

    // --- decisions -----------------------------------------------------------------------------------

    /// Transfers to start now, within every slot limit.
    pub fn next_transfers(&mut self) -> Vec<Transfer> {
        let mut started = self.origin_transfers();
        started.extend(self.peer_transfers());
        started
    }

    /// Every surviving node holds every chunk it needs, or what is left has failed for good.
    pub fn done(&self) -> bool {
        self.open == 0
    }

    pub fn active(&self) -> Vec<Transfer> {
        let mut active: Vec<Transfer> = self.active.iter().copied().collect();
        active.sort();
        active
    }

    pub fn origin_busy(&self) -> u32 {
        self.origin_busy
    }

    pub fn origin_refetches(&self) -> u64 {
        self.origin_refetches
    }

    pub fn failed_chunks(&self) -> &BTreeMap<u32, String> {
        &self.failed
    }

    pub fn lost_nodes(&self) -> &[u32] {
        &self.lost
    }

    pub fn alive(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some_and(|n| n.alive)
    }

    pub fn holders(&self, chunk: u32) -> Vec<u32> {
        let mut holders = self.holders[chunk as usize].items.clone();
        holders.sort_unstable();
        holders
    }

    pub fn node_stats(&self, node: u32) -> NodeStats {
        let state = &self.nodes[node as usize];
        NodeStats {
            downloads: state.downloads,
            uploads: state.uploads,
            origin_fetches: state.origin_fetches,
            penalties: state.penalties,
            wanting: state.wanting.len(),
            inflight: state.inflight.len(),
        }
    }

    /// Whether `node` needs nothing more (holds or has given up on everything it needed).
    pub fn node_done(&self, node: u32) -> bool {
        self.alive(node)
            && self.nodes[node as usize].wanting.len() == 0
            && self.nodes[node as usize].inflight.is_empty()
    }

    fn origin_transfers(&mut self) -> Vec<Transfer> {
        let mut started = Vec::new();
        let candidates_budget = 4 * self.config.origin_parallelism as usize;
        let chunks: Vec<u32> = self.unseeded.iter().copied().take(candidates_budget).collect();
        for chunk in chunks {
            if self.origin_busy >= self.config.origin_parallelism || self.free.len() == 0 {
                break;
            }
            // Among (a window of) the free nodes that need it, the one with the fewest origin fetches.
            let node = self
                .free
                .window(ORIGIN_CANDIDATES, &mut self.rng)
                .filter(|&n| self.nodes[n as usize].wanting.contains(chunk))
                .min_by_key(|&n| {
                    (
                        self.nodes[n as usize].origin_fetches,
                        self.nodes[n as usize].downloads,
                        n,
                    )
                });
            let Some(node) = node else { continue };
            if self.origin_done.contains(&chunk) || self.holders[chunk as usize].len() > 0 {
                self.origin_refetches += 1;
            }
            started.push(self.start(Transfer {
                chunk,
                node,
                source: None,
                duplicate: false,
            }));
        }
        started
    }

    fn peer_transfers(&mut self) -> Vec<Transfer> {
        let mut started = Vec::new();
        for node in self.nodes_to_scan() {
            while self.nodes[node as usize].downloads < self.config.download_slots {
                let Some(transfer) = self.choose(node) else { break };
                started.push(self.start(transfer));
            }
        }
        started
    }

    fn nodes_to_scan(&mut self) -> Vec<u32> {
        let mut scan: Vec<u32> = std::mem::take(&mut self.dirty).items;
        scan.retain(|&n| self.free.contains(n));
        let free = &self.free.items;
        if !free.is_empty() {
            let take = self.config.scan_budget.min(free.len());
            self.turn %= free.len();
            for step in 0..take {
                let node = free[(self.turn + step) % free.len()];
                if !scan.contains(&node) {
                    scan.push(node);
                }
            }
            self.turn = (self.turn + take) % free.len();
        }
        scan.sort_by_key(|&n| (self.nodes[n as usize].downloads, n));
        scan
    }

    fn choose(&mut self, node: u32) -> Option<Transfer> {
        if self.nodes[node as usize].wanting.len() > 0 {
            let sample = self.nodes[node as usize]
                .wanting
                .window(self.config.sample_size, &mut self.rng);
            let rarest = rank(sample, &self.holders, &self.failed);
            let (chunk, source) = self.first_with_source(node, &rarest, &[])?;
            return Some(Transfer {
                chunk,
                node,
                source: Some(source),
                duplicate: false,
            });
        }
        let state = &self.nodes[node as usize];
        if !self.config.endgame || state.inflight.is_empty() {
            return None;
        }
        let single: Vec<u32> = state
            .inflight
            .iter()
            .filter(|(_, ts)| ts.len() == 1 && !ts[0].from_origin())
            .map(|(c, _)| *c)
            .take(self.config.sample_size)
            .collect();
        let busy: Vec<u32> = single.iter().filter_map(|c| state.inflight[c][0].source).collect();
        let rarest = rank(single.iter().copied(), &self.holders, &self.failed);
        let (chunk, source) = self.first_with_source(node, &rarest, &busy)?;
        Some(Transfer {
            chunk,
            node,
            source: Some(source),
            duplicate: true,
        })
    }

    /// The rarest chunk that has a free holder, and that holder. Only the rarest few are tried: one of
    /// them almost always has a free holder.
    fn first_with_source(&mut self, node: u32, rarest: &Rarest, exclude: &[u32]) -> Option<(u32, u32)> {
        rarest.chunks().find_map(|chunk| {
            self.least_busy_holder(chunk, node, exclude)
                .map(|source| (chunk, source))
        })
    }

    fn least_busy_holder(&mut self, chunk: u32, node: u32, exclude: &[u32]) -> Option<u32> {
        let (nodes, config) = (&self.nodes, &self.config);
        self.holders[chunk as usize]
            .window(16, &mut self.rng)
            .filter(|&h| {
                let state = &nodes[h as usize];
                h != node
                    && !exclude.contains(&h)
                    && state.alive
                    && state.uploads < config.upload_slots
                    && state.penalties < config.max_penalties
            })
            .min_by_key(|&h| (nodes[h as usize].uploads, h))
    }

    // --- bookkeeping ---------------------------------------------------------------------------------

    fn usable(&self, chunk: u32) -> bool {
        self.holders[chunk as usize]
            .items
            .iter()
            .any(|&h| self.nodes[h as usize].alive && self.nodes[h as usize].penalties < self.config.max_penalties)
    }

    fn reseed_if_orphaned(&mut self, chunk: u32) {
        if !self.needers[chunk as usize].is_empty()
            && !self.failed.contains_key(&chunk)
            && !self.origin_inflight.contains(&chunk)
            && !self.usable(chunk)
        {
            self.unseeded.insert(chunk);
        }
    }

    fn penalize(&mut self, node: u32) {
        if !self.alive(node) {
            return;
        }
        self.nodes[node as usize].penalties += 1;
        if self.nodes[node as usize].penalties == self.config.max_penalties {
            for chunk in 0..self.chunks as u32 {
                if self.holders[chunk as usize].contains(node) {
                    self.reseed_if_orphaned(chunk);
                }
            }
        }
    }

    fn fail_chunk(&mut self, chunk: u32, reason: &str) {
        if self.failed.contains_key(&chunk) {
            return;
        }
        self.failed.insert(chunk, reason.to_owned());
        self.open -= self.needers[chunk as usize].len();
        self.unseeded.remove(&chunk);
    }

    fn start(&mut self, transfer: Transfer) -> Transfer {
        self.active.insert(transfer);
        let state = &mut self.nodes[transfer.node as usize];
        state.wanting.remove(transfer.chunk);
        state.inflight.entry(transfer.chunk).or_default().push(transfer);
        state.downloads += 1;
        if state.downloads >= self.config.download_slots {
            self.free.remove(transfer.node);
        }
        match transfer.source {
            None => {
                state.origin_fetches += 1;
                self.origin_busy += 1;
                self.origin_inflight.insert(transfer.chunk);
                self.unseeded.remove(&transfer.chunk);
            }
            Some(source) => self.nodes[source as usize].uploads += 1,
        }
        transfer
    }

    /// Frees a transfer's slots, once.
    fn release(&mut self, transfer: Transfer) {
        if !self.active.remove(&transfer) {
            return;
        }
        if self.alive(transfer.node) {
            self.nodes[transfer.node as usize].downloads -= 1;
            self.free.add(transfer.node);
            self.dirty.add(transfer.node);
        }
        match transfer.source {
            None => {
                self.origin_busy -= 1;
                self.origin_inflight.remove(&transfer.chunk);
                self.reseed_if_orphaned(transfer.chunk);
            }
            Some(source) => {
                if self.alive(source) {
                    self.nodes[source as usize].uploads -= 1;
                }
            }
        }
    }
}
