//! The plan's stores at the origin, opened once when the engine is made.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;

use super::EngineConfig;
use crate::error::{Error, Result};
use crate::origin::{self, OriginCounts, StoreConfig};
use crate::plan::Plan;

/// A store, or why it could not be opened: `(url, message)`.
type OpenedStore = std::result::Result<Arc<dyn ObjectStore>, (String, String)>;

/// Store name -> the store. One that cannot be opened fails only origin fetches, so a node that gets
/// everything from peers (or its cache) does not need it.
pub(super) struct Stores(BTreeMap<String, OpenedStore>);

impl Stores {
    /// Opens every store of `plan` with this node's options for it, counting the object bytes they serve
    /// into `origin`. A node's store at another URL than the plan's is refused.
    pub(super) fn open(plan: &Plan, config: &EngineConfig, origin: &Arc<OriginCounts>) -> Result<Stores> {
        let mut stores = BTreeMap::new();
        for (name, store) in &plan.stores {
            let configured = config.stores.get(name).cloned().unwrap_or_else(|| StoreConfig {
                url: store.url.clone(),
                options: Vec::new(),
            });
            if configured.url != store.url {
                return Err(Error::StoreConfig {
                    url: store.url.clone(),
                    message: format!("this node's store {name:?} is {}", configured.url),
                });
            }
            let opened = origin::open_store(&configured)
                .map(|opened| -> Arc<dyn ObjectStore> { Arc::new(origin::CountingStore::new(opened, origin.clone())) })
                .map_err(|error| match error {
                    Error::StoreConfig { url, message } => (url, message),
                    other => (store.url.clone(), other.to_string()),
                });
            stores.insert(name.clone(), opened);
        }
        Ok(Stores(stores))
    }

    /// The store `name`, or why it cannot serve.
    pub(super) fn get(&self, name: &str) -> Result<Arc<dyn ObjectStore>> {
        match self.0.get(name) {
            Some(Ok(store)) => Ok(store.clone()),
            Some(Err((url, message))) => Err(Error::StoreConfig {
                url: url.clone(),
                message: message.clone(),
            }),
            None => Err(Error::InvalidPlan(format!("unknown store {name:?}"))),
        }
    }
}
