//! When a run ends: which published files and unpacked trees it used, for `xfd cache ls` (the artifact
//! each is for, and when it was last used). One append of a few lines per run, whatever its size.

use std::path::PathBuf;

use super::{Engine, localize};

impl Engine {
    /// Records every destination of this node whose file is published (found cached or put there by this
    /// run) and every unpacked tree of the plan in place, with its artifact. Tidying: a record lost only
    /// leaves an older "last used".
    pub(super) fn record_use(&self) {
        let index = self.plan.index();
        let mut uses: Vec<(String, PathBuf)> = Vec::new();
        for (id, work) in &self.objects {
            if !work.lock().unwrap().state.is_published() {
                continue;
            }
            for file in index.files_of(id) {
                if file.applies_to(&self.config.node_labels)
                    && let Ok(path) = localize(&self.config.node_root, &file.destination)
                {
                    uses.push((file.artifact.clone(), path));
                }
            }
        }
        for step in &self.plan.unpacks {
            let Ok(path) = localize(&self.config.node_root, &step.to) else {
                continue;
            };
            let identity = format!("{}:{}", step.object_id, step.format);
            let unpacked = self.store.entry(&path).unpacked;
            if unpacked.is_some_and(|r| r.identity.as_deref() == Some(identity.as_str())) {
                uses.push((step.artifact.clone(), path));
            }
        }
        let _ = self.store.record_use(uses);
    }
}
