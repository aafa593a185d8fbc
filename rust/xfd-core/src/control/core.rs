//! The coordinator's state machine: reports in, work out. No I/O, no clock of its own (times are
//! given), so it is tested and benchmarked without a network.
//!
//! It wraps the [`Scheduler`] with what the scheduler does not know: names (units and nodes by their
//! ids, peers by their addresses), the digest each unit had when first fetched (a peer's bytes are
//! checked against it), which transfer a report answers, the origin bytes each node counted, and the
//! run's progress.

use std::collections::{HashMap, HashSet};

use super::link::Work;
use super::progress::{NodeState, Progress, Source};
use super::wire::{PeerWork, Report};
use crate::error::ErrorKind;
use crate::scheduler::{Assignment, FailureKind, Scheduler, SchedulerConfig, Transfer};

/// Follow-ups queued behind each peer transfer when the plan leaves it to the coordinator (see
/// [`SchedulerConfig::follow_ups`]): nodes on a control link run them. One keeps a freed slot busy as
/// long as the coordinator answers within a transfer's time; more would commit chunks to sources
/// earlier than rarest-first needs (measured in `docs/benchmarks.md`, "Control plane").
pub const FOLLOW_UPS: u32 = 1;

/// What the run needs to know about its plan.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// Every unit (chunk or bundle) of the plan and its size in bytes.
    pub units: Vec<(String, u64)>,
    pub unique_bytes: u64,
    pub scheduler: SchedulerConfig,
}

/// A node as the run sees it.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    ip: String,
    /// `ip:port` of its peer server.
    address: String,
    /// Every byte the origin served it, as its engine counted them.
    origin_bytes: u64,
}

/// The coordinator's state.
pub struct Core {
    scheduler: Scheduler,
    progress: Progress,
    units: Vec<String>,
    unit_index: HashMap<String, u32>,
    members: Vec<Member>,
    by_name: HashMap<String, u32>,
    by_address: HashMap<String, u32>,
    digests: Vec<Option<String>>,
    /// Transfers started and not yet answered, by (unit, node): a report names its unit and source.
    active: HashMap<(u32, u32), Vec<Transfer>>,
    /// Follow-ups handed to their nodes that have not started yet (the transfer ahead still runs).
    queued: HashSet<Transfer>,
    failures: Vec<String>,
    deliveries: u64,
}

impl Core {
    pub fn new(plan: RunPlan) -> Core {
        let sizes: Vec<u64> = plan.units.iter().map(|(_, size)| *size).collect();
        let units: Vec<String> = plan.units.into_iter().map(|(id, _)| id).collect();
        let unit_index = units.iter().enumerate().map(|(i, id)| (id.clone(), i as u32)).collect();
        let config = SchedulerConfig {
            follow_ups: Some(plan.scheduler.follow_ups.unwrap_or(FOLLOW_UPS)),
            ..plan.scheduler
        };
        Core {
            scheduler: Scheduler::new(units.len(), 0, Some(&[]), config),
            progress: Progress::new(sizes, plan.unique_bytes),
            digests: vec![None; units.len()],
            units,
            unit_index,
            members: Vec::new(),
            by_name: HashMap::new(),
            by_address: HashMap::new(),
            active: HashMap::new(),
            queued: HashSet::new(),
            failures: Vec::new(),
            deliveries: 0,
        }
    }

    /// A node's agent is up: it serves at `address` (`ip:port`), needs `needs` and already holds
    /// `held` (unit -> digest). Returns its index. Unknown units are an error (a plan mismatch).
    pub fn join(
        &mut self,
        name: &str,
        address: &str,
        needs: &[String],
        held: &[(String, String)],
        now: f64,
    ) -> Result<u32, String> {
        if self.by_name.contains_key(name) {
            return Err(format!("node {name} joined twice"));
        }
        let needs = self.indices(needs)?;
        let held_units = self.indices(held.iter().map(|(unit, _)| unit))?;
        let node = self.scheduler.add_node(&needs);
        let ip = address.rsplit_once(':').map_or(address, |(ip, _)| ip).to_owned();
        self.members.push(Member {
            name: name.to_owned(),
            ip: ip.clone(),
            address: address.to_owned(),
            origin_bytes: 0,
        });
        self.by_name.insert(name.to_owned(), node);
        self.by_address.insert(address.to_owned(), node);
        self.progress.add_node(node, ip, &needs);
        self.scheduler.held(node, &held_units);
        for ((_, digest), &unit) in held.iter().zip(&held_units) {
            self.digests[unit as usize].get_or_insert_with(|| digest.clone());
        }
        for &unit in &held_units {
            if needs.contains(&unit) {
                self.progress
                    .chunk_done(node, unit, Source::Cache, 0.0, None, false, now);
            }
        }
        self.mark_if_done(node, now);
        Ok(node)
    }

