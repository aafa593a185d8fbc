//! The transfer scheduler: a pure state machine (no I/O, no clock), in Rust for speed at scale.
//!
//! Chunks and nodes are dense indices (`0..chunks`, `0..nodes`); the Python side maps names to them.
//! Inputs are facts (a node holds chunks, a transfer finished or failed, a node was lost); the output
//! of [`Scheduler::next_transfers`] is the transfers to start now. Policy (see `docs/runtime.md`):
//! origin once and spread out; rarest first from the least busy holder, pulled by nodes whose download
//! slot freed and pushed by holders whose upload slot freed; endgame duplicates; penalties for peers that
//! serve bad bytes; lost nodes' transfers requeued and orphaned chunks back to the origin.
//!
//! Every structure is kept up to date incrementally: a decision costs O(sample size) per node looked
//! at, and a call looks only at nodes whose slots changed since the last one (see `peer_transfers`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Keys here are small dense integers (and transfers made of them) chosen by xfd itself, never by an
/// adversary: a multiplicative hash is enough, and several times cheaper than the default SipHash on the
/// scheduler's hottest paths (measured with the scale simulator, `docs/benchmarks.md`).
#[derive(Default)]
pub struct IndexHasher(u64);

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

/// Holders (for a pull) or needers (for a push) of one chunk looked at to pick the other end of a
/// transfer: a window at a random position, so a look costs the same however many there are.
const CANDIDATES_PER_CHUNK: usize = 16;

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

/// A transfer handed to a node, and when the node starts it: at once, or as a follow-up, the moment
/// the transfer `after` (same node, same source) ends, on the slots that one held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub transfer: Transfer,
    pub after: Option<Transfer>,
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

impl FailureKind {
    /// Every kind; `xfd.scheduler.FailureKind` names the same (`tests/test_one_home.py` checks).
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Integrity,
        FailureKind::Peer,
        FailureKind::Origin,
        FailureKind::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Integrity => "integrity",
            FailureKind::Peer => "peer",
            FailureKind::Origin => "origin",
            FailureKind::Fatal => "fatal",
        }
    }

    pub fn parse(name: &str) -> Option<FailureKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub origin_parallelism: u32,
    pub download_slots: u32,
    pub upload_slots: u32,
    /// Chunks looked at per decision (rarest-first among a random window of this many).
    pub sample_size: usize,
    /// Nodes with free slots looked at in turn on a call of [`Scheduler::next_transfers`] that brings no
    /// news (no slot freed, no chunk held since the last call: the coordinator's periodic step), so a
    /// node that a sampled look missed is looked at again; a call costs the same whatever the cluster
    /// size.
    pub scan_budget: usize,
    /// Integrity failures after which a node is never a source again.
    pub max_penalties: u32,
    /// Origin failures of one chunk after which it fails for good. Each is already a whole round of
    /// the engine's retries (`origin_attempts` within `origin_timeout`), so a few rounds tell an origin
    /// that is down, or that this cluster's nodes cannot reach, from a passing fault: the run then
    /// ends with the origin's error instead of retrying until its timeout.
    pub max_origin_failures: u32,
    pub endgame: bool,
    /// Follow-ups queued behind each peer transfer: transfers from the same source to the same node
    /// that the node starts by itself, on the same download and upload slots, the moment the one
    /// ahead ends. A freed slot then never waits a round trip to the coordinator (report up, decision,
    /// work down) for its next transfer, and no source's upload slot is held by work that is not
    /// flowing. Only for callers whose nodes run them (a control link does, see
    /// `control::link`): `None` is the caller's default, none for a bare scheduler, whose
    /// [`Scheduler::next_transfers`] are all to start at once.
    pub follow_ups: Option<u32>,
    pub seed: u64,
}

