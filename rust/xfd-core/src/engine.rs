//! The node engine: everything one node does for a plan, behind a small API the runtime drives.
//!
//! - [`Engine::scan`] finds what this node already holds: published files whose record in the node
//!   store matches the plan (cache hits) and chunks of interrupted runs (resume). Held chunks are served
//!   to peers at once. It first removes what killed runs left beside any destination of the node.
//! - [`Engine::fetch_from_origin`] / [`Engine::fetch_from_peer`] bring one chunk into the part file.
//! - When every chunk of an object is in, the file is published (and copied to the object's other
//!   destinations); [`Engine::finish`] then runs the plan's unpacks.
//!
//! Each object has its own lock, so chunks of different objects never wait for each other; disk work
//! that syncs or hashes runs on tokio's blocking pool.
//!
//! One file per job (the map is in docs/engine.md): this one holds the engine's state, its making and
//! its end; each submodule adds one part of the API or one step of a chunk's way in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::assembly;
use crate::error::{Error, Result};
use crate::origin::OriginCounts;
use crate::p2p::P2pClient;
use crate::plan::{Plan, PlanChunk, PlanObject};
use crate::store::{DestinationLock, Store};

mod bundle;
mod claims;
mod config;
mod endgame;
mod events;
mod fetch;
mod linked;
mod object;
mod publish;
mod scan;
mod serving;
mod stores;
mod unpacks;
mod usage;

use bundle::BundleWork;
use claims::Claims;
pub use config::{EngineConfig, localize};
use events::EventQueue;
pub use events::{Event, Source};
pub use fetch::ChunkDone;
pub use linked::{LinkedEngine, Running};
use object::ObjectWork;
pub use scan::ScanReport;
use serving::Serving;
use stores::Stores;

pub struct Engine {
    plan: Arc<Plan>,
    config: EngineConfig,
    /// This node's store: records, resume records and locks of the destinations (see [`crate::store`]).
    store: Arc<Store>,
    /// The plan's stores at the origin.
    stores: Stores,
    objects: BTreeMap<String, Arc<Mutex<ObjectWork>>>,
    /// Chunk id -> where the chunk is in the plan: `(object index, chunk index)`.
    chunks: HashMap<String, (usize, usize)>,
    /// This node's bundles of small objects, by id: scheduled, fetched and served as one chunk each.
    bundles: HashMap<String, Arc<BundleWork>>,
    events: EventQueue,
    /// Where outcomes also go when the engine is on a control link (see [`Engine::tap_reports`]).
    tap: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::control::wire::Report>>>,
    /// `None` when the run has no peer token: this engine then never fetches from peers.
    peers: Option<P2pClient>,
    serving: Serving,
    claims: Claims,
    /// Objects whose part file the disk refused to write: discarded when the engine ends.
    unwritable: Mutex<BTreeSet<String>>,
    /// Set by [`Engine::close`]: no transfer may take the destinations again.
    closed: AtomicBool,
    /// What the origin served this engine: bytes (every attempt included) and requests.
    origin: Arc<OriginCounts>,
}

impl Engine {
    /// Checks the plan against this node's configuration and opens its stores (no network yet).
    pub fn new(plan: Plan, config: EngineConfig) -> Result<Engine> {
        let origin = Arc::new(OriginCounts::default());
        let store = Store::open(&config.state_dir()?)?;
        let stores = Stores::open(&plan, &config, &origin)?;
        let plan = Arc::new(plan);
        let mut objects = BTreeMap::new();
        let mut chunks = HashMap::new();
        let index = plan.index();
        for (at, object) in plan.objects.iter().enumerate() {
            let targets = object::targets_of(&plan, object, index.files_of(&object.id), &config)?;
            if targets.is_empty() {
                continue;
            }
            for (position, chunk) in object.chunks.iter().enumerate() {
                chunks.insert(chunk.id.clone(), (at, position));
            }
            let work = ObjectWork::new(plan.clone(), at, targets);
            objects.insert(object.id.clone(), Arc::new(Mutex::new(work)));
        }
        let bundles = bundle::bundles_of(&plan, &index, &objects)?;
        drop(index);
        Ok(Engine {
            plan,
            store,
            stores,
            objects,
            chunks,
            bundles,
            events: EventQueue::default(),
            tap: Mutex::new(None),
            peers: fetch::peer_client(&config)?,
            serving: Serving::default(),
            claims: Claims::default(),
            unwritable: Mutex::new(BTreeSet::new()),
            closed: AtomicBool::new(false),
            origin,
            config,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Ends this engine's hold on its destinations: gives a refusing disk its space back (the part
    /// files it could not complete are removed; the destinations were never touched), removes part files
    /// with nothing recorded, closes the others, puts the store's records on disk and lets go of every
    /// destination lock. Part files with recorded chunks stay for the next run to resume. Call once the
    /// transfers have ended ([`Engine::stop_server`] and the caller's cancel first): the next run on this
    /// node may start at once, in this very process, while something else still holds a reference to
    /// this engine. Idempotent; `Drop` calls it too.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.record_use(); // once per run: `Drop` closes again
        }
        let unwritable = std::mem::take(&mut *self.unwritable.lock().unwrap());
        for work in self.objects.values() {
            let mut work = work.lock().unwrap();
            // A part file with no chunk recorded (a refused or cancelled run opened it) holds nothing to
            // resume: it goes, so a run that did nothing leaves nothing beside the destinations.
            let nothing_to_resume = work.state.part().is_some_and(|part| part.done().is_empty());
            let discard = (unwritable.contains(&work.object().id) || nothing_to_resume)
                && !work.state.is_published()
                && !work.locks.is_empty()
                && work.locks.iter().all(DestinationLock::still_guards);
            work.state.close_part();
            if discard {
                assembly::discard_part(&self.store, &work.targets[0].destination);
            }
        }
        // Records appended without a sync (chunks, published files) reach the disk before the locks go.
        let _ = self.store.sync();
        for work in self.objects.values() {
            work.lock().unwrap().locks.clear();
        }
    }

    /// Object bytes this engine received from the origin so far: retries, resumed ranges and transfers
    /// cut short (cancelled, failed) included, so it is what the origin served to this node.
    pub fn origin_bytes(&self) -> u64 {
        self.origin.received.load(Ordering::Relaxed)
    }

    /// GETs this engine sent to the origin so far, and those of them that failed.
    pub fn origin_requests(&self) -> (u64, u64) {
        let counts = &self.origin;
        (
            counts.requests.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        )
    }

    /// `true` when every file of the plan for this node is published.
    pub fn is_complete(&self) -> bool {
        self.objects.values().all(|w| w.lock().unwrap().state.is_published())
    }

    fn locate(&self, chunk_id: &str) -> Result<(Arc<Mutex<ObjectWork>>, PlanChunk)> {
        let (object, chunk) = self
            .chunk(chunk_id)
            .ok_or_else(|| Error::InvalidPlan(format!("unknown chunk {chunk_id}")))?;
        Ok((self.objects[&object.id].clone(), chunk.clone()))
    }

    /// The chunk `chunk_id` names on this node, and its object.
    fn chunk(&self, chunk_id: &str) -> Option<(&PlanObject, &PlanChunk)> {
        let &(object, chunk) = self.chunks.get(chunk_id)?;
        let object = &self.plan.objects[object];
        Some((object, &object.chunks[chunk]))
    }

    /// The id of the object of chunk `chunk_id`; empty when the chunk is not this node's.
    fn object_id_of(&self, chunk_id: &str) -> String {
        self.chunk(chunk_id)
            .map(|(object, _)| object.id.clone())
            .unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}