    /// A node that takes no part: its agent failed to start or its engine refused the run.
    pub fn add_failed(&mut self, name: &str, ip: &str, reason: &str, lost: bool, now: f64) {
        let node = self.scheduler.add_node(&[]);
        self.scheduler.node_lost(node);
        self.members.push(Member {
            name: name.to_owned(),
            ip: ip.to_owned(),
            address: String::new(),
            origin_bytes: 0,
        });
        self.by_name.insert(name.to_owned(), node);
        self.progress.add_node(node, ip.to_owned(), &[]);
        let state = if lost { NodeState::Lost } else { NodeState::Failed };
        self.progress.set_state(node, state, reason, now);
        if !lost {
            self.failures.push(format!("{ip}: {reason}"));
        }
    }

    pub fn node(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, node: u32) -> &str {
        &self.members[node as usize].name
    }

    pub fn is_alive(&self, node: u32) -> bool {
        self.scheduler.alive(node)
    }

    /// Applies a node's reports.
    pub fn report(&mut self, node: u32, reports: Vec<Report>, now: f64) {
        for report in reports {
            match report {
                Report::Done {
                    unit,
                    peer,
                    seconds,
                    digest,
                } => self.done(node, &unit, peer, seconds, digest, now),
                Report::Failed {
                    unit,
                    peer,
                    error,
                    kind,
                } => self.failed(node, &unit, peer, &error, &kind),
                Report::OriginBytes {
                    bytes,
                    requests,
                    failed,
                } => {
                    self.members[node as usize].origin_bytes = bytes;
                    self.progress.origin_requests(node, requests, failed);
                }
            }
            self.count_promoted(now);
        }
        self.mark_if_done(node, now);
    }

    fn done(&mut self, node: u32, unit: &str, peer: Option<String>, seconds: f64, digest: String, now: f64) {
        let Some(&unit) = self.unit_index.get(unit) else { return };
        if !digest.is_empty() {
            // A transfer that found its unit already here may know no digest.
            self.digests[unit as usize].get_or_insert(digest);
        }
        let Some(transfer) = self.pop_transfer(node, unit, peer.as_deref()) else {
            // A transfer set aside (its source was declared lost, or it lost an endgame race) that
            // delivered all the same: the node holds the unit, and a transfer started again for it
            // must not be waited for as if the unit were still missing.
            self.scheduler.held(node, &[unit]);
            return;
        };
        self.deliveries += 1;
        for loser in self.scheduler.finished(transfer) {
            // The slower copy is shut out by the engine's fence; its late report finds no transfer.
            self.drop_transfer(loser);
        }
        let (source, from) = match transfer.source {
            None => (Source::Origin, None),
            Some(peer) => (Source::Peer, Some(peer)),
        };
        self.progress.chunk_done(node, unit, source, seconds, from, true, now);
    }

    fn failed(&mut self, node: u32, unit: &str, peer: Option<String>, error: &str, kind: &str) {
        let Some(&unit) = self.unit_index.get(unit) else { return };
        let failure = ErrorKind::parse(kind).failure();
        if let Some(transfer) = self.pop_transfer(node, unit, peer.as_deref()) {
            self.scheduler.failed(transfer, failure, error);
        }
        // Fatal at once, or given up by the scheduler (the origin failed it round after round).
        let fatal = failure == FailureKind::Fatal || self.scheduler.failed_chunks().contains_key(&unit);
        self.progress
            .chunk_failed(node, unit, error, ErrorKind::parse(kind).as_str(), fatal);
        if fatal {
            self.failures
                .push(format!("{}: {error}", self.members[node as usize].ip));
        }
    }

    /// The transfer a report of `node` about `unit` answers: the one from `peer` (`None`: the origin).
    fn pop_transfer(&mut self, node: u32, unit: u32, peer: Option<&str>) -> Option<Transfer> {
        let source = match peer {
            None => None,
            Some(address) => Some(*self.by_address.get(address)?),
        };
        self.remove_active(unit, node, |t| t.source == source)
    }

