//! Progress of a run as plain data, aggregated in one place: the coordinator feeds it the engine's events,
//! renderers (tqdm, notebook widgets) read [`Snapshot`]s of it, at most a few times per second.
//!
//! The same model as `xfd/progress.py` (and `ideal_seconds` of `xfd/report.py`), for the Rust
//! coordinator. Nodes and units (chunks, or bundles of small files) are dense indices; time is passed in
//! as seconds since the run started, so the model holds no clock and its tests are deterministic. Every
//! event costs O(1) amortized; a snapshot costs O(nodes), and O(nodes x units) only with chunk states.
//!
//! Where the Python model could count a unit twice, this one does not (each is tested):
//! - a unit a node already holds stays held: a later start, failure or report of it changes no count;
//! - a node's needs stop counting for the origin once, however often it is lost or added again, and a
//!   unit listed twice in its needs counts once;
//! - a transfer is never spread over time before the run started (a duration longer than `now` is cut),
//!   which also bounds the rate windows a bogus duration could touch.
//!
//! A unit index outside the plan is a bug of the caller (it maps the plan's ids to indices itself) and
//! panics with its index; an event for a node never added is ignored, as a late report of a node that was
//! replaced would be.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Peak rates are measured over windows this long: long enough to average out single chunks, short
/// enough to see the rate a link reached.
pub const RATE_WINDOW_S: f64 = 1.0;
/// Activity shorter than this is measured as if it lasted this long: a rate over a few milliseconds says
/// more about timer resolution than about a link.
pub const MIN_RATE_SPAN_S: f64 = 0.05;
/// A transfer reported as shorter than this is measured as lasting this long: a zero span has no rate.
const MIN_TRANSFER_S: f64 = 1e-3;
/// Failures kept per node, beyond which only fatal ones are added: a flapping peer would otherwise grow
/// every snapshot without telling more.
const MAX_FAILURES: usize = 20;
/// The one lane of the origin's rate windows (nodes' windows are keyed by the node).
const ORIGIN_LANE: u32 = 0;
/// Upper bounds (seconds) of the transfer-time histogram's buckets ([`Latency`]); one more bucket
/// counts the longer ones. From a cached-in-memory chunk on loopback (milliseconds) to a 64 MiB chunk
/// on a slow link (a minute).
pub const LATENCY_BOUNDS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Where a unit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Origin,
    Peer,
    Cache,
}

/// Where a node is in the run; serialized in lowercase, as the Python `NodeProgress.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Starting,
    Running,
    Done,
    Lost,
    Failed,
}

/// What one node knows of one unit. In [`Snapshot::chunk_states`] each is one character
/// ([`ChunkState::code`]), and [`UNTRACKED`] marks a unit the node neither needs nor was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkState {
    Missing = 1,
    Inflight = 2,
    Origin = 3,
    Peer = 4,
    Cache = 5,
    Failed = 6,
}

/// The [`Snapshot::chunk_states`] character of a unit a node neither needs nor was sent (the Python
/// model has no entry for it).
pub const UNTRACKED: char = '.';

impl ChunkState {
    const ALL: [ChunkState; 6] = [
        ChunkState::Missing,
        ChunkState::Inflight,
        ChunkState::Origin,
        ChunkState::Peer,
        ChunkState::Cache,
        ChunkState::Failed,
    ];

    /// The name the Python `Snapshot.chunk_states` uses.
    pub fn name(self) -> &'static str {
        match self {
            ChunkState::Missing => "missing",
            ChunkState::Inflight => "inflight",
            ChunkState::Origin => "origin",
            ChunkState::Peer => "peer",
            ChunkState::Cache => "cache",
            ChunkState::Failed => "failed",
        }
    }

    /// The character of this state in [`Snapshot::chunk_states`]: the first letter of its name.
    pub fn code(self) -> char {
        match self {
            ChunkState::Missing => 'm',
            ChunkState::Inflight => 'i',
            ChunkState::Origin => 'o',
            ChunkState::Peer => 'p',
            ChunkState::Cache => 'c',
            ChunkState::Failed => 'f',
        }
    }

    fn from_bits(bits: u8) -> Option<ChunkState> {
        ChunkState::ALL.into_iter().find(|state| *state as u8 == bits)
    }

    fn is_held(self) -> bool {
        matches!(self, ChunkState::Origin | ChunkState::Peer | ChunkState::Cache)
    }
}

impl From<Source> for ChunkState {
    fn from(source: Source) -> ChunkState {
        match source {
            Source::Origin => ChunkState::Origin,
            Source::Peer => ChunkState::Peer,
            Source::Cache => ChunkState::Cache,
        }
    }
}

/// Highest rates reached over any window so far (bytes per second): origin egress, one node's download,
/// one node's upload. Serialized as the Python `Snapshot.rates` mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub origin: f64,
    pub node_download: f64,
    pub node_upload: f64,
}

/// One node at one moment; the fields of the Python `NodeProgress`, with the node's index for its id.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeProgress {
    pub node: u32,
    pub ip: String,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    pub cache_bytes: u64,
    pub served_bytes: u64,
    pub inflight: u32,
    pub failures: Vec<String>,
    pub state: NodeState,
    /// Failed transfers to this node by the engine's error kind (`origin`, `peer`, `stalled`, ...),
    /// every one counted (unlike `failures`, which keeps the first reasons).
    pub failure_kinds: BTreeMap<String, u64>,
    /// GETs the node's engine sent to the origin, and those of them that failed (each retried, up to
    /// the plan's `origin_attempts`), as its engine counted them.
    pub origin_requests: u64,
    pub origin_failed_requests: u64,
}

/// Transfer times of one source, as a histogram over [`LATENCY_BOUNDS_S`]: `counts[i]` transfers took
/// at most `bounds[i]` and more than the bound before it; the last count, longer than every bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub counts: Vec<u64>,
    /// Seconds of every transfer counted, added up.
    pub sum: f64,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            counts: vec![0; LATENCY_BOUNDS_S.len() + 1],
            sum: 0.0,
        }
    }
}

