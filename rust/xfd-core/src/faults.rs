//! Fault injection: how the system tests make one node die or misbehave at an exact moment.
//!
//! Killing a process from outside lands at a random instant; the reliability suite needs "during
//! publish" or "after the second chunk" exactly. A node's engine is given a spec, a comma-separated list
//! of `point:action` rules, optionally `@n` (the rule fires from the n-th time the point is reached):
//!
//! - points: `origin-fetch` (an origin transfer is about to write), `chunk-recorded` (a chunk's bytes
//!   and its resume record are on disk), `publish` (a complete part file is synced, just before it is
//!   renamed into place), `unpack-entry` (the next archive entry is about to be written into the staging directory),
//!   `serve` (the peer server starts sending a chunk);
//! - actions: `abort` (the process dies at once, as with `kill -9`: no destructor or cleanup runs) at
//!   any point; `corrupt` (flip a byte of every block), `truncate` (end the body early) and `stall`
//!   (send one block, then nothing until the client gives up) at `serve`.
//!
//! An empty spec (the default, and the only value outside tests) injects nothing; checking a point is
//! then one branch on an empty list.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    OriginFetch,
    ChunkRecorded,
    Publish,
    UnpackEntry,
    Serve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Abort,
    Corrupt,
    Truncate,
    Stall,
}

const POINTS: [(&str, Point); 5] = [
    ("origin-fetch", Point::OriginFetch),
    ("chunk-recorded", Point::ChunkRecorded),
    ("publish", Point::Publish),
    ("unpack-entry", Point::UnpackEntry),
    ("serve", Point::Serve),
];

const ACTIONS: [(&str, Action); 4] = [
    ("abort", Action::Abort),
    ("corrupt", Action::Corrupt),
    ("truncate", Action::Truncate),
    ("stall", Action::Stall),
];

#[derive(Debug)]
struct Rule {
    point: Point,
    action: Action,
    from_hit: u64,
    hits: AtomicU64,
}

/// The faults one engine injects. `Faults::default()` injects none.
#[derive(Debug, Default)]
pub struct Faults {
    spec: String,
    rules: Vec<Rule>,
}

impl Faults {
    /// Counts one arrival at `point`; the action of the first rule that fires, if any.
    pub fn at(&self, point: Point) -> Option<Action> {
        self.rules.iter().filter(|rule| rule.point == point).find_map(|rule| {
            let hit = rule.hits.fetch_add(1, Ordering::Relaxed) + 1;
            (hit >= rule.from_hit).then_some(rule.action)
        })
    }

    /// Ends the process here if a rule says so: the state on disk is exactly what a crash leaves.
    pub fn crash_point(&self, point: Point) {
        if self.at(point) == Some(Action::Abort) {
            eprintln!("xfd fault injection: aborting at {}", name_of(point));
            std::process::abort();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl FromStr for Faults {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Faults> {
        let rules = spec
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(parse_rule)
            .collect::<Result<Vec<_>>>()?;
        Ok(Faults {
            spec: spec.trim().to_owned(),
            rules,
        })
    }
}

/// Two fault sets are equal when their specs are (hit counts are run state, not configuration).
impl PartialEq for Faults {
    fn eq(&self, other: &Faults) -> bool {
        self.spec == other.spec
    }
}

impl Eq for Faults {}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

fn parse_rule(rule: &str) -> Result<Rule> {
    let invalid = || {
        let points: Vec<_> = POINTS.iter().map(|(name, _)| *name).collect();
        let actions: Vec<_> = ACTIONS.iter().map(|(name, _)| *name).collect();
        Error::InvalidPlan(format!(
            "fault rule {rule:?} is not point:action[@n] with a point in {points:?} and an action in {actions:?}"
        ))
    };
    let (point, rest) = rule.split_once(':').ok_or_else(invalid)?;
    let (action, from_hit) = match rest.split_once('@') {
        Some((action, n)) => (action, n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(invalid)?),
        None => (rest, 1),
    };
    let point = lookup(&POINTS, point).ok_or_else(invalid)?;
    let action = lookup(&ACTIONS, action).ok_or_else(invalid)?;
    if action != Action::Abort && point != Point::Serve {
        return Err(invalid());
    }
    Ok(Rule {
        point,
        action,
        from_hit,
        hits: AtomicU64::new(0),
    })
}

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(known, _)| *known == name).map(|(_, value)| *value)
}

fn name_of(point: Point) -> &'static str {
    POINTS
        .iter()
        .find(|(_, p)| *p == point)
        .map(|(name, _)| *name)
        .unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_fires_from_its_hit_on_and_only_at_its_point() {
        let faults: Faults = "chunk-recorded:abort@3, serve:stall".parse().unwrap();
        assert_eq!(faults.at(Point::Publish), None);
        assert_eq!(faults.at(Point::ChunkRecorded), None);
        assert_eq!(faults.at(Point::ChunkRecorded), None);
        assert_eq!(faults.at(Point::ChunkRecorded), Some(Action::Abort));
        assert_eq!(faults.at(Point::Serve), Some(Action::Stall));
        assert_eq!(faults.to_string(), "chunk-recorded:abort@3, serve:stall");
    }

    #[test]
    fn an_empty_spec_injects_nothing() {
        let faults: Faults = "".parse().unwrap();
        assert!(faults.is_empty());
        assert_eq!(faults.at(Point::Serve), None);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_choices() {
        for bad in [
            "publish",
            "publish:explode",
            "nowhere:abort",
            "publish:abort@0",
            "publish:corrupt",
        ] {
            let error = bad.parse::<Faults>().unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains("unpack-entry"), "{error}");
        }
    }
}