    /// A transfer that will never report (an endgame loser, or one to or from a lost node).
    fn drop_transfer(&mut self, transfer: Transfer) {
        let started = !self.queued.remove(&transfer);
        if self
            .remove_active(transfer.chunk, transfer.node, |t| *t == transfer)
            .is_some()
            && started
        {
            self.progress.transfer_dropped(transfer.node);
        }
    }

    /// Follow-ups whose transfer ahead ended: their nodes started them then.
    fn count_promoted(&mut self, now: f64) {
        for transfer in self.scheduler.take_promoted() {
            if self.queued.remove(&transfer) {
                self.progress.started_transfer(transfer.node, transfer.chunk, now);
            }
        }
    }

    fn remove_active(&mut self, unit: u32, node: u32, which: impl Fn(&Transfer) -> bool) -> Option<Transfer> {
        let transfers = self.active.get_mut(&(unit, node))?;
        let transfer = transfers.swap_remove(transfers.iter().position(which)?);
        if transfers.is_empty() {
            self.active.remove(&(unit, node));
        }
        Some(transfer)
    }

    /// A node is gone (its link broke or went silent, or its agent died): its transfers, and those
    /// from it, are forgotten and their units wanted again.
    pub fn lose(&mut self, node: u32, reason: &str, now: f64) {
        if !self.scheduler.alive(node) {
            return;
        }
        for transfer in self.scheduler.node_lost(node) {
            self.drop_transfer(transfer);
        }
        self.count_promoted(now);
        self.progress.set_state(node, NodeState::Lost, reason, now);
    }

    /// See [`Scheduler::hold_origin`].
    pub fn hold_origin(&mut self, held: bool) {
        self.scheduler.hold_origin(held);
    }

    /// The transfers to start now, as work per node.
    pub fn decide(&mut self, now: f64) -> Vec<(u32, Work)> {
        let mut work: HashMap<u32, Work> = HashMap::new();
        for Assignment { transfer, after } in self.scheduler.next_assignments() {
            self.active
                .entry((transfer.chunk, transfer.node))
                .or_default()
                .push(transfer);
            if after.is_none() {
                self.progress.started_transfer(transfer.node, transfer.chunk, now);
            } else {
                self.queued.insert(transfer);
            }
            let unit = self.units[transfer.chunk as usize].clone();
            let for_node = work.entry(transfer.node).or_default();
            match transfer.source {
                None => for_node.origin.push(unit),
                Some(source) => for_node.peers.push(PeerWork {
                    unit,
                    peer: self.members[source as usize].address.clone(),
                    digest: self.digests[transfer.chunk as usize].clone(),
                    after: after.map(|ahead| self.units[ahead.chunk as usize].clone()),
                }),
            }
        }
        let mut work: Vec<(u32, Work)> = work.into_iter().collect();
        work.sort_by_key(|(node, _)| *node);
        work
    }

    /// Every surviving node holds what it needs, or what is left failed for good.
    pub fn finished(&self) -> bool {
        self.scheduler.done()
    }

    /// Why the run cannot go on, when nothing runs and it is not finished; `None` otherwise.
    pub fn stalled(&self) -> Option<String> {
        if self.finished() || self.scheduler.is_busy() {
            return None;
        }
        let failed = self.scheduler.failed_chunks();
        Some(match failed.iter().next() {
            Some((unit, reason)) => format!(
                "{} units cannot be delivered; first: {}: {reason}",
                failed.len(),
                self.units[*unit as usize]
            ),
            None => "no transfer can make progress (every holder of a missing unit is gone or penalized)".into(),
        })
    }

    pub fn set_state(&mut self, node: u32, state: NodeState, reason: &str, now: f64) {
        self.progress.set_state(node, state, reason, now);
        if state == NodeState::Failed {
            self.failures
                .push(format!("{}: {reason}", self.members[node as usize].ip));
        }
    }

    fn mark_if_done(&mut self, node: u32, now: f64) {
        if self.scheduler.node_done(node) {
            self.progress.set_state(node, NodeState::Done, "", now);
        }
    }