impl Latency {
    fn observe(&mut self, seconds: f64) {
        // A bogus duration (negative, NaN) counts as instant; an infinite one in the last bucket.
        let seconds = if seconds.is_nan() { 0.0 } else { seconds.max(0.0) };
        let bucket = LATENCY_BOUNDS_S.partition_point(|&bound| bound < seconds);
        self.counts[bucket] += 1;
        if seconds.is_finite() {
            self.sum += seconds;
        }
    }

    /// Transfers counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// How long every delivered transfer took (each counted once: the coordinator's `deliveries`), by
/// source. Cache hits move nothing and are not counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// [`LATENCY_BOUNDS_S`], so that readers need no copy of their own.
    pub bounds: Vec<f64>,
    pub origin: Latency,
    pub peer: Latency,
}

/// Absolute progress at one moment: renderers need nothing else. The fields of the Python `Snapshot`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds since the run started.
    pub elapsed_s: f64,
    pub unique_bytes: u64,
    /// Bytes every node received from the origin.
    pub origin_bytes: u64,
    /// Every node added, by index.
    pub nodes: Vec<NodeProgress>,
    /// Empty unless asked for: node index -> one character per unit of the plan, in unit order (see
    /// [`ChunkState::code`] and [`UNTRACKED`]). A string, not a list of pairs: 20,000 units of 1,024
    /// nodes are 20 MB of JSON this way, ten times that as pairs.
    pub chunk_states: BTreeMap<u32, String>,
    pub rates: Rates,
    /// The ideal time at the peak rates so far (see [`ideal_seconds`]): an estimate.
    pub ideal_s: f64,
    /// Seconds since the first transfer started: the part of `elapsed_s` in which bytes could move
    /// (before it, agents were starting).
    pub transfer_s: f64,
    /// Transfer times so far (for the metrics, docs/metrics.md).
    pub latency: Latencies,
}

impl Snapshot {
    /// Bytes the surviving nodes need.
    pub fn total_bytes(&self) -> u64 {
        self.survivors().map(|n| n.total_bytes).sum()
    }

    /// Bytes the surviving nodes hold.
    pub fn done_bytes(&self) -> u64 {
        self.survivors().map(|n| n.done_bytes).sum()
    }

    /// Bytes moved per second since the first transfer started (agent start-up and cached bytes, which
    /// move nothing, are not counted).
    pub fn rate(&self) -> f64 {
        let moved: u64 = self.nodes.iter().map(|n| n.origin_bytes + n.peer_bytes).sum();
        if self.transfer_s > 0.0 {
            moved as f64 / self.transfer_s
        } else {
            0.0
        }
    }

    fn survivors(&self) -> impl Iterator<Item = &NodeProgress> {
        self.nodes.iter().filter(|n| n.state != NodeState::Lost)
    }
}

/// `max(O / u_origin, max R_i / d_node, sum R_i / (u_origin + N * u_node))`, from the run's own rates.
///
/// O: bytes the origin had to serve (needed by some node, cached by none); R_i: bytes node i had to
/// receive (what it needed, less its cache); N: nodes; u_origin, d_node, u_node: the highest origin
/// egress, one node's download and one node's upload rate measured in the run. It is the time the
/// transfers would take if every link ran at its best observed rate all the time: an estimate, NOT a
/// lower bound (a link never pushed to its capacity shows a lower rate, and the ideal grows with it).
pub fn ideal_seconds(origin_bytes: u64, received: &[u64], rates: &Rates) -> f64 {
    let mut ideal: f64 = 0.0;
    if rates.origin > 0.0 {
        ideal = ideal.max(origin_bytes as f64 / rates.origin);
    }
    if rates.node_download > 0.0 {
        let largest = received.iter().copied().max().unwrap_or(0);
        ideal = ideal.max(largest as f64 / rates.node_download);
    }
    let fleet = rates.origin + received.len() as f64 * rates.node_upload;
    if fleet > 0.0 {
        ideal = ideal.max(received.iter().sum::<u64>() as f64 / fleet);
    }
    ideal
}

/// Turns engine events into snapshots and measures the rates and bytes the report's ideal time needs.
/// Not synchronized: its owner (the coordinator's one task) serializes the calls.
#[derive(Debug)]
pub struct Progress {
    unique_bytes: u64,
    nodes: Vec<Option<Node>>,
    demand: Demand,
    peaks: Peaks,
    first_transfer: Option<f64>,
    latency: Latencies,
}

impl Progress {
    /// A run of units of these sizes (index = unit), `unique_bytes` in all.
    pub fn new(unit_sizes: Vec<u64>, unique_bytes: u64) -> Progress {
        Progress {
            unique_bytes,
            nodes: Vec::new(),
            demand: Demand::new(unit_sizes),
            peaks: Peaks::default(),
            first_transfer: None,
            latency: Latencies {
                bounds: LATENCY_BOUNDS_S.to_vec(),
                ..Latencies::default()
            },
        }
    }

    /// Adds a node needing `needed` (in any order, at any time, with any index: storage grows). A node
    /// added again starts over, and its earlier needs no longer count.
    pub fn add_node(&mut self, node: u32, ip: String, needed: &[u32]) {
        needed.iter().for_each(|&unit| self.demand.check(unit));
        self.forget(node);
        let mut added = Node::new(ip);
        for &unit in needed {
            if added.units.need(unit, self.demand.units()) {
                added.total += self.demand.size(unit);
                self.demand.want(unit);
            }
        }
        let index = node as usize;
        if index >= self.nodes.len() {
            self.nodes.resize_with(index + 1, || None);
        }
        self.nodes[index] = Some(added);
    }

    /// A transfer of `unit` to `node` started.
    pub fn started_transfer(&mut self, node: u32, unit: u32, now: f64) {
        self.demand.check(unit);
        self.first_transfer.get_or_insert(now);
        let units = self.demand.units();
        if let Some(to) = node_mut(&mut self.nodes, node) {
            to.inflight += 1;
            to.mark(unit, ChunkState::Inflight, units);
        }
    }

