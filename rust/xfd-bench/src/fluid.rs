//! The fluid model of links, shared by the scale simulator ([`crate::sim`]) and the fleet benchmark
//! ([`crate::fleet`]), so both time transfers by the same rules.
//!
//! Each node has an upload and a download capacity, the origin has one shared capacity, and every
//! transfer pays a fixed latency before its bytes flow. A flowing transfer gets an equal share of its
//! source's upload (or of the origin) and of its destination's download, whichever is smaller; shares
//! are recomputed for the transfers on a link whenever a transfer joins or leaves it. Equal shares leave
//! capacity idle when one side of a flow is the bottleneck, so modeled times err on the slow side.
//!
//! Time is the caller's: events come out in time order, each setting [`Fluid::now`]; the simulator
//! jumps from event to event, the fleet benchmark follows a wall clock. The caller's own events
//! (`E`: a node dying, a coordinator tick) share the one queue, so ties between them and the links'
//! events are broken the same way whoever drives the model.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use xfd_core::scheduler::{IndexHasher, Transfer};

use crate::sim::SimConfig;

/// Fixed hash keys: iteration order, hence the whole model, is the same from run to run. The sets of
/// flows on a link are iterated, and the order decides which of two flows due at the same instant
/// finishes first: they keep the hasher the simulator's published results were made with.
type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<DefaultHasher>>;
/// Maps only looked up, never iterated: the scheduler's multiplicative hash of small integers is several
/// times cheaper, and changes no result.
type LookupMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IndexHasher>>;

struct Flow {
    transfer: Transfer,
    left: f64,
    rate: f64,
    since: f64,
    version: u64,
    flowing: bool,
}

#[derive(PartialEq)]
struct Event<E> {
    at: f64,
    kind: EventKind<E>,
}

#[derive(PartialEq)]
enum EventKind<E> {
    /// A flow's latency has passed: its bytes start to move.
    Start(u64, u64),
    /// A flow is done if its version still matches (its rate was not changed meanwhile).
    Finish(u64, u64),
    /// The caller's own event.
    Other(E),
}

impl<E: PartialEq> Eq for Event<E> {}
impl<E: PartialEq> Ord for Event<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.total_cmp(&self.at) // earliest first from the max-heap
    }
}
impl<E: PartialEq> PartialOrd for Event<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What the next event was.
pub enum Happened<E> {
    /// A transfer delivered its last byte.
    Finished(Transfer),
    /// The caller's own event.
    Other(E),
    /// Nothing the caller needs to act on: bytes began to move, or a finish was rescheduled.
    Nothing,
}

/// The links of one run and the transfers on them.
pub struct Fluid<E> {
    bytes: u64,
    chunk_size: u64,
    origin_bps: f64,
    latency_s: f64,
    /// Each node's capacities, bytes per second.
    pub up: Vec<f64>,
    pub down: Vec<f64>,
    flows: LookupMap<u64, Flow>,
    ids: LookupMap<Transfer, u64>,
    /// Flowing transfers per link: node uploads, node downloads, the origin.
    outgoing: Vec<HashSet<u64>>,
    incoming: Vec<HashSet<u64>>,
    origin: HashSet<u64>,
    /// Events in time order. A flow whose share changes gets a new finish event and its old one stays
    /// behind, superseded (its version no longer matches), until it comes out.
    events: BinaryHeap<Event<E>>,
    /// The caller's events queued.
    others: usize,
    /// Whether superseded events are swept out once they outnumber the live ones. A large run
    /// reschedules each flow many times, and every superseded event costs a push and a pop: sweeping
    /// halves the world's work in the fleet benchmark. Off in the simulator: a sweep reorders the heap,
    /// hence events due at the same instant, and its published results were made without it.
    sweep: bool,
    next_id: u64,
    /// The flows a reshare looks at, kept to save an allocation per reshare.
    affected: Vec<u64>,
    /// The model's time, seconds.
    pub now: f64,
    /// Bytes the origin served, transfers cut short included.
    pub origin_bytes: f64,
}