    fn indices<'a>(&self, units: impl IntoIterator<Item = &'a String>) -> Result<Vec<u32>, String> {
        units
            .into_iter()
            .map(|unit| {
                self.unit_index
                    .get(unit)
                    .copied()
                    .ok_or_else(|| format!("unit {unit} is not in the run's plan"))
            })
            .collect()
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Transfers delivered so far (each counted once, duplicates that lost not included).
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    pub fn origin_refetches(&self) -> u64 {
        self.scheduler.origin_refetches()
    }

    /// Origin bytes per node as its engine counted them, by node name.
    pub fn origin_bytes(&self) -> impl Iterator<Item = (&str, u64)> {
        self.members.iter().map(|m| (m.name.as_str(), m.origin_bytes))
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(units: usize) -> Core {
        Core::new(RunPlan {
            units: (0..units).map(|i| (format!("u{i}"), 100)).collect(),
            unique_bytes: 100 * units as u64,
            scheduler: SchedulerConfig::default(),
        })
    }

    fn all(units: usize) -> Vec<String> {
        (0..units).map(|i| format!("u{i}")).collect()
    }

    fn done(unit: &str, peer: Option<&str>) -> Report {
        Report::Done {
            unit: unit.into(),
            peer: peer.map(str::to_owned),
            seconds: 0.1,
            digest: "d".into(),
        }
    }

    #[test]
    fn a_unit_goes_from_the_origin_to_one_node_then_from_it_to_the_others() {
        let mut core = core(1);
        for (name, address) in [("a", "10.0.0.1:1"), ("b", "10.0.0.2:1"), ("c", "10.0.0.3:1")] {
            core.join(name, address, &all(1), &[], 0.0).unwrap();
        }
        let work = core.decide(0.0);
        assert_eq!(work.len(), 1, "{work:?}");
        let (seeder, seeded) = &work[0];
        assert_eq!(seeded.origin, vec!["u0".to_string()]);
        core.report(*seeder, vec![done("u0", None)], 1.0);
        let work = core.decide(1.0);
        assert_eq!(work.len(), 2);
        let address = format!("10.0.0.{}:1", seeder + 1);
        for (node, to_do) in &work {
            assert_eq!(
                to_do.peers,
                vec![PeerWork {
                    unit: "u0".into(),
                    peer: address.clone(),
                    digest: Some("d".into()),
                    after: None,
                }]
            );
            core.report(*node, vec![done("u0", Some(&address))], 2.0);
        }
        assert!(core.finished());
        assert_eq!(core.deliveries(), 3);
        assert!(
            core.progress()
                .snapshot(2.0, false)
                .nodes
                .iter()
                .all(|n| n.state == NodeState::Done)
        );
    }

    /// Two nodes, one unit: `a` or `b` fetched it from the origin, the other started fetching it from the
    /// first, which is then lost. Returns the core, the lost seeder and the other node.
    fn seeder_lost_while_serving() -> (Core, u32, u32) {
        let mut core = core(1);
        core.join("a", "10.0.0.1:1", &all(1), &[], 0.0).unwrap();
        core.join("b", "10.0.0.2:1", &all(1), &[], 0.0).unwrap();
        let (seeder, _) = core.decide(0.0)[0].clone();
        core.report(seeder, vec![done("u0", None)], 1.0);
        let (leecher, _) = core.decide(1.0)[0].clone();
        core.lose(seeder, "gone", 1.5);
        (core, seeder, leecher)
    }

    /// The hang of a node killed mid-run: a transfer from it was set aside when it was declared lost,
    /// but had delivered; the unit was sent for again. The late report must count.
    #[test]
    fn a_late_report_from_a_transfer_set_aside_still_counts() {
        let (mut core, seeder, leecher) = seeder_lost_while_serving();
        let again = core.decide(1.5);
        assert_eq!(
            again,
            vec![(
                leecher,
                Work {
                    origin: vec!["u0".into()],
                    peers: vec![]
                }
            )]
        );
        let lost_address = format!("10.0.0.{}:1", seeder + 1);
        core.report(leecher, vec![done("u0", Some(&lost_address))], 2.0);
        assert!(core.finished(), "the node holds the unit: nothing is missing");
    }

    /// `a` holds 20 units and serves `b`: one transfer per download slot, and follow-ups behind them
    /// while `b` wants more than its slots.
    fn serving_with_follow_ups() -> (Core, Vec<PeerWork>) {
        let mut core = core(20);
        let held: Vec<(String, String)> = all(20).into_iter().map(|u| (u, "d".into())).collect();
        core.join("a", "10.0.0.1:1", &[], &held, 0.0).unwrap();
        core.join("b", "10.0.0.2:1", &all(20), &[], 0.0).unwrap();
        let work = core.decide(0.0);
        assert_eq!(work.len(), 1);
        (core, work[0].1.peers.clone())
    }

    fn inflight(core: &Core, node: usize) -> usize {
        core.progress().snapshot(1.0, false).nodes[node].inflight as usize
    }

    #[test]
    fn follow_ups_go_out_behind_their_transfer_and_count_once_they_start() {
        let (mut core, peers) = serving_with_follow_ups();
        let slots = SchedulerConfig::default().download_slots as usize;
        let (heads, follow_ups): (Vec<&PeerWork>, Vec<&PeerWork>) = peers.iter().partition(|p| p.after.is_none());
        assert_eq!(heads.len(), slots);
        assert_eq!(follow_ups.len(), 20 - 2 * slots, "until b wants no more than its slots");
        assert!(
            follow_ups
                .iter()
                .all(|f| heads.iter().any(|h| Some(&h.unit) == f.after.as_ref()))
        );
        assert_eq!(inflight(&core, 1), slots, "a queued follow-up is not running");

        // The first head ends: its follow-up starts in its slot, and reports once like any other.
        let follow = follow_ups[0].clone();
        let ahead = follow.after.clone().unwrap();
        core.report(1, vec![done(&ahead, Some("10.0.0.1:1"))], 1.0);
        assert_eq!(inflight(&core, 1), slots);
        let refill = core.decide(1.0);
        let started = refill.iter().flat_map(|(_, w)| &w.peers).filter(|p| p.after.is_none());
        assert_eq!(started.count(), 0, "no slot freed: {refill:?}");
        core.report(1, vec![done(&follow.unit, Some("10.0.0.1:1"))], 2.0);
        assert_eq!(core.deliveries(), 2);
        core.report(1, vec![done(&follow.unit, Some("10.0.0.1:1"))], 2.0);
        assert_eq!(core.deliveries(), 2, "a second report of it answers nothing");
    }

    #[test]
    fn follow_ups_from_a_lost_source_are_dropped_and_their_units_decided_again() {
        let (mut core, peers) = serving_with_follow_ups();
        core.lose(0, "gone", 1.0);
        assert_eq!(inflight(&core, 1), 0, "queued follow-ups were never counted as running");
        let again = core.decide(1.0);
        let mut units: Vec<String> = again[0].1.origin.clone();
        let slots = SchedulerConfig::default().download_slots as usize;
        assert_eq!(units.len(), slots, "from the origin now, one per slot: {again:?}");
        units.retain(|u| peers.iter().any(|p| &p.unit == u));
        assert!(
            !units.is_empty(),
            "units that were queued from the lost source are decided again"
        );
    }

    #[test]
    fn a_node_that_joins_late_is_served_by_those_already_there() {
        let mut core = core(2);
        core.join("a", "10.0.0.1:1", &all(2), &[], 0.0).unwrap();
        for (node, work) in core.decide(0.0) {
            let reports = work.origin.iter().map(|u| done(u, None)).collect();
            core.report(node, reports, 1.0);
        }
        assert!(core.finished());
        core.join("b", "10.0.0.2:1", &all(2), &[("u1".into(), "d".into())], 2.0)
            .unwrap();
        assert!(!core.finished());
        let work = core.decide(2.0);
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].1.peers.len(), 1, "only the unit b lacks, from a: {work:?}");
        assert_eq!(work[0].1.peers[0].unit, "u0");
        assert!(
            core.join("b", "10.0.0.2:1", &[], &[], 2.0).is_err(),
            "a node joins once"
        );
        assert!(
            core.join("c", "10.0.0.3:1", &["nope".into()], &[], 2.0)
                .unwrap_err()
                .contains("nope")
        );
    }

    #[test]
    fn a_run_whose_only_holder_is_lost_goes_back_to_the_origin() {
        let (mut core, seeder, leecher) = seeder_lost_while_serving();
        assert_eq!(core.decide(1.5)[0].1.origin, vec!["u0".to_string()]);
        core.report(leecher, vec![done("u0", None)], 2.0);
        assert!(core.finished());
        assert_eq!(core.origin_refetches(), 1);
        let snapshot = core.progress().snapshot(2.0, false);
        assert_eq!(snapshot.nodes[seeder as usize].state, NodeState::Lost);
    }
}