    /// A transfer that will never report (an endgame loser, or one to or from a lost node).
    pub fn transfer_dropped(&mut self, node: u32) {
        if let Some(to) = node_mut(&mut self.nodes, node) {
            to.inflight = to.inflight.saturating_sub(1);
        }
    }

    /// `node` holds `unit`, verified, from `source` (a peer: `source_node`) after a transfer of `seconds`
    /// (`counted_inflight`: a transfer reported by [`Progress::started_transfer`], not a cache hit).
    #[expect(
        clippy::too_many_arguments,
        reason = "the event's fields, named where it is reported"
    )]
    pub fn chunk_done(
        &mut self,
        node: u32,
        unit: u32,
        source: Source,
        seconds: f64,
        source_node: Option<u32>,
        counted_inflight: bool,
        now: f64,
    ) {
        let size = self.demand.size(unit);
        let units = self.demand.units();
        let Some(to) = node_mut(&mut self.nodes, node) else {
            return;
        };
        if counted_inflight {
            to.inflight = to.inflight.saturating_sub(1);
            // Every delivered transfer, a duplicate's too: it took its time all the same.
            match source {
                Source::Origin => self.latency.origin.observe(seconds),
                Source::Peer => self.latency.peer.observe(seconds),
                Source::Cache => {}
            }
        }
        if to.units.get(unit).is_some_and(ChunkState::is_held) {
            return; // a duplicate report
        }
        to.units.set(unit, source.into(), units);
        to.received(source, size);
        if let Some(from) = source_node.and_then(|from| node_mut(&mut self.nodes, from)) {
            from.served += size;
        }
        match source {
            Source::Cache => self.demand.cache_seeds(unit),
            _ => self.peaks.account(node, source, source_node, size, seconds, now),
        }
    }

    /// A transfer of `unit` to `node` failed with an error of `kind` (the engine's error kind);
    /// `fatal`: the unit will not be tried again on it.
    pub fn chunk_failed(&mut self, node: u32, unit: u32, reason: &str, kind: &str, fatal: bool) {
        self.demand.check(unit);
        let units = self.demand.units();
        let Some(to) = node_mut(&mut self.nodes, node) else {
            return;
        };
        to.inflight = to.inflight.saturating_sub(1);
        *to.failure_kinds.entry(kind.to_owned()).or_default() += 1;
        let state = if fatal { ChunkState::Failed } else { ChunkState::Missing };
        to.mark(unit, state, units);
        if fatal || to.failures.len() < MAX_FAILURES {
            to.failures.push(reason.to_owned());
        }
    }

    /// What `node`'s engine counted of the origin so far: GETs sent, and those of them that failed.
    pub fn origin_requests(&mut self, node: u32, requests: u64, failed: u64) {
        if let Some(slot) = node_mut(&mut self.nodes, node) {
            slot.origin_requests = requests;
            slot.origin_failed_requests = failed;
        }
    }

    /// `node` is now in `state`; a non-empty `reason` is added to its failures.
    pub fn set_state(&mut self, node: u32, state: NodeState, reason: &str, now: f64) {
        let Some(slot) = node_mut(&mut self.nodes, node) else {
            return;
        };
        slot.state = state;
        if !reason.is_empty() {
            slot.failures.push(reason.to_owned());
        }
        if state == NodeState::Done && slot.finished_at.is_none() {
            slot.finished_at = Some(now);
        }
        if state == NodeState::Lost {
            self.forget(node);
        }
    }

    /// When `node` first held everything it needs (`None`: not yet, or no such node).
    pub fn finished_at(&self, node: u32) -> Option<f64> {
        self.node(node)?.finished_at
    }

    /// Highest rates reached over any window. Each transfer's bytes are spread evenly over its duration.
    pub fn peak_rates(&self) -> Rates {
        Rates {
            origin: self.peaks.origin.peak,
            node_download: self.peaks.node_download.peak,
            node_upload: self.peaks.node_upload.peak,
        }
    }

    /// Progress at `now`, with every node's unit states if `with_chunks`.
    pub fn snapshot(&self, now: f64, with_chunks: bool) -> Snapshot {
        let nodes: Vec<NodeProgress> = self.added().map(|(i, n)| n.progress(i)).collect();
        // What each surviving node had to receive: all it needs, less what its cache held.
        let received: Vec<u64> = nodes
            .iter()
            .filter(|n| n.state != NodeState::Lost)
            .map(|n| n.total_bytes.saturating_sub(n.cache_bytes))
            .collect();
        let rates = self.peak_rates();
        Snapshot {
            elapsed_s: now,
            unique_bytes: self.unique_bytes,
            origin_bytes: nodes.iter().map(|n| n.origin_bytes).sum(),
            chunk_states: if with_chunks {
                self.chunk_states()
            } else {
                BTreeMap::new()
            },
            ideal_s: ideal_seconds(self.demand.origin_needed, &received, &rates),
            transfer_s: self.first_transfer.map_or(0.0, |first| (now - first).max(0.0)),
            latency: self.latency.clone(),
            nodes,
            rates,
        }
    }

    fn chunk_states(&self) -> BTreeMap<u32, String> {
        let units = self.demand.units();
        self.added().map(|(i, n)| (i, n.units.codes(units))).collect()
    }

    fn node(&self, node: u32) -> Option<&Node> {
        self.nodes.get(node as usize)?.as_ref()
    }

    fn added(&self) -> impl Iterator<Item = (u32, &Node)> {
        let nodes = self.nodes.iter().enumerate();
        nodes.filter_map(|(i, n)| Some((i as u32, n.as_ref()?)))
    }

    /// `node`'s needs no longer count for the origin (it was lost, or is added again); only once.
    fn forget(&mut self, node: u32) {
        let Some(slot) = node_mut(&mut self.nodes, node) else {
            return;
        };
        if std::mem::replace(&mut slot.wanting, false) {
            slot.units.needed().for_each(|unit| self.demand.unwant(unit));
        }
    }
}

fn node_mut(nodes: &mut [Option<Node>], node: u32) -> Option<&mut Node> {
    nodes.get_mut(node as usize)?.as_mut()
}

