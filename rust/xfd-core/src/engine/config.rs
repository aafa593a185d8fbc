//! What a node is told to run a plan with, and where the plan's absolute paths land on the node.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::origin::{RetryPolicy, StoreConfig};

/// How one node runs a plan.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// The directory that stands for `/` on this node (`/` on a real cluster).
    pub node_root: PathBuf,
    /// Store name -> URL and resolved options (credentials included: they stay on this node).
    pub stores: BTreeMap<String, StoreConfig>,
    pub retry: RetryPolicy,
    /// Re-hash cache hits against their record before trusting them.
    pub deep_verify: bool,
    /// The run's secret for peer transfers: required by this node's server, sent to other nodes'.
    /// Empty: this engine neither serves nor fetches from peers.
    pub peer_token: String,
    /// Fault injection for the system tests (see [`crate::faults`]); empty otherwise.
    pub faults: Arc<Faults>,
    /// This node's Ray labels: files whose `nodes` selector they do not match are not for this node.
    pub node_labels: BTreeMap<String, String>,
    /// The node store's directory ([`crate::store`]): records of what xfd put at the destinations, resume
    /// records and destination locks, all kept out of the user's directories. Empty: `~/.cache/xfd`
    /// (`$HOME` of this process) under the node root, as the Python side passes it by default.
    pub state_dir: PathBuf,
}

impl EngineConfig {
    /// [`EngineConfig::state_dir`], or its default when empty.
    pub fn state_dir(&self) -> Result<PathBuf> {
        if !self.state_dir.as_os_str().is_empty() {
            return Ok(self.state_dir.clone());
        }
        let home = std::env::var("HOME").map_err(|_| {
            let reason = "HOME is not set: give the engine a state_dir (XFD_STATE_DIR)";
            Error::io(
                "locate",
                "~/.cache/xfd",
                std::io::Error::new(std::io::ErrorKind::NotFound, reason),
            )
        })?;
        localize(&self.node_root, &format!("{home}/.cache/xfd"))
    }
}

/// `destination` (absolute, from the plan) under the node root; never outside it.
pub fn localize(node_root: &Path, destination: &str) -> Result<PathBuf> {
    let path = Path::new(destination);
    let mut out = node_root.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            _ => {
                return Err(Error::InvalidPlan(format!(
                    "destination {destination:?} must be absolute and free of '..'"
                )));
            }
        }
    }
    if !path.is_absolute() || out == node_root {
        return Err(Error::InvalidPlan(format!(
            "destination {destination:?} must be an absolute path below /"
        )));
    }
    Ok(out)
}
