//! Scheduler cost at scale, without any network: every transfer completes in a random order.
//!
//!     cargo run --release -p xfd-core --example scheduler_sim -- NODES CHUNKS
//!
//! Prints the deliveries made (NODES x CHUNKS), the CPU time the scheduler took, and the cost per delivery.

use std::time::Instant;

use xfd_core::scheduler::{Scheduler, SchedulerConfig};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (nodes, chunks) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(10_000),
    );
    let config = SchedulerConfig {
        origin_parallelism: 64,
        ..SchedulerConfig::default()
    };
    let mut scheduler = Scheduler::new(chunks, nodes, None, config);
    let mut active = Vec::new();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut deliveries = 0u64;
    let started = Instant::now();
    while !scheduler.done() {
        active.extend(scheduler.next_transfers());
        assert!(!active.is_empty(), "stalled");
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let transfer = active.swap_remove((state % active.len() as u64) as usize);
        scheduler.finished(transfer);
        deliveries += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{nodes} nodes x {chunks} chunks: {deliveries} deliveries in {seconds:.2} s, {:.2} us per delivery",
        1e6 * seconds / deliveries as f64
    );
}