#[derive(Debug)]
struct Node {
    ip: String,
    total: u64,
    done: u64,
    origin: u64,
    peer: u64,
    cache: u64,
    served: u64,
    inflight: u32,
    failures: Vec<String>,
    failure_kinds: BTreeMap<String, u64>,
    origin_requests: u64,
    origin_failed_requests: u64,
    state: NodeState,
    finished_at: Option<f64>,
    /// Whether its needs still count in what the origin must serve (until it is lost).
    wanting: bool,
    units: UnitStates,
}

impl Node {
    fn new(ip: String) -> Node {
        Node {
            ip,
            total: 0,
            done: 0,
            origin: 0,
            peer: 0,
            cache: 0,
            served: 0,
            inflight: 0,
            failures: Vec::new(),
            failure_kinds: BTreeMap::new(),
            origin_requests: 0,
            origin_failed_requests: 0,
            state: NodeState::Running,
            finished_at: None,
            wanting: true,
            units: UnitStates::default(),
        }
    }

    /// Sets a unit's state, unless the node holds it: a held unit stays held (a late start or failure of
    /// another copy must not make its next report count again).
    fn mark(&mut self, unit: u32, state: ChunkState, units: usize) {
        if !self.units.get(unit).is_some_and(ChunkState::is_held) {
            self.units.set(unit, state, units);
        }
    }

    fn received(&mut self, source: Source, size: u64) {
        self.done += size;
        *match source {
            Source::Origin => &mut self.origin,
            Source::Peer => &mut self.peer,
            Source::Cache => &mut self.cache,
        } += size;
    }

    fn progress(&self, node: u32) -> NodeProgress {
        NodeProgress {
            node,
            ip: self.ip.clone(),
            total_bytes: self.total,
            done_bytes: self.done,
            origin_bytes: self.origin,
            peer_bytes: self.peer,
            cache_bytes: self.cache,
            served_bytes: self.served,
            inflight: self.inflight,
            failures: self.failures.clone(),
            state: self.state,
            failure_kinds: self.failure_kinds.clone(),
            origin_requests: self.origin_requests,
            origin_failed_requests: self.origin_failed_requests,
        }
    }
}

/// The bit of a unit's byte saying the node needs it (it counts in what the origin must serve).
const NEEDED: u8 = 0x80;
const STATE_BITS: u8 = 0x07;

/// One node's state of every unit: one byte per unit of the plan, indexed by unit, allocated at the first
/// write. Indexed by unit rather than by position in the node's needs because a report names a unit:
/// finding its position would take a map per node (bigger than this array) or a search (not O(1)). Every
/// node needs every unit in most runs, where both layouts are the same size; 1,024 nodes of 20,000 units
/// take 20 MB (the Python model's dicts took about a hundred times that). A byte is the NEEDED bit and a
/// [`ChunkState`] (0: no state, a unit the node neither needs nor was sent).
#[derive(Debug, Default)]
struct UnitStates(Vec<u8>);

impl UnitStates {
    fn get(&self, unit: u32) -> Option<ChunkState> {
        let bits = self.0.get(unit as usize)?;
        ChunkState::from_bits(bits & STATE_BITS)
    }

    fn set(&mut self, unit: u32, state: ChunkState, units: usize) {
        let byte = self.byte(unit, units);
        *byte = (*byte & NEEDED) | state as u8;
    }

    /// Marks `unit` needed (missing, unless it has a state); false if it already was.
    fn need(&mut self, unit: u32, units: usize) -> bool {
        let byte = self.byte(unit, units);
        let fresh = *byte & NEEDED == 0;
        if *byte & STATE_BITS == 0 {
            *byte = ChunkState::Missing as u8;
        }
        *byte |= NEEDED;
        fresh
    }

    fn needed(&self) -> impl Iterator<Item = u32> {
        let bytes = self.0.iter().enumerate();
        bytes.filter_map(|(unit, byte)| (byte & NEEDED != 0).then_some(unit as u32))
    }

    fn codes(&self, units: usize) -> String {
        let code = |unit| self.get(unit).map_or(UNTRACKED, ChunkState::code);
        (0..units as u32).map(code).collect()
    }

    fn byte(&mut self, unit: u32, units: usize) -> &mut u8 {
        if self.0.is_empty() {
            self.0 = vec![0; units];
        }
        &mut self.0[unit as usize]
    }
}

/// What the origin must serve, kept up to date: bytes of the units some surviving node needs and no
/// node had in its cache.
#[derive(Debug)]
struct Demand {
    sizes: Vec<u64>,
    /// Surviving nodes needing each unit.
    wanted: Vec<u32>,
    /// Units some node's cache held: peers can get them there.
    cached: Vec<bool>,
    origin_needed: u64,
}

impl Demand {
    fn new(sizes: Vec<u64>) -> Demand {
        Demand {
            wanted: vec![0; sizes.len()],
            cached: vec![false; sizes.len()],
            sizes,
            origin_needed: 0,
        }
    }

    fn units(&self) -> usize {
        self.sizes.len()
    }

    fn size(&self, unit: u32) -> u64 {
        self.check(unit);
        self.sizes[unit as usize]
    }

    /// Panics on a unit outside the plan: the caller maps the plan's ids to indices, so it is a bug there.
    fn check(&self, unit: u32) {
        let units = self.units();
        assert!(
            (unit as usize) < units,
            "unit {unit} is not in the plan, which has {units} units"
        );
    }

    /// One more surviving node needs `unit`.
    fn want(&mut self, unit: u32) {
        let index = unit as usize;
        self.wanted[index] += 1;
        if self.wanted[index] == 1 && !self.cached[index] {
            self.origin_needed += self.sizes[index];
        }
    }

    /// One fewer surviving node needs `unit`.
    fn unwant(&mut self, unit: u32) {
        let index = unit as usize;
        self.wanted[index] -= 1;
        if self.wanted[index] == 0 && !self.cached[index] {
            self.origin_needed -= self.sizes[index];
        }
    }

