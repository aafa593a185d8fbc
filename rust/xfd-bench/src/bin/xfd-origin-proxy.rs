//! The benchmark origin's front door (see `xfd_bench::proxy`).
//!
//!     xfd-origin-proxy UPSTREAM_ADDR [BYTES_PER_SEC]
//!
//! Binds a free port on 127.0.0.1 and prints `listening on 127.0.0.1:PORT` once ready.

use std::io::Write;

use tokio::net::TcpListener;
use xfd_bench::proxy::Proxy;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(upstream) = args.first().and_then(|a| a.parse().ok()) else {
        eprintln!("usage: xfd-origin-proxy UPSTREAM_ADDR [BYTES_PER_SEC]   e.g. 127.0.0.1:8333 100000000");
        std::process::exit(2);
    };
    let rate = args.get(1).map_or(Ok(0), |r| r.parse()).unwrap_or_else(|_| {
        eprintln!("BYTES_PER_SEC must be a whole number (0: uncapped)");
        std::process::exit(2);
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            println!("listening on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            Proxy::new(upstream, rate).serve(listener).await
        })
}