impl<E: PartialEq> Fluid<E> {
    /// The links of `config`'s run, with each node's capacities given (see [`crate::sim::capacities`]).
    pub fn new(config: &SimConfig, up: Vec<f64>, down: Vec<f64>) -> Self {
        Fluid {
            bytes: config.bytes,
            chunk_size: config.chunk_size,
            origin_bps: config.origin_bps,
            latency_s: config.latency_s,
            outgoing: vec![HashSet::default(); up.len()],
            incoming: vec![HashSet::default(); down.len()],
            up,
            down,
            flows: LookupMap::default(),
            ids: LookupMap::default(),
            origin: HashSet::default(),
            events: BinaryHeap::new(),
            others: 0,
            sweep: false,
            next_id: 0,
            affected: Vec::new(),
            now: 0.0,
            origin_bytes: 0.0,
        }
    }

    /// Sweeps superseded events out of the queue from now on (see `sweep`).
    pub fn sweeping(mut self) -> Self {
        self.sweep = true;
        self
    }

    /// The size of `chunk` in bytes (the last one may be short).
    pub fn chunk_bytes(&self, chunk: u32) -> f64 {
        let start = chunk as u64 * self.chunk_size;
        (self.bytes - start).min(self.chunk_size) as f64
    }

    /// Queues the caller's event `kind` at `at`.
    pub fn schedule(&mut self, at: f64, kind: E) {
        self.others += 1;
        self.events.push(Event {
            at,
            kind: EventKind::Other(kind),
        });
    }

    /// When the next event is due, if any.
    pub fn next_at(&self) -> Option<f64> {
        self.events.peek().map(|event| event.at)
    }

    /// Whether no event is queued.
    pub fn quiet(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether no transfer is under way.
    pub fn idle(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes the next event, moves the clock to it and applies it; `None` when nothing is queued.
    pub fn step(&mut self) -> Option<Happened<E>> {
        let event = self.events.pop()?;
        self.now = event.at;
        Some(match event.kind {
            EventKind::Start(id, version) => {
                self.start(id, version);
                Happened::Nothing
            }
            EventKind::Finish(id, version) => match self.finish(id, version) {
                Some(transfer) => Happened::Finished(transfer),
                None => Happened::Nothing,
            },
            EventKind::Other(kind) => {
                self.others -= 1;
                Happened::Other(kind)
            }
        })
    }

    fn push(&mut self, at: f64, kind: EventKind<E>) {
        self.events.push(Event { at, kind });
        if self.sweep && self.events.len() > 2 * (self.flows.len() + self.others) + 1024 {
            let flows = &self.flows;
            self.events.retain(|event| match event.kind {
                EventKind::Start(id, version) => flows.get(&id).is_some_and(|f| f.version == version && !f.flowing),
                EventKind::Finish(id, version) => flows.get(&id).is_some_and(|f| f.version == version && f.flowing),
                EventKind::Other(_) => true,
            });
        }
    }

    /// A transfer starts now: its bytes flow after the latency.
    pub fn begin(&mut self, transfer: Transfer) {
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
        self.push(self.now + self.latency_s, EventKind::Start(id, 0));
    }

    /// A transfer is called off (its node or source is gone, or a duplicate won): it frees its links now.
    pub fn drop_transfer(&mut self, transfer: Transfer) {
        if let Some(&id) = self.ids.get(&transfer) {
            self.remove(id);
        }
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
        let mut affected = std::mem::take(&mut self.affected);
        affected.clear();
        affected.extend(self.incoming[transfer.node as usize].iter().copied());
        match transfer.source {
            Some(source) => affected.extend(self.outgoing[source as usize].iter().copied()),
            None => affected.extend(self.origin.iter().copied()),
        }
        for &id in &affected {
            self.advance(id);
            let rate = self.share(self.flows[&id].transfer);
            let flow = self.flows.get_mut(&id).expect("affected flow exists");
            if flow.flowing && flow.rate == rate && flow.transfer != transfer {
                continue; // its pending finish event still holds
            }
            flow.rate = rate;
            flow.version += 1;
            let at = self.now + flow.left.max(0.0) / rate;
            let version = flow.version;
            self.push(at, EventKind::Finish(id, version));
        }
        self.affected = affected;
    }

    fn share(&self, transfer: Transfer) -> f64 {
        let node = transfer.node as usize;
        let down = self.down[node] / self.incoming[node].len().max(1) as f64;
        let up = match transfer.source {
            Some(source) => self.up[source as usize] / self.outgoing[source as usize].len().max(1) as f64,
            None => self.origin_bps / self.origin.len().max(1) as f64,
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