    /// A node's cache holds `unit`: peers can get it there, the origin need not serve it.
    fn cache_seeds(&mut self, unit: u32) {
        let index = unit as usize;
        if !std::mem::replace(&mut self.cached[index], true) && self.wanted[index] > 0 {
            self.origin_needed -= self.sizes[index];
        }
    }
}

/// Rate windows of the origin, of each node's download and upload, and their peaks, kept up to date as
/// transfers finish, so reading a peak costs O(1).
#[derive(Debug, Default)]
struct Peaks {
    origin: PeakRate,
    node_download: PeakRate,
    node_upload: PeakRate,
}

impl Peaks {
    fn account(&mut self, node: u32, source: Source, source_node: Option<u32>, size: u64, seconds: f64, end: f64) {
        // A transfer cannot have started before the run: cutting its span there also bounds the windows
        // a bogus duration (or NaN) could spread it over.
        let seconds = seconds.max(MIN_TRANSFER_S).min(end.max(MIN_TRANSFER_S));
        for (window, share, lo, hi) in spread(end - seconds, end, size) {
            self.node_download.add((node, window), share, lo, hi);
            match (source, source_node) {
                (Source::Origin, _) => self.origin.add((ORIGIN_LANE, window), share, lo, hi),
                (_, Some(from)) => self.node_upload.add((from, window), share, lo, hi),
                _ => {}
            }
        }
    }
}

/// The windows of one kind of rate (keyed by lane, a node or the origin, and window number) and the
/// highest of their rates. A window's rate can fall as bytes arrive (its span grows faster): the peak is
/// then looked for again, which is rare, because the peak window is seldom the one still filling.
#[derive(Debug, Default)]
struct PeakRate {
    windows: HashMap<(u32, i64), Window>,
    peak: f64,
}

impl PeakRate {
    fn add(&mut self, key: (u32, i64), share: f64, start: f64, end: f64) {
        let window = self.windows.entry(key).or_default();
        let before = window.rate();
        window.add(share, start, end);
        let rate = window.rate();
        if rate >= self.peak {
            self.peak = rate;
        } else if before == self.peak {
            self.peak = self.windows.values().map(Window::rate).fold(0.0, f64::max);
        }
    }
}

/// Bytes moved within one rate window, and the part of the window in which they moved: a run (or a
/// burst) shorter than the window is measured over its own length, not the window's.
#[derive(Debug)]
struct Window {
    bytes: f64,
    start: f64,
    end: f64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            bytes: 0.0,
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
        }
    }
}

impl Window {
    fn add(&mut self, share: f64, start: f64, end: f64) {
        self.bytes += share;
        self.start = self.start.min(start);
        self.end = self.end.max(end);
    }

    fn rate(&self) -> f64 {
        self.bytes / (self.end - self.start).max(MIN_RATE_SPAN_S)
    }
}

/// `(window, bytes, from, to)`: a transfer's bytes spread evenly over the windows it overlaps.
fn spread(start: f64, end: f64, size: u64) -> impl Iterator<Item = (i64, f64, f64, f64)> {
    let span = end - start;
    let valid = start.is_finite() && end.is_finite() && span > 0.0;
    let (first, last) = if valid {
        (window_of(start), window_of(end))
    } else {
        (0, -1)
    };
    (first..=last).filter_map(move |window| {
        let lo = start.max(window as f64 * RATE_WINDOW_S);
        let hi = end.min((window + 1) as f64 * RATE_WINDOW_S);
        (hi > lo).then(|| (window, size as f64 * (hi - lo) / span, lo, hi))
    })
}

