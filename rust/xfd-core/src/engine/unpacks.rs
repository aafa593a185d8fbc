//! The plan's unpacks, run once the archives they read are published on this node.

use super::{Engine, Event, localize};
use crate::error::{Error, Result};
use crate::plan::{PlanIndex, PlanUnpack};
use crate::unpack::{self, ArchiveFormat, UnpackOptions};

impl Engine {
    /// Runs the plan's unpacks whose archives are published on this node.
    pub async fn finish(&self, options: UnpackOptions) -> Result<Vec<Event>> {
        let mut done = Vec::new();
        let index = self.plan.index();
        for step in &self.plan.unpacks {
            if !self.unpacks_here(step, &index)? {
                continue;
            }
            let event = self.unpack(step, &options).await?;
            self.emit(event.clone());
            done.push(event);
        }
        Ok(done)
    }

    /// `true` when `step`'s archive is one of this node's files; an error when it is but is not
    /// complete here.
    fn unpacks_here(&self, step: &PlanUnpack, index: &PlanIndex<'_>) -> Result<bool> {
        let Some(work) = self.objects.get(&step.object_id) else {
            return Ok(false);
        };
        let archive_here = index
            .files_of(&step.object_id)
            .iter()
            .any(|f| f.destination == step.archive && f.applies_to(&self.config.node_labels));
        if !archive_here {
            return Ok(false); // this archive's artifact targets other nodes
        }
        if !work.lock().unwrap().state.is_published() {
            return Err(Error::InvalidPlan(format!(
                "cannot unpack {}: the archive is not complete on this node",
                step.archive
            )));
        }
        Ok(true)
    }

    async fn unpack(&self, step: &PlanUnpack, options: &UnpackOptions) -> Result<Event> {
        let archive = localize(&self.config.node_root, &step.archive)?;
        let destination = localize(&self.config.node_root, &step.to)?;
        let options = UnpackOptions {
            format: step.format.parse::<ArchiveFormat>()?,
            faults: self.config.faults.clone(),
            ..options.for_plan(step, &self.plan.settings)
        };
        let identity = format!("{}:{}", step.object_id, step.format);
        let (a, d, store) = (archive, destination.clone(), self.store.clone());
        // The unpack locks its destination in the store and removes what a crashed unpack left there.
        let report = tokio::task::spawn_blocking(move || unpack::unpack(&store, &a, &d, &identity, &options))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Event::Unpacked {
            object_id: step.object_id.clone(),
            destination: destination.display().to_string(),
            files: report.files,
            bytes: report.bytes_written,
            skipped: report.skipped,
        })
    }
}