/// The manifest's defaults for its settings; the rest are the scheduler's own.
impl Default for SchedulerConfig {
    fn default() -> Self {
        use crate::plan::defaults;
        SchedulerConfig {
            origin_parallelism: defaults::origin_parallelism(),
            download_slots: defaults::node_parallelism(),
            upload_slots: defaults::upload_slots(),
            sample_size: 64,
            scan_budget: 16,
            max_penalties: 2,
            max_origin_failures: 3,
            endgame: true,
            follow_ups: None,
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
///
/// Positions are a dense array indexed by item (grown to the largest item added): membership is one
/// array read, not a hash lookup. Items are chunk or node indices, so a set costs 4 bytes per possible
/// item, less than a hash map's entry once a node needs most chunks (the common case), and the
/// scheduler's hot paths stay within a few cache lines (measured in `docs/benchmarks.md`).
#[derive(Clone, Debug, Default)]
struct IndexedSet {
    items: Vec<u32>,
    positions: Vec<u32>,
}

const ABSENT: u32 = u32::MAX;

impl IndexedSet {
    fn add(&mut self, item: u32) {
        let at = item as usize;
        if at >= self.positions.len() {
            self.positions.resize(at + 1, ABSENT);
        }
        if self.positions[at] == ABSENT {
            self.positions[at] = self.items.len() as u32;
            self.items.push(item);
        }
    }

    /// Whether `item` was there.
    fn remove(&mut self, item: u32) -> bool {
        if !self.contains(item) {
            return false;
        }
        let position = std::mem::replace(&mut self.positions[item as usize], ABSENT);
        let last = self.items.pop().expect("non-empty");
        if (position as usize) < self.items.len() {
            self.items[position as usize] = last;
            self.positions[last as usize] = position;
        }
        true
    }

    fn contains(&self, item: u32) -> bool {
        self.positions.get(item as usize).is_some_and(|&p| p != ABSENT)
    }

    /// Empties the set, returning its items (keeps the positions' allocation).
    fn take(&mut self) -> Vec<u32> {
        for &item in &self.items {
            self.positions[item as usize] = ABSENT;
        }
        std::mem::take(&mut self.items)
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
/// `counts[chunk]`: its holders, 0 when it cannot be ranked (no holder, or failed for good).
fn rank(sample: impl Iterator<Item = u32>, counts: &[u32]) -> Rarest {
    let mut rarest = Rarest::default();
    for chunk in sample {
        let count = counts[chunk as usize];
        if count > 0 {
            rarest.offer(count as usize, chunk);
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
    /// Chunks this node holds.
    holding: IndexedSet,
}

pub struct Scheduler {
    config: SchedulerConfig,
    chunks: usize,
    nodes: Vec<NodeState>,
    holders: Vec<IndexedSet>,
    /// Holders per chunk, 0 for a chunk failed for good, in one dense array: ranking a sample reads
    /// one cache line per few chunks instead of one holder set per chunk.
    rank_counts: Vec<u32>,
    needers: Vec<IndexedSet>,
    open: usize,
    free: IndexedSet,
    /// Nodes whose download slot was freed since the last call: each pulls its rarest chunk.
    dirty: IndexedSet,
    /// Free upload slots of the nodes that can serve (alive, not penalized out, holding a chunk). When
    /// it is 0 no peer transfer can start, so looking at nodes would only find busy holders: most calls
    /// of a large, upload-bound run end at once instead (measured in `docs/benchmarks.md`).
    spare_uploads: u64,
    /// Nodes that gained a free upload slot or their first chunk since the last call: each offers its
    /// rarest chunks to free nodes that need them.
    suppliers: IndexedSet,
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
    /// While set, no transfer from the origin starts (see [`Scheduler::hold_origin`]).
    origin_held: bool,
    /// Follow-ups: the transfer queued behind each transfer (running or itself queued), and the
    /// reverse. A queued transfer is in its node's `inflight` but not in `active`, and holds no slot:
    /// it takes over the slots of the one ahead when that one ends.
    queued: IndexMap<Transfer, Transfer>,
    ahead: IndexMap<Transfer, Transfer>,
    /// Running transfers that started (or were promoted from the queue) since the last call: each may
    /// take follow-ups.
    refill: Vec<Transfer>,
    /// Follow-ups promoted since [`Scheduler::take_promoted`] was last called.
    promoted: Vec<Transfer>,
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
            rank_counts: vec![0; chunks],
            needers: vec![IndexedSet::default(); chunks],
            open: 0,
            free: IndexedSet::default(),
            dirty: IndexedSet::default(),
            spare_uploads: 0,
            suppliers: IndexedSet::default(),
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
            origin_held: false,
            queued: IndexMap::default(),
            ahead: IndexMap::default(),
            refill: Vec::new(),
            promoted: Vec::new(),
        };
        for node in 0..nodes as u32 {
            let wanted: Vec<u32> = match needs {
                None => (0..chunks as u32).collect(),
                Some(needs) => needs.get(node as usize).cloned().unwrap_or_default(),
            };
            scheduler.add_node(&wanted);
        }
        scheduler
    }

    /// A node joins the run (one whose agent came up late, or that joined the cluster late) and needs
    /// `needs`; returns its index, the next one. Chunks already failed for good are not wanted again.
    pub fn add_node(&mut self, needs: &[u32]) -> u32 {
        let node = self.nodes.len() as u32;
        let mut state = NodeState {
            alive: true,
            ..NodeState::default()
        };
        for &chunk in needs {
            if state.wanting.contains(chunk) || self.failed.contains_key(&chunk) {
                continue;
            }
            state.wanting.add(chunk);
            self.needers[chunk as usize].add(node);
            self.open += 1;
            self.reseed_if_orphaned(chunk);
        }
        self.nodes.push(state);
        self.free.add(node);
        self.dirty.add(node);
        node
    }

    // --- facts ---------------------------------------------------------------------------------------

    /// `node` holds `chunks` (a cache hit, a resumed part, or a finished transfer).
    pub fn held(&mut self, node: u32, chunks: &[u32]) {
        if !self.alive(node) {
            return;
        }
        for &chunk in chunks {
            if !self.holders[chunk as usize].contains(node) {
                self.holders[chunk as usize].add(node);
                if !self.failed.contains_key(&chunk) {
                    self.rank_counts[chunk as usize] += 1;
                }
                self.gain_holding(node, chunk);
            }
            let state = &mut self.nodes[node as usize];
            state.wanting.remove(chunk);
            let usable = state.penalties < self.config.max_penalties;
            if self.needers[chunk as usize].remove(node) && !self.failed.contains_key(&chunk) {
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
        self.spare_uploads -= self.spare_of(node);
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
            if self.needers[chunk as usize].remove(node) && !self.failed.contains_key(&chunk) {
                self.open -= 1;
            }
            if self.holders[chunk as usize].remove(node) {
                let count = &mut self.rank_counts[chunk as usize];
                *count = count.saturating_sub(1);
                self.reseed_if_orphaned(chunk);
            }
        }
        dropped
    }

    /// Holds back (or lets go) transfers from the origin; peer transfers go on. The coordinator holds
    /// them while nodes are still joining: a unit one of them holds in its cache must not be fetched
    /// from the origin by a node that joined before it.
    pub fn hold_origin(&mut self, held: bool) {
        self.origin_held = held;
    }

    // --- decisions -----------------------------------------------------------------------------------

    /// Transfers to start now, within every slot limit. With follow-ups (see
    /// [`SchedulerConfig::follow_ups`]), ask [`Scheduler::next_assignments`] instead.
    pub fn next_transfers(&mut self) -> Vec<Transfer> {
        let mut started = self.origin_transfers();
        started.extend(self.peer_transfers());
        started
    }

    /// Transfers to start now, then the follow-ups queued behind running transfers, each listed after
    /// the transfer it follows.
    pub fn next_assignments(&mut self) -> Vec<Assignment> {
        let mut assigned: Vec<Assignment> = self
            .next_transfers()
            .into_iter()
            .map(|transfer| Assignment { transfer, after: None })
            .collect();
        self.queue_follow_ups(&mut assigned);
        assigned
    }

    /// The follow-ups that started since the last call (the transfer ahead of each ended), still running.
    pub fn take_promoted(&mut self) -> Vec<Transfer> {
        let mut promoted = std::mem::take(&mut self.promoted);
        promoted.retain(|t| self.active.contains(t));
        promoted
    }

    /// Every surviving node holds every chunk it needs, or what is left has failed for good.
    pub fn done(&self) -> bool {
        self.open == 0
    }

    /// Whether any transfer is running: O(1), unlike [`Scheduler::active`] (a sorted copy), for callers
    /// that ask at every step.
    pub fn is_busy(&self) -> bool {
        !self.active.is_empty()
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
        if self.origin_held || self.origin_busy >= self.config.origin_parallelism || self.unseeded.is_empty() {
            return started; // the common case on a busy origin: no copying of candidates
        }
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

    /// Looks only where something changed, since a look elsewhere finds the same busy holders as last
    /// time: suppliers (a freed upload slot, a first chunk) offer their rarest chunks to free nodes that
    /// need them, and nodes whose download slot was freed take the rarest chunk they can get. Nodes in
    /// turn (`scan_budget`) are looked at only on calls that bring no news (the coordinator's periodic
    /// step), and every free node when nothing at all is running, so a sampling miss never stalls a run.
    fn peer_transfers(&mut self) -> Vec<Transfer> {
        let mut started = Vec::new();
        if self.spare_uploads == 0 {
            return started; // every holder is busy: news waits for the next call
        }
        let suppliers = self.suppliers.take();
        let mut pullers = self.dirty.take();
        let news = !suppliers.is_empty() || !pullers.is_empty();
        for source in suppliers {
            while self.spare_of(source) > 0 {
                let Some(transfer) = self.offer(source) else { break };
                started.push(self.start(transfer));
            }
        }
        if self.active.is_empty() {
            self.take_turns(self.free.len(), &mut pullers);
        } else if !news {
            self.take_turns(self.config.scan_budget, &mut pullers);
        }
        pullers.retain(|&n| self.free.contains(n));
        pullers.sort_by_key(|&n| (self.nodes[n as usize].downloads, n));
        for node in pullers {
            while self.spare_uploads > 0 && self.nodes[node as usize].downloads < self.config.download_slots {
                let Some(transfer) = self.choose(node) else { break };
                started.push(self.start(transfer));
            }
        }
        started
    }

    fn follow_up_depth(&self) -> u32 {
        self.config.follow_ups.unwrap_or(0)
    }

    /// Fills the queue behind each transfer that started or was promoted since the last call.
    fn queue_follow_ups(&mut self, assigned: &mut Vec<Assignment>) {
        let depth = self.follow_up_depth();
        for head in std::mem::take(&mut self.refill) {
            let Some(source) = head.source.filter(|_| self.active.contains(&head)) else {
                continue;
            };
            let (mut tail, mut queued) = (head, 0);
            while let Some(&next) = self.queued.get(&tail) {
                (tail, queued) = (next, queued + 1);
            }
            while queued < depth {
                let Some(chunk) = self.follow_up_chunk(head.node, source) else {
                    break;
                };
                let follow = Transfer {
                    chunk,
                    node: head.node,
                    source: Some(source),
                    duplicate: false,
                };
                self.enqueue(tail, follow);
                assigned.push(Assignment {
                    transfer: follow,
                    after: Some(tail),
                });
                (tail, queued) = (follow, queued + 1);
            }
        }
    }

    /// The rarest chunk (in a sample) that `source` holds and `node` wants, while `node` wants more
    /// than its download slots: with fewer left, each freed slot takes one from the least busy holder
    /// and the endgame duplicates the slow ones, where a follow-up would wait behind its source.
    fn follow_up_chunk(&mut self, node: u32, source: u32) -> Option<u32> {
        let (nodes, holders, rng) = (&self.nodes, &self.holders, &mut self.rng);
        let (wants, serves) = (&nodes[node as usize], &nodes[source as usize]);
        if !serves.alive
            || serves.penalties >= self.config.max_penalties
            || wants.wanting.len() <= self.config.download_slots as usize
        {
            return None;
        }
        let sample = self.config.sample_size;
        let rarest = if serves.holding.len() <= wants.wanting.len() {
            let held = serves.holding.window(sample, rng);
            rank(held.filter(|&c| wants.wanting.contains(c)), &self.rank_counts)
        } else {
            let wanted = wants.wanting.window(sample, rng);
            rank(
                wanted.filter(|&c| holders[c as usize].contains(source)),
                &self.rank_counts,
            )
        };
        rarest.chunks().next()
    }

    /// Queues `follow` behind `tail`: its chunk is in flight to its node, no slot is taken.
    fn enqueue(&mut self, tail: Transfer, follow: Transfer) {
        let state = &mut self.nodes[follow.node as usize];
        state.wanting.remove(follow.chunk);
        state.inflight.entry(follow.chunk).or_default().push(follow);
        self.queued.insert(tail, follow);
        self.ahead.insert(follow, tail);
    }

    /// Takes `transfer` out of the queue it waits in, if it does; whether it did.
    fn unqueue(&mut self, transfer: Transfer) -> bool {
        let Some(before) = self.ahead.remove(&transfer) else {
            return false;
        };
        match self.queued.remove(&transfer) {
            Some(next) => {
                self.queued.insert(before, next);
                self.ahead.insert(next, before);
            }
            None => {
                self.queued.remove(&before);
            }
        }
        true
    }

    /// Adds the next `budget` free nodes in turn to `scan`.
    fn take_turns(&mut self, budget: usize, scan: &mut Vec<u32>) {
        let free = &self.free.items;
        if free.is_empty() {
            return;
        }
        let take = budget.min(free.len());
        self.turn %= free.len();
        for step in 0..take {
            let node = free[(self.turn + step) % free.len()];
            if !scan.contains(&node) {
                scan.push(node);
            }
        }
        self.turn = (self.turn + take) % free.len();
    }

    fn choose(&mut self, node: u32) -> Option<Transfer> {
        if self.nodes[node as usize].wanting.len() > 0 {
            let sample = self.nodes[node as usize]
                .wanting
                .window(self.config.sample_size, &mut self.rng);
            let rarest = rank(sample, &self.rank_counts);
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
        // Only running transfers: a queued follow-up starts by itself.
        let single: Vec<u32> = state
            .inflight
            .iter()
            .filter(|(_, ts)| ts.len() == 1 && !ts[0].from_origin() && self.active.contains(&ts[0]))
            .map(|(c, _)| *c)
            .take(self.config.sample_size)
            .collect();
        let busy: Vec<u32> = single.iter().filter_map(|c| state.inflight[c][0].source).collect();
        let rarest = rank(single.iter().copied(), &self.rank_counts);
        let (chunk, source) = self.first_with_source(node, &rarest, &busy)?;
        Some(Transfer {
            chunk,
            node,
            source: Some(source),
            duplicate: true,
        })
    }

    /// Push: the rarest of `source`'s chunks (in a sample) that a free node needs, to the least busy
    /// such node.
    fn offer(&mut self, source: u32) -> Option<Transfer> {
        let sample = self.nodes[source as usize]
            .holding
            .window(self.config.sample_size, &mut self.rng);
        let rarest = rank(sample, &self.rank_counts);
        rarest.chunks().find_map(|chunk| {
            let (nodes, free) = (&self.nodes, &self.free);
            self.needers[chunk as usize]
                .window(CANDIDATES_PER_CHUNK, &mut self.rng)
                .filter(|&n| n != source && free.contains(n) && nodes[n as usize].wanting.contains(chunk))
                .min_by_key(|&n| (nodes[n as usize].downloads, n))
                .map(|node| Transfer {
                    chunk,
                    node,
                    source: Some(source),
                    duplicate: false,
                })
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
            .window(CANDIDATES_PER_CHUNK, &mut self.rng)
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
        if self.needers[chunk as usize].len() > 0
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
        self.change_serving(node, |state| state.penalties += 1);
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
        self.rank_counts[chunk as usize] = 0;
        self.open -= self.needers[chunk as usize].len();
        self.unseeded.remove(&chunk);
    }

    fn start(&mut self, transfer: Transfer) -> Transfer {
        self.active.insert(transfer);
        if self.follow_up_depth() > 0 && !transfer.from_origin() && !transfer.duplicate {
            self.refill.push(transfer);
        }
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
            Some(source) => self.change_serving(source, |state| state.uploads += 1),
        }
        transfer
    }

    /// Frees a transfer's slots, once, or hands them to the follow-up queued behind it, which its node
    /// starts the moment this one ends. A follow-up that never started holds no slot.
    fn release(&mut self, transfer: Transfer) {
        if self.unqueue(transfer) || !self.active.remove(&transfer) {
            return;
        }
        if let Some(next) = self.queued.remove(&transfer) {
            self.ahead.remove(&next);
            self.active.insert(next);
            self.refill.push(next);
            self.promoted.push(next);
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
                    self.change_serving(source, |state| state.uploads -= 1);
                    self.suppliers.add(source);
                }
            }
        }
    }

    fn gain_holding(&mut self, node: u32, chunk: u32) {
        self.change_serving(node, |state| state.holding.add(chunk));
        if self.nodes[node as usize].holding.len() == 1 {
            self.suppliers.add(node);
        }
    }

    /// Applies `change` to `node`'s state, keeping `spare_uploads` in step with what it can serve.
    fn change_serving(&mut self, node: u32, change: impl FnOnce(&mut NodeState)) {
        self.spare_uploads -= self.spare_of(node);
        change(&mut self.nodes[node as usize]);
        self.spare_uploads += self.spare_of(node);
    }

    /// The upload slots `node` could give right now (0 if it cannot serve at all).
    fn spare_of(&self, node: u32) -> u64 {
        let state = &self.nodes[node as usize];
        let serves = state.alive && state.holding.len() > 0 && state.penalties < self.config.max_penalties;
        if serves {
            u64::from(self.config.upload_slots.saturating_sub(state.uploads))
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn recomputed_spare(scheduler: &Scheduler) -> u64 {
        (0..scheduler.nodes.len() as u32).map(|n| scheduler.spare_of(n)).sum()
    }

    #[test]
    fn indexed_set_adds_removes_and_takes() {
        let mut set = IndexedSet::default();
        for item in [5, 1, 9, 1, 5] {
            set.add(item);
        }
        assert_eq!(set.len(), 3);
        assert!(set.remove(1));
        assert!(!set.remove(1));
        assert!(!set.contains(1) && set.contains(5) && set.contains(9) && !set.contains(1000));
        let mut taken = set.take();
        taken.sort_unstable();
        assert_eq!(taken, vec![5, 9]);
        assert_eq!(set.len(), 0);
        assert!(!set.contains(5));
        set.add(9);
        assert!(set.contains(9) && set.len() == 1);
    }

    /// Nodes that run follow-ups as a control link does: a follow-up starts when the transfer ahead of
    /// it ends (or at once if that one already has), every transfer ends once.
    #[derive(Default)]
    struct Nodes {
        running: Vec<Transfer>,
        /// The follow-up waiting behind each transfer, running or waiting itself.
        behind: HashMap<Transfer, Transfer>,
        /// Times each transfer was assigned and ended (a failed one may be assigned again).
        assigned: HashMap<Transfer, u32>,
        ended: HashMap<Transfer, u32>,
        origin_fetches: HashMap<u32, u32>,
    }

    impl Nodes {
        fn take(&mut self, assignments: Vec<Assignment>) {
            for Assignment { transfer, after } in assignments {
                assert!(!self.live(transfer), "{transfer:?} assigned while it runs");
                *self.assigned.entry(transfer).or_default() += 1;
                if transfer.from_origin() {
                    *self.origin_fetches.entry(transfer.chunk).or_default() += 1;
                }
                match after {
                    Some(ahead) if self.live(ahead) => {
                        assert_eq!((ahead.node, ahead.source), (transfer.node, transfer.source));
                        assert!(self.behind.insert(ahead, transfer).is_none());
                    }
                    _ => self.running.push(transfer),
                }
            }
        }

        fn live(&self, transfer: Transfer) -> bool {
            self.assigned.get(&transfer).copied().unwrap_or(0) > self.ended.get(&transfer).copied().unwrap_or(0)
        }

        /// `transfer` ended on its node (reported, or shut out): what waited behind it starts.
        fn end(&mut self, transfer: Transfer) {
            assert!(self.live(transfer), "{transfer:?} ended twice");
            *self.ended.entry(transfer).or_default() += 1;
            self.running.retain(|t| *t != transfer);
            if let Some(next) = self.behind.remove(&transfer) {
                self.running.push(next);
            }
        }

        /// Transfers the scheduler dropped (a lost node's): they will never report.
        fn forget(&mut self, dropped: &[Transfer]) {
            for transfer in dropped {
                *self.ended.entry(*transfer).or_default() += 1;
                self.running.retain(|t| t != transfer);
                self.behind.remove(transfer);
            }
            self.behind.retain(|_, next| !dropped.contains(next));
        }
    }

    fn with_follow_ups(seed: u64) -> SchedulerConfig {
        SchedulerConfig {
            download_slots: 2,
            upload_slots: 2,
            origin_parallelism: 3,
            follow_ups: Some(1),
            seed,
            ..SchedulerConfig::default()
        }
    }

    /// Through random runs with failures and a lost node: the scheduler's running transfers are exactly
    /// those the nodes run, slots are never over-counted, each transfer ends once, the queues end empty.
    #[test]
    fn follow_ups_run_where_the_scheduler_counts_them_through_random_runs() {
        let mut follow_ups = 0;
        for seed in 0..40u64 {
            let mut rng = Rng(seed | 1);
            let mut scheduler = Scheduler::new(40, 6, None, with_follow_ups(seed));
            let mut nodes = Nodes::default();
            scheduler.held(0, &[0, 1]);
            let mut steps = 0;
            while !scheduler.done() {
                steps += 1;
                assert!(steps < 20_000, "seed {seed}: no progress");
                let assigned = scheduler.next_assignments();
                follow_ups += assigned.iter().filter(|a| a.after.is_some()).count();
                nodes.take(assigned);
                let mut running = nodes.running.clone();
                running.sort();
                assert_eq!(scheduler.active(), running, "seed {seed}");
                assert_eq!(scheduler.spare_uploads, recomputed_spare(&scheduler), "seed {seed}");
                for node in 0..6 {
                    assert!(scheduler.node_stats(node).downloads <= 2, "seed {seed}");
                }
                assert!(!running.is_empty(), "seed {seed}: stalled");
                let transfer = running[rng.below(running.len())];
                match rng.below(10) {
                    0 => {
                        scheduler.failed(transfer, FailureKind::Peer, "busy");
                        nodes.end(transfer);
                    }
                    1 if steps == 7 && transfer.node != 0 => {
                        let dropped = scheduler.node_lost(transfer.node);
                        nodes.forget(&dropped);
                    }
                    _ => {
                        let losers = scheduler.finished(transfer);
                        nodes.end(transfer);
                        losers.into_iter().for_each(|loser| nodes.end(loser));
                    }
                }
            }
            assert!(scheduler.queued.is_empty() && scheduler.ahead.is_empty(), "seed {seed}");
            assert!(nodes.behind.is_empty() && nodes.running.is_empty(), "seed {seed}");
            assert_eq!(nodes.ended, nodes.assigned, "seed {seed}: every transfer ends once");
        }
        assert!(follow_ups > 1000, "follow-ups were queued: {follow_ups}");
    }

    /// A run without failures fetches each chunk from the origin once, follow-ups or not.
    #[test]
    fn follow_ups_fetch_each_chunk_from_the_origin_once() {
        let mut rng = Rng(3);
        let mut scheduler = Scheduler::new(30, 8, None, with_follow_ups(3));
        let mut nodes = Nodes::default();
        while !scheduler.done() {
            nodes.take(scheduler.next_assignments());
            let transfer = nodes.running[rng.below(nodes.running.len())];
            let losers = scheduler.finished(transfer);
            nodes.end(transfer);
            losers.into_iter().for_each(|loser| nodes.end(loser));
        }
        assert_eq!(nodes.origin_fetches.len(), 30);
        assert!(
            nodes.origin_fetches.values().all(|&n| n == 1),
            "{:?}",
            nodes.origin_fetches
        );
        assert_eq!(scheduler.origin_refetches(), 0);
    }

    /// Node 0 holds every chunk and serves node 1: one transfer per slot, one follow-up behind each.
    fn serving_with_follow_ups() -> (Scheduler, Vec<Assignment>) {
        let mut scheduler = Scheduler::new(20, 3, None, with_follow_ups(1));
        scheduler.held(0, &(0..20).collect::<Vec<u32>>());
        scheduler.node_lost(2);
        let assigned = scheduler.next_assignments();
        (scheduler, assigned)
    }

    #[test]
    fn a_follow_up_takes_over_the_slots_of_the_transfer_ahead() {
        let (mut scheduler, assigned) = serving_with_follow_ups();
        let (heads, queued): (Vec<Assignment>, Vec<Assignment>) = assigned.into_iter().partition(|a| a.after.is_none());
        assert_eq!((heads.len(), queued.len()), (2, 2), "{heads:?} {queued:?}");
        for follow in &queued {
            let ahead = follow.after.unwrap();
            assert!(heads.iter().any(|h| h.transfer == ahead));
            assert_eq!((follow.transfer.node, follow.transfer.source), (1, Some(0)));
            assert_ne!(follow.transfer.chunk, ahead.chunk);
        }
        let (downloads, uploads) = (scheduler.node_stats(1).downloads, scheduler.node_stats(0).uploads);
        assert_eq!((downloads, uploads), (2, 2));
        assert_eq!(
            scheduler.node_stats(1).inflight,
            4,
            "queued chunks are in flight, not wanted"
        );

        scheduler.finished(heads[0].transfer);
        let follow = queued.iter().find(|f| f.after == Some(heads[0].transfer)).unwrap();
        assert!(scheduler.active().contains(&follow.transfer), "promoted");
        assert_eq!(scheduler.take_promoted(), vec![follow.transfer]);
        assert_eq!(scheduler.node_stats(1).downloads, 2, "the same slot, still taken");
        assert_eq!(scheduler.node_stats(0).uploads, 2);
        let refilled = scheduler.next_assignments();
        assert_eq!(
            refilled.len(),
            1,
            "the promoted one gets a follow-up of its own: {refilled:?}"
        );
        assert_eq!(refilled[0].after, Some(follow.transfer));
    }

    /// The source of queued follow-ups is lost: they are dropped with the transfers ahead of them, and
    /// their chunks are decided again (here, from the origin: nobody else holds them).
    #[test]
    fn follow_ups_from_a_lost_source_are_dropped_and_decided_again() {
        let (mut scheduler, assigned) = serving_with_follow_ups();
        let dropped = scheduler.node_lost(0);
        let mut expected: Vec<Transfer> = assigned.iter().map(|a| a.transfer).collect();
        let mut dropped_sorted = dropped.clone();
        expected.sort();
        dropped_sorted.sort();
        assert_eq!(dropped_sorted, expected, "every transfer from it, queued ones too");
        assert!(scheduler.queued.is_empty() && scheduler.ahead.is_empty());
        assert!(scheduler.take_promoted().is_empty(), "nothing started in a freed slot");
        assert_eq!(scheduler.node_stats(1).downloads, 0);
        assert_eq!(scheduler.node_stats(1).wanting, 20);
        let again = scheduler.next_assignments();
        assert!(!again.is_empty() && again.iter().all(|a| a.transfer.from_origin() && a.transfer.node == 1));
    }

    /// A node with follow-ups queued is lost: they are dropped, the source's slots come back whole, and
    /// the chunks go to another node that needs them.
    #[test]
    fn follow_ups_of_a_lost_node_are_dropped_and_its_source_serves_others() {
        let mut scheduler = Scheduler::new(20, 3, None, with_follow_ups(1));
        scheduler.held(0, &(0..20).collect::<Vec<u32>>());
        let assigned = scheduler.next_assignments();
        let to_one: Vec<Transfer> = assigned.iter().map(|a| a.transfer).filter(|t| t.node == 1).collect();
        assert!(
            assigned.iter().any(|a| a.after.is_some() && a.transfer.node == 1),
            "{assigned:?}"
        );
        let mut dropped = scheduler.node_lost(1);
        dropped.sort();
        let mut expected = to_one.clone();
        expected.sort();
        assert_eq!(dropped, expected);
        assert_eq!(scheduler.spare_uploads, recomputed_spare(&scheduler));
        assert!(scheduler.ahead.keys().all(|t| t.node == 2) && scheduler.queued.keys().all(|t| t.node == 2));
        let again = scheduler.next_assignments();
        assert!(again.iter().all(|a| a.transfer.node == 2), "{again:?}");
        assert!(
            again.iter().any(|a| a.after.is_none()),
            "node 0's freed upload slot serves node 2"
        );
    }

    /// The spare upload count is kept incrementally through every kind of fact; a drift would make
    /// the scheduler skip looks it should make (or make looks that cannot succeed).
    #[test]
    fn spare_uploads_match_a_recount_through_random_runs() {
        for seed in 0..40u64 {
            let mut rng = Rng(seed | 1);
            let config = SchedulerConfig {
                download_slots: 2,
                upload_slots: 2,
                origin_parallelism: 3,
                seed,
                ..SchedulerConfig::default()
            };
            let mut scheduler = Scheduler::new(12, 6, None, config);
            scheduler.held(0, &[0, 1]);
            let mut steps = 0;
            while !scheduler.done() {
                steps += 1;
                assert!(steps < 10_000, "seed {seed}: no progress");
                scheduler.next_transfers();
                assert_eq!(scheduler.spare_uploads, recomputed_spare(&scheduler), "seed {seed}");
                let active = scheduler.active();
                assert!(!active.is_empty(), "seed {seed}: stalled");
                let transfer = active[rng.below(active.len())];
                match rng.below(10) {
                    0 => scheduler.failed(transfer, FailureKind::Peer, "busy"),
                    1 if transfer.source.is_some() => scheduler.failed(transfer, FailureKind::Integrity, "bad"),
                    2 if steps == 5 && transfer.node != 0 => {
                        scheduler.node_lost(transfer.node);
                    }
                    _ => {
                        scheduler.finished(transfer);
                    }
                }
                assert_eq!(scheduler.spare_uploads, recomputed_spare(&scheduler), "seed {seed}");
            }
        }
    }
}
