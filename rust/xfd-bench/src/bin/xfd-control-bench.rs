//! The control-plane benchmark (see `xfd_bench::fleet`): the real coordinator and scheduler, one real
//! control link per virtual node, transfers timed by the fluid model on the wall clock.
//!
//!     cargo run --release -p xfd-bench --bin xfd-control-bench -- --nodes 1024 --bytes 10GB
//!         [--chunk-mib 64] [--time-scale 1] [--follow-ups 1] [--json]
//!
//! `--bytes` takes a decimal size (`10GB`, `640MiB`, `1e10`). `--follow-ups` sets the transfers queued
//! behind each peer transfer (the coordinator's default without it; 0: none, as before they existed). Prints what the run measured, or with
//! `--json` one JSON object on one line.

use std::time::Duration;

use xfd_bench::fleet::{self, FleetConfig, FleetResult};
use xfd_bench::sim::SimConfig;

struct Args {
    nodes: usize,
    bytes: u64,
    chunk_mib: f64,
    time_scale: f64,
    follow_ups: Option<u32>,
    json: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        nodes: 64,
        bytes: 10_000_000_000,
        chunk_mib: 64.0,
        time_scale: 1.0,
        follow_ups: None,
        json: false,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        if flag == "--json" {
            args.json = true;
            continue;
        }
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--nodes" => {
                args.nodes = value
                    .parse()
                    .map_err(|_| format!("--nodes: not a whole number: {value}"))?
            }
            "--bytes" => args.bytes = size(&value)?,
            "--chunk-mib" => args.chunk_mib = number()?,
            "--time-scale" => args.time_scale = number()?,
            "--follow-ups" => {
                args.follow_ups = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--follow-ups: not a whole number: {value}"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown option {flag} (see the usage at the top of the source)"
                ));
            }
        }
    }
    if args.chunk_mib <= 0.0 {
        return Err(format!("--chunk-mib: must be positive, not {}", args.chunk_mib));
    }
    Ok(args)
}

/// A byte count: a number with an optional unit (`GB`, `MB`, `kB` decimal; `GiB`, `MiB`, `KiB`).
fn size(value: &str) -> Result<u64, String> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => {
            return Err(format!(
                "--bytes: unknown unit {unit:?} in {value} (use GB, MB, GiB, MiB...)"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("--bytes: not a size: {value} (for example 10GB)"))?;
    Ok((number * scale) as u64)
}

fn main() {
    let args = parse().unwrap_or_else(|error| {
        eprintln!("xfd-control-bench: {error}");
        std::process::exit(2);
    });
    let mut sim = SimConfig {
        chunk_size: (args.chunk_mib * 1048576.0) as u64,
        ..SimConfig::datacenter(args.nodes, args.bytes)
    };
    sim.scheduler.follow_ups = args.follow_ups;
    let config = FleetConfig {
        sim,
        time_scale: args.time_scale,
        timeout: Duration::from_secs(1800),
        ..FleetConfig::new(SimConfig::datacenter(args.nodes, args.bytes))
    };
    let result = fleet::run(&config).unwrap_or_else(|error| {
        eprintln!("xfd-control-bench: {error}");
        std::process::exit(1);
    });
    if args.json {
        println!("{}", serde_json::to_string(&result).expect("a result serializes"));
    } else {
        print(&result);
    }
    if result.outcome != "finished" {
        std::process::exit(1);
    }
}

fn print(r: &FleetResult) {
    let mib = r.chunk_size as f64 / 1048576.0;
    println!(
        "{} nodes, {} GB in {} units of {mib} MiB, links slowed {}x",
        r.nodes,
        r.bytes as f64 / 1e9,
        r.units,
        r.time_scale
    );
    println!("outcome            {}", r.outcome);
    println!(
        "wall time          {:.2} s (joins {:.2} s, transfers {:.2} s)",
        r.wall_s, r.join_s, r.transfer_s
    );
    println!("lower bound        {:.2} s", r.lower_bound_s);
    println!(
        "efficiency         {:.3} (simulator on the same case: {:.3})",
        r.efficiency, r.sim_efficiency
    );
    println!(
        "deliveries         {} ({:.0}/s sustained)",
        r.deliveries, r.deliveries_per_s
    );
    println!(
        "origin fetches     {} ({} units not fetched exactly once)",
        r.origin_fetches, r.units_not_fetched_once
    );
    println!("complete nodes     {} of {}", r.complete_nodes, r.nodes);
    println!("coordinator frames {} in, {} out", r.frames_in, r.frames_out);
    println!(
        "CPU                {:.2} s process, {:.2} s coordinator thread, {:.2} s runtime workers ({:.2} s world)",
        r.cpu_s, r.coordinator_cpu_s, r.runtime_cpu_s, r.world_busy_s
    );
    println!(
        "delivery lag       {:.1} ms max, {:.2} ms mean",
        r.max_lag_s * 1e3,
        r.mean_lag_s * 1e3
    );
    println!(
        "slot refill        {:.2} ms mean wait of a freed slot, {} follow-ups started",
        r.mean_refill_s * 1e3,
        r.follow_ups
    );
    println!("peak RSS           {:.0} MiB", r.peak_rss_bytes as f64 / 1048576.0);
    println!(
        "work not started   {} for units already held, {} bad",
        r.ignored_work, r.bad_work
    );
    for (count, why) in &r.link_errors {
        println!("link errors        {count}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_are_decimal_or_binary_by_their_unit() {
        assert_eq!(size("10GB"), Ok(10_000_000_000));
        assert_eq!(size("640MiB"), Ok(640 << 20));
        assert_eq!(size("1e10"), Ok(10_000_000_000));
        assert_eq!(size("4096"), Ok(4096));
        assert!(size("10XB").unwrap_err().contains("unknown unit"));
        assert!(size("GB").unwrap_err().contains("not a size"));
    }
}
