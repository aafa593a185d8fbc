//! The control-plane benchmark end to end: the real coordinator, one real control link per virtual
//! node, transfers timed by the fluid model. Counts only: timing depends on the machine.

use std::time::Duration;

use xfd_bench::fleet::{self, FleetConfig};
use xfd_bench::sim::SimConfig;

#[test]
fn a_small_fleet_finishes_with_every_unit_everywhere_and_one_origin_copy() {
    let nodes = 16;
    let sim = SimConfig::datacenter(nodes, 640 << 20); // 10 units of 64 MiB
    let config = FleetConfig {
        // Links 4x slower: a second or two of transfers, however slow the machine.
        time_scale: 4.0,
        heartbeat: Duration::from_millis(100),
        timeout: Duration::from_secs(120),
        ..FleetConfig::new(sim)
    };

    let result = fleet::run(&config).unwrap();

    assert_eq!(result.outcome, "finished", "{result:?}");
    assert_eq!(result.units, 10);
    assert_eq!(result.complete_nodes, nodes, "{result:?}");
    assert_eq!(result.origin_fetches, 10, "{result:?}");
    assert_eq!(result.units_not_fetched_once, 0, "{result:?}");
    assert_eq!(result.deliveries, (nodes * 10) as u64, "{result:?}");
    assert_eq!(
        result.reported, result.deliveries,
        "every Done the nodes sent was counted once"
    );
    assert_eq!(
        result.bad_work, 0,
        "every transfer named a known unit and a source holding it"
    );
    assert!(result.frames_in > 0 && result.frames_out > 0, "{result:?}");
}

#[test]
fn a_time_scale_below_one_is_refused() {
    let config = FleetConfig {
        time_scale: 0.5,
        ..FleetConfig::new(SimConfig::datacenter(2, 1 << 20))
    };
    let error = fleet::run(&config).unwrap_err();
    assert!(error.contains("time scale") && error.contains("0.5"), "{error}");
}
