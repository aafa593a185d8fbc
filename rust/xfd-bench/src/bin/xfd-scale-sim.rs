//! Scale simulation of xfd's scheduler over modeled links (see `xfd_bench::sim`).
//!
//!     cargo run --release -p xfd-bench --bin xfd-scale-sim -- [--nodes 16,64,256,1024] [--gb 1,10,100]
//!         [--failure-rate 0.01] [--heterogeneity 0.3] [--origin-gbps 40] [--node-gbps 25] [--latency-ms 1]
//!         [--chunk-mib 64]
//!
//! Prints one Markdown table row per (nodes, size): simulated time, the lower bound, efficiency, origin
//! amplification, deliveries, and the scheduler's CPU time per decision and in total.

use xfd_bench::sim::{SimConfig, run};

struct Args {
    nodes: Vec<usize>,
    gb: Vec<f64>,
    failure_rate: f64,
    heterogeneity: f64,
    origin_gbps: f64,
    node_gbps: f64,
    latency_ms: f64,
    chunk_mib: f64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        nodes: vec![16, 64, 256, 1024],
        gb: vec![1.0, 10.0, 100.0],
        failure_rate: 0.0,
        heterogeneity: 0.3,
        origin_gbps: 40.0,
        node_gbps: 25.0,
        latency_ms: 1.0,
        chunk_mib: 64.0,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = list(value)?.into_iter().map(|n| n as usize).collect(),
            "--gb" => args.gb = list(value)?,
            "--failure-rate" => args.failure_rate = number()?,
            "--heterogeneity" => args.heterogeneity = number()?,
            "--origin-gbps" => args.origin_gbps = number()?,
            "--node-gbps" => args.node_gbps = number()?,
            "--latency-ms" => args.latency_ms = number()?,
            "--chunk-mib" => args.chunk_mib = number()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

fn list(value: &str) -> Result<Vec<f64>, String> {
    value
        .split(',')
        .map(|v| v.trim().parse().map_err(|_| format!("not a number: {v}")))
        .collect()
}

fn main() {
    let args = parse().unwrap_or_else(|error| {
        eprintln!("xfd-scale-sim: {error}");
        std::process::exit(2);
    });
    println!(
        "origin {} Gb/s, nodes {} Gb/s +-{:.0} %, latency {} ms, failure rate {}, {} MiB chunks\n",
        args.origin_gbps,
        args.node_gbps,
        args.heterogeneity * 100.0,
        args.latency_ms,
        args.failure_rate,
        args.chunk_mib
    );
    println!(
        "| nodes | size | simulated time | T_min | efficiency | origin / unique | lost | deliveries | scheduler CPU | per decision |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &gb in &args.gb {
        for &nodes in &args.nodes {
            let config = SimConfig {
                origin_bps: args.origin_gbps * 1e9 / 8.0,
                node_up_bps: args.node_gbps * 1e9 / 8.0,
                node_down_bps: args.node_gbps * 1e9 / 8.0,
                heterogeneity: args.heterogeneity,
                latency_s: args.latency_ms / 1e3,
                failure_rate: args.failure_rate,
                chunk_size: (args.chunk_mib * 1048576.0) as u64,
                ..SimConfig::datacenter(nodes, (gb * 1e9) as u64)
            };
            let r = run(&config);
            println!(
                "| {nodes} | {gb} GB | {:.1} s{} | {:.1} s | {:.2} | {:.3}x | {} | {} | {:.2} s | {:.1} us |",
                r.seconds,
                if r.done { "" } else { " (STALLED)" },
                r.t_min,
                r.efficiency(),
                r.amplification(),
                r.lost_nodes,
                r.deliveries,
                r.scheduler_cpu_s,
                1e6 * r.scheduler_cpu_s / r.decisions.max(1) as f64
            );
        }
    }
}