fn window_of(time: f64) -> i64 {
    (time / RATE_WINDOW_S).floor() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn approx(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs()
    }

    /// A model whose node `i` (ip `127.0.0.{i + 2}`) needs `needs[i]`.
    fn model_with(needs: &[&[u32]], sizes: &[u64]) -> Progress {
        let mut model = Progress::new(sizes.to_vec(), sizes.iter().sum());
        for (i, needed) in needs.iter().enumerate() {
            model.add_node(i as u32, format!("127.0.0.{}", i + 2), needed);
        }
        model
    }

    /// Sets the peak rates as a run would have measured them.
    fn with_peaks(model: &mut Progress, origin: f64, download: f64, upload: f64) -> Rates {
        model.peaks.origin.peak = origin;
        model.peaks.node_download.peak = download;
        model.peaks.node_upload.peak = upload;
        model.peak_rates()
    }

    fn node(snapshot: &Snapshot, index: u32) -> &NodeProgress {
        snapshot.nodes.iter().find(|n| n.node == index).unwrap()
    }

    #[test]
    fn the_ideal_takes_the_tightest_of_the_three_terms() {
        let rates = Rates {
            origin: 100.0,
            node_download: 1000.0,
            node_upload: 50.0,
        };
        let received = [1000, 1000, 1000, 1000];
        let terms = [1000.0 / 100.0, 1000.0 / 1000.0, 4000.0 / (100.0 + 4.0 * 50.0)];
        assert_eq!(
            ideal_seconds(1000, &received, &rates),
            terms.into_iter().fold(0.0, f64::max)
        );
        assert_eq!(ideal_seconds(0, &[], &rates), 0.0);
        assert_eq!(ideal_seconds(1000, &[1000], &Rates::default()), 0.0);
        let fleet_bound = Rates {
            origin: 1000.0,
            node_download: 1000.0,
            node_upload: 10.0,
        };
        assert_eq!(ideal_seconds(10, &[1000, 1000], &fleet_bound), 2000.0 / 1020.0);
    }

    #[test]
    fn the_ideal_counts_only_the_bytes_each_node_needed() {
        let rate = 100.0 * MB as f64;
        let rates = Rates {
            origin: rate,
            node_download: rate,
            node_upload: rate,
        };
        let ideal = ideal_seconds(100 * MB, &[10 * MB, 10 * MB, 100 * MB], &rates);
        assert!(approx(ideal, 1.0, 1e-9), "{ideal}");
    }

    #[test]
    fn the_model_knows_what_the_origin_and_each_node_had_to_move() {
        let (a, b, c) = (0, 1, 2);
        let mut model = model_with(&[&[a, b, c], &[a], &[a, b]], &[10 * MB, 20 * MB, 40 * MB]);
        assert_eq!(model.demand.origin_needed, 70 * MB);
        model.chunk_done(2, b, Source::Cache, 0.0, None, false, 0.0);
        // The origin has to serve a and c (b was in node 2's cache): 50 MB. Node 0 has to receive 70 MB,
        // nodes 1 and 2 10 MB.
        assert_eq!(model.demand.origin_needed, 50 * MB);

        let slow_origin = with_peaks(&mut model, 10e6, 1000e6, 1000e6);
        let ideal = model.snapshot(1.0, false).ideal_s;
        assert!(approx(ideal, 5.0, 1e-9), "{ideal}");
        assert_eq!(
            ideal,
            ideal_seconds(50 * MB, &[70 * MB, 10 * MB, 10 * MB], &slow_origin)
        );
        let slow_nodes = with_peaks(&mut model, 1000e6, 10e6, 1e6);
        let ideal = model.snapshot(1.0, false).ideal_s;
        assert!(approx(ideal, 7.0, 1e-9), "{ideal}");
        assert_eq!(ideal, ideal_seconds(50 * MB, &[70 * MB, 10 * MB, 10 * MB], &slow_nodes));
    }

    #[test]
    fn a_lost_node_is_no_longer_wanted_and_counted_once() {
        let (a, b, c) = (0, 1, 2);
        let mut model = model_with(&[&[a, b, c], &[a], &[a, b]], &[10 * MB, 20 * MB, 40 * MB]);
        model.chunk_done(2, b, Source::Cache, 0.0, None, false, 0.0);
        let slow_nodes = with_peaks(&mut model, 1000e6, 10e6, 1e6);

        model.set_state(0, NodeState::Lost, "killed", 1.0);
        model.set_state(0, NodeState::Lost, "", 1.0); // told twice: counted once
        // Only node 0 needed c: the origin now has to serve a alone, and no node more than 10 MB.
        assert_eq!(model.demand.origin_needed, 10 * MB);
        let snapshot = model.snapshot(2.0, false);
        let expected = ideal_seconds(10 * MB, &[10 * MB, 10 * MB], &slow_nodes);
        assert_eq!(snapshot.ideal_s, expected);
        assert!(approx(expected, 1.0, 1e-9), "{expected}");
        assert_eq!(node(&snapshot, 0).failures, ["killed"]);
        assert_eq!(snapshot.total_bytes(), 40 * MB, "a lost node's needs are not counted");
        with_peaks(&mut model, 1e6, 1000e6, 1000e6);
        let ideal = model.snapshot(2.0, false).ideal_s;
        assert!(approx(ideal, 10.0, 1e-9), "{ideal}");
    }

    #[test]
    fn a_node_added_again_replaces_its_needs() {
        let mut model = model_with(&[&[0, 1, 1]], &[10, 20]);
        assert_eq!(model.demand.origin_needed, 30, "a unit listed twice is needed once");
        assert_eq!(node(&model.snapshot(0.0, false), 0).total_bytes, 30);
        model.add_node(0, "127.0.0.9".into(), &[1]);
        assert_eq!(model.demand.origin_needed, 20);
        model.set_state(0, NodeState::Lost, "", 1.0);
        assert_eq!(model.demand.origin_needed, 0);
        assert_eq!(model.demand.wanted, [0, 0]);
    }

    #[test]
    fn duplicate_reports_are_not_counted_twice() {
        let mut model = model_with(&[&[0, 1], &[0, 1]], &[MB, 2 * MB]);
        model.started_transfer(0, 0, 0.0);
        model.started_transfer(0, 0, 0.1); // an endgame duplicate
        model.chunk_done(0, 0, Source::Origin, 0.1, None, true, 0.2);
        model.chunk_done(0, 0, Source::Peer, 0.1, Some(1), true, 0.3);
        // A late start or failure of another copy leaves the unit held, so its next report is a duplicate.
        model.started_transfer(0, 0, 0.4);
        model.chunk_failed(0, 0, "peer went away", "peer", false);
        model.chunk_done(0, 0, Source::Origin, 0.1, None, false, 0.5);

        let snapshot = model.snapshot(1.0, true);
        let first = node(&snapshot, 0);
        assert_eq!((first.done_bytes, first.origin_bytes, first.peer_bytes), (MB, MB, 0));
        assert_eq!(first.inflight, 0);
        assert_eq!(node(&snapshot, 1).served_bytes, 0, "a duplicate serves nothing");
        assert_eq!(snapshot.origin_bytes, MB);
        assert_eq!(snapshot.chunk_states[&0], "om");
    }

    #[test]
    fn served_bytes_are_credited_to_the_source_node() {
        let mut model = model_with(&[&[0, 1], &[0, 1], &[0, 1]], &[MB, 2 * MB]);
        model.chunk_done(0, 0, Source::Origin, 0.1, None, false, 0.1);
        model.chunk_done(0, 1, Source::Origin, 0.1, None, false, 0.2);
        model.chunk_done(1, 0, Source::Peer, 0.1, Some(0), false, 0.3);
        model.chunk_done(2, 1, Source::Peer, 0.1, Some(0), false, 0.3);
        model.chunk_done(2, 0, Source::Peer, 0.1, Some(1), false, 0.4);
        model.chunk_done(1, 1, Source::Peer, 0.1, Some(7), false, 0.5); // from a node never added

        let snapshot = model.snapshot(1.0, false);
        let served: Vec<u64> = snapshot.nodes.iter().map(|n| n.served_bytes).collect();
        assert_eq!(served, [3 * MB, MB, 0]);
        let peer: Vec<u64> = snapshot.nodes.iter().map(|n| n.peer_bytes).collect();
        assert_eq!(peer, [0, 3 * MB, 3 * MB]);
        assert_eq!(snapshot.origin_bytes, 3 * MB);
        assert_eq!(snapshot.done_bytes(), 9 * MB);
    }

    #[test]
    fn failures_are_capped_at_twenty_unless_fatal() {
        let mut model = model_with(&[&[0]], &[MB]);
        for attempt in 0..25 {
            model.started_transfer(0, 0, 0.0);
            model.chunk_failed(0, 0, &format!("stalled {attempt}"), "stalled", false);
        }
        model.chunk_failed(0, 0, "object changed", "fatal", true);
        model.set_state(0, NodeState::Failed, "gave up", 1.0);

        let snapshot = model.snapshot(1.0, true);
        let failures = &node(&snapshot, 0).failures;
        assert_eq!(failures.len(), 22);
        assert_eq!(failures[19], "stalled 19");
        assert_eq!(failures[20..], ["object changed", "gave up"]);
        assert_eq!(node(&snapshot, 0).inflight, 0);
        assert_eq!(node(&snapshot, 0).state, NodeState::Failed);
        assert_eq!(snapshot.chunk_states[&0], "f");
        let kinds = &node(&snapshot, 0).failure_kinds;
        assert_eq!(
            (kinds["stalled"], kinds["fatal"]),
            (25, 1),
            "every failure counted by kind"
        );
    }

    #[test]
    fn every_delivered_transfer_is_timed_once_by_source() {
        let mut model = model_with(&[&[0, 1], &[0, 1]], &[MB, MB]);
        model.chunk_done(0, 0, Source::Origin, 0.004, None, true, 0.1);
        model.chunk_done(0, 0, Source::Peer, 0.3, Some(1), true, 0.2); // an endgame duplicate: timed too
        model.chunk_done(1, 0, Source::Peer, 0.5, Some(0), true, 0.6);
        model.chunk_done(1, 1, Source::Cache, 0.0, None, false, 0.0); // a cache hit moves nothing
        model.chunk_done(0, 1, Source::Origin, 500.0, None, true, 1.0);
        model.chunk_done(0, 1, Source::Origin, f64::NAN, None, true, 1.0);
        model.origin_requests(0, 7, 2);

        let snapshot = model.snapshot(1.0, false);
        let latency = &snapshot.latency;
        assert_eq!(latency.bounds, LATENCY_BOUNDS_S);
        let bucket = |seconds: f64| LATENCY_BOUNDS_S.iter().position(|&b| seconds <= b);
        assert_eq!((bucket(0.004), bucket(0.3), bucket(0.5)), (Some(0), Some(6), Some(6)));
        let mut origin = vec![0; LATENCY_BOUNDS_S.len() + 1];
        origin[0] = 2; // 0.004 s and the NaN, counted as instant
        origin[LATENCY_BOUNDS_S.len()] = 1; // 500 s: longer than every bound
        assert_eq!(latency.origin.counts, origin);
        assert_eq!(latency.origin.sum, 500.004);
        assert_eq!(
            (latency.peer.count(), latency.peer.counts[6], latency.peer.sum),
            (2, 2, 0.8)
        );
        let first = node(&snapshot, 0);
        assert_eq!((first.origin_requests, first.origin_failed_requests), (7, 2));
    }

    #[test]
    fn a_run_shorter_than_a_rate_window_is_measured_over_its_own_length() {
        let mut model = model_with(&[&[0, 1], &[0, 1]], &[MB, MB]);
        model.chunk_done(0, 0, Source::Origin, 0.1, None, true, 0.1);
        model.chunk_done(1, 0, Source::Peer, 0.1, Some(0), true, 0.1);

        // 1 MB in 0.1 s is 10 MB/s, not 1 MB/s (1 MB in a 1 s window).
        let rates = model.peak_rates();
        assert!(approx(rates.origin, 10e6, 1e-9), "{rates:?}");
        assert!(approx(rates.node_download, 10e6, 1e-9), "{rates:?}");
        assert!(approx(rates.node_upload, 10e6, 1e-9), "{rates:?}");
    }

    #[test]
    fn peak_rates_are_per_window_and_per_node() {
        let mut model = model_with(&[&[0, 1], &[0, 1], &[0, 1]], &[3 * MB, MB]);
        // 3 MB over 2.5 s (0.5 to 3.0): 1.2 MB/s in each of the three windows it overlaps.
        model.chunk_done(0, 0, Source::Origin, 2.5, None, false, 3.0);
        assert!(approx(model.peak_rates().origin, 1.2e6, 1e-9));
        // Two nodes each download 1 MB from the origin in the same 0.5 s: the origin served both, each
        // node downloaded its own.
        model.chunk_done(1, 1, Source::Origin, 0.5, None, false, 5.5);
        model.chunk_done(2, 1, Source::Origin, 0.5, None, false, 5.5);
        let rates = model.peak_rates();
        assert!(approx(rates.origin, 4e6, 1e-9), "{rates:?}");
        assert!(approx(rates.node_download, 2e6, 1e-9), "{rates:?}");
        assert_eq!(rates.node_upload, 0.0);
        // A peer upload by node 0 to two nodes in one window adds up for node 0.
        model.chunk_done(1, 0, Source::Peer, 1.0, Some(0), false, 8.0);
        model.chunk_done(2, 0, Source::Peer, 1.0, Some(0), false, 8.0);
        assert!(approx(model.peak_rates().node_upload, 6e6, 1e-9));
        assert!(approx(model.peak_rates().node_download, 3e6, 1e-9));
    }

    #[test]
    fn a_bogus_duration_is_cut_at_the_start_of_the_run() {
        let mut model = model_with(&[&[0, 1]], &[MB, MB]);
        model.chunk_done(0, 0, Source::Origin, 1e300, None, false, 2.0);
        model.chunk_done(0, 1, Source::Origin, f64::NAN, None, false, 3.0);
        let origin = &model.peaks.origin;
        assert_eq!(origin.windows.len(), 3, "{:?}", origin.windows.keys());
        // 1 MB over the run's 2 s, then 1 MB in the shortest span measured.
        assert!(approx(origin.peak, 1e6 / MIN_RATE_SPAN_S, 1e-9), "{}", origin.peak);
    }

    #[test]
    fn a_kept_peak_is_always_the_highest_window_rate() {
        // A small deterministic generator stands in for the Python test's hypothesis strategies.
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..200 {
            let mut peak = PeakRate::default();
            for _ in 0..(next() * 60.0) as usize {
                let key = (0, (next() * 6.0) as i64);
                let (share, a, b) = (next() * 1e6, next(), next());
                peak.add(key, share, a.min(b), a.max(b));
                let highest = peak.windows.values().map(Window::rate).fold(0.0, f64::max);
                assert_eq!(peak.peak, highest);
            }
        }
    }

    #[test]
    fn rates_of_progress_start_with_the_first_transfer_and_leave_cached_bytes_out() {
        let mut model = model_with(&[&[0, 1]], &[MB, MB]);
        model.chunk_done(0, 0, Source::Cache, 0.0, None, false, 0.1);
        let starting = model.snapshot(0.1, false);
        assert_eq!(
            (starting.transfer_s, starting.rate()),
            (0.0, 0.0),
            "agents are still starting"
        );
        model.started_transfer(0, 1, 2.0);
        model.chunk_done(0, 1, Source::Origin, 0.5, None, true, 2.5);
        let snapshot = model.snapshot(3.0, false);
        assert_eq!((snapshot.elapsed_s, snapshot.transfer_s), (3.0, 1.0));
        assert_eq!(snapshot.rate(), 1e6);
        assert_eq!(model.finished_at(0), None);
        model.set_state(0, NodeState::Done, "", 3.5);
        model.set_state(0, NodeState::Done, "", 4.0);
        assert_eq!(model.finished_at(0), Some(3.5), "the first time it held everything");
    }

    #[test]
    fn nodes_may_come_late_in_any_order_and_events_of_others_are_ignored() {
        let mut model = Progress::new(vec![MB, MB, MB], 3 * MB);
        model.chunk_done(5, 0, Source::Origin, 0.1, None, true, 0.1);
        model.set_state(5, NodeState::Lost, "gone", 0.1);
        model.add_node(4, "127.0.0.6".into(), &[0, 2]);
        model.add_node(1, "127.0.0.3".into(), &[]);
        model.started_transfer(1, 1, 0.2); // a unit it does not need is still shown
        model.chunk_failed(3, 0, "never added", "fatal", true);

        let snapshot = model.snapshot(1.0, true);
        let indices: Vec<u32> = snapshot.nodes.iter().map(|n| n.node).collect();
        assert_eq!(indices, [1, 4]);
        assert_eq!(node(&snapshot, 1).inflight, 1);
        assert_eq!(node(&snapshot, 4).total_bytes, 2 * MB);
        assert_eq!(snapshot.origin_bytes, 0);
        assert_eq!(snapshot.chunk_states[&1], ".i.");
        assert_eq!(snapshot.chunk_states[&4], "m.m");
        assert_eq!(model.finished_at(3), None);
        assert_eq!(model.demand.origin_needed, 2 * MB);
    }

    #[test]
    #[should_panic(expected = "unit 3 is not in the plan, which has 3 units")]
    fn a_unit_outside_the_plan_is_a_bug_of_the_caller() {
        let mut model = Progress::new(vec![MB, MB, MB], 3 * MB);
        model.add_node(0, "127.0.0.2".into(), &[0, 3]);
    }

    #[test]
    fn the_snapshot_serializes_with_the_python_field_names() {
        let mut model = model_with(&[&[0, 1]], &[MB, MB]);
        model.started_transfer(0, 0, 0.5);
        model.chunk_done(0, 0, Source::Origin, 0.5, None, true, 1.0);
        let json = serde_json::to_value(model.snapshot(2.0, true)).unwrap();
        let expected = serde_json::json!({
            "elapsed_s": 2.0, "unique_bytes": 2 * MB, "origin_bytes": MB,
            "nodes": [{
                "node": 0, "ip": "127.0.0.2", "total_bytes": 2 * MB, "done_bytes": MB, "origin_bytes": MB,
                "peer_bytes": 0, "cache_bytes": 0, "served_bytes": 0, "inflight": 0, "failures": [],
                "state": "running", "failure_kinds": {}, "origin_requests": 0, "origin_failed_requests": 0,
            }],
            "chunk_states": {"0": "om"},
            "rates": {"origin": 2e6, "node_download": 2e6, "node_upload": 0.0},
            "ideal_s": 1.0, "transfer_s": 1.5,
            "latency": {
                "bounds": LATENCY_BOUNDS_S,
                "origin": {"counts": [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "sum": 0.5},
                "peer": {"counts": vec![0; LATENCY_BOUNDS_S.len() + 1], "sum": 0.0},
            },
        });
        assert_eq!(json, expected);
        let codes: String = ChunkState::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, "miopcf");
        assert!(ChunkState::ALL.iter().all(|s| s.name().starts_with(s.code())));
    }

    #[test]
    fn a_thousand_nodes_of_twenty_thousand_units_stay_small() {
        let (nodes, units) = (1024u32, 20_000u32);
        let mut model = Progress::new(vec![MB; units as usize], u64::from(units) * MB);
        let all: Vec<u32> = (0..units).collect();
        for n in 0..nodes {
            model.add_node(n, format!("10.0.{}.{}", n / 256, n % 256), &all);
        }
        for n in 1..nodes {
            model.chunk_done(n, n % units, Source::Peer, 0.5, Some(0), false, 1.0);
        }
        let storage: usize = model.added().map(|(_, n)| n.units.0.capacity()).sum();
        assert_eq!(storage, (nodes * units) as usize, "one byte per node and unit");

        let snapshot = model.snapshot(2.0, false);
        assert!(snapshot.chunk_states.is_empty());
        assert_eq!(snapshot.nodes.len(), nodes as usize);
        assert_eq!(snapshot.total_bytes(), u64::from(nodes * units) * MB);
        assert_eq!(snapshot.done_bytes(), u64::from(nodes - 1) * MB);
        assert_eq!(node(&snapshot, 0).served_bytes, u64::from(nodes - 1) * MB);
        assert_eq!(model.demand.origin_needed, u64::from(units) * MB);
    }
}
