//! The benchmark origin proxy: forwards unchanged, counts object bytes at the origin's side, caps egress.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xfd_bench::proxy::{Proxy, TokenBucket};

/// An upstream that answers every path with `size` bytes and echoes the Host header it received.
async fn upstream(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                    let host = request.headers().get("host").map(|h| h.to_str().unwrap().to_owned());
                    let response = Response::builder()
                        .header("x-seen-host", host.unwrap_or_default())
                        .body(Full::new(Bytes::from(vec![7u8; size])))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(Proxy::new(upstream, 0).serve(listener));
    address
}

/// One HTTP/1.1 request on its own connection; returns (head, body).
async fn get(address: SocketAddr, method: &str, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: origin.test:9000\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..split]).into_owned(),
        raw[split + 4..].to_vec(),
    )
}

#[tokio::test]
async fn object_gets_are_forwarded_unchanged_and_counted_at_the_origin_side() {
    let front = proxy(upstream(300_000).await).await;
    let (head, body) = get(front, "GET", "/bucket/dir/object.bin").await;
    assert_eq!(body.len(), 300_000);
    assert!(
        head.contains("x-seen-host: origin.test:9000"),
        "Host must reach the origin unchanged: {head}"
    );
    get(front, "GET", "/bucket?list-type=2").await; // a listing: a GET, but not of an object
    let (_, stats) = get(front, "GET", "/__xfd_proxy/stats").await;
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(stats["object_get_bytes"], 300_000);
    assert_eq!(stats["body_bytes"], 600_000);
    assert_eq!(stats["get_requests"], 2);
    let (_, reset) = get(front, "POST", "/__xfd_proxy/reset").await;
    let reset: serde_json::Value = serde_json::from_slice(&reset).unwrap();
    assert_eq!(
        (reset["requests"].as_u64(), reset["object_get_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    let (_, rate) = get(front, "POST", "/__xfd_proxy/rate?bytes_per_sec=1000000").await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&rate).unwrap()["bytes_per_sec"],
        1_000_000
    );
}

#[test]
fn the_bucket_makes_callers_wait_in_proportion_to_what_they_take() {
    let bucket = TokenBucket::new(1_000_000);
    let first = bucket.reserve(100_000); // empty bucket: 0.1 s of debt
    let second = bucket.reserve(100_000); // queued behind the first: 0.2 s
    assert!((first.as_secs_f64() - 0.1).abs() < 0.01, "{first:?}");
    assert!((second.as_secs_f64() - 0.2).abs() < 0.01, "{second:?}");
    assert_eq!(TokenBucket::new(0).reserve(1 << 30), Duration::ZERO, "0 means uncapped");
}
