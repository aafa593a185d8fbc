//! A node's end of its control link: connects to the coordinator, sends the node's reports in
//! batches, and hands the work it receives to a [`Worker`].
//!
//! One long-lived connection per node and run. Reports are batched by construction: while one frame
//! is being written, the next outcomes queue up and leave together in the following frame, so a busy
//! node sends fewer, larger frames instead of one call per transfer. An idle node sends an empty
//! report every `heartbeat`, so the coordinator can tell a quiet node from a lost one by what it
//! receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::wire::{self, Down, PeerWork, Report, Up};
use crate::error::{Error, Result};

/// How long the handshake may take before the link gives up (the coordinator answers at once).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The coordinator's control address.
    pub coordinator: SocketAddr,
    /// The run's token, shown in the handshake.
    pub token: String,
    /// The node this link speaks for (its id in the run).
    pub node: String,
    /// An idle node sends an empty report this often.
    pub heartbeat: Duration,
}

/// Work for a node: units to fetch from the origin and from peers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Work {
    pub origin: Vec<String>,
    pub peers: Vec<PeerWork>,
}

/// What a node does with its work: starts the transfers at once, in the background, and reports each
/// outcome (success or failure) through the link's report channel.
pub trait Worker: Send + Sync + 'static {
    fn start(&self, work: Work);
}

/// How a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The coordinator ended the run.
    Ended,
    /// The node ended it (its report channel was closed).
    Closed,
}

/// Connects and runs the link until the coordinator ends the run, the node closes the report channel,
/// or the connection breaks (an error).
pub async fn run(
    config: LinkConfig,
    reports: mpsc::UnboundedReceiver<Report>,
    worker: Arc<dyn Worker>,
) -> Result<LinkEnd> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&config))
        .await
        .map_err(|_| {
            Error::Control(format!(
                "no answer from the coordinator at {} within {HANDSHAKE_TIMEOUT:?}",
                config.coordinator
            ))
        })??;
    // Split the buffered stream itself: frames sent right behind the handshake's answer are in its buffer.
    let (read, write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let receive = async move {
        let mut line = Vec::new();
        loop {
            match wire::read_frame::<_, Down>(&mut read, &mut line).await? {
                Some(Down::Work { origin, peers }) => worker.start(Work { origin, peers }),
                Some(Down::End) => return Ok(LinkEnd::Ended),
                None => return Err(Error::Control("the coordinator closed the link".into())),
            }
        }
    };
    tokio::select! {
        ended = receive => ended,
        closed = send_reports(write, reports, config.heartbeat) => closed,
    }
}

async fn connect(config: &LinkConfig) -> Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(config.coordinator)
        .await
        .map_err(|e| Error::Control(format!("cannot reach the coordinator at {}: {e}", config.coordinator)))?;
    // Frames are small and latency-bound: each one is a slot waiting to be refilled.
    stream.set_nodelay(true).ok();
    let mut stream = BufReader::new(stream);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n{}: {}\r\n\r\n",
        wire::PATH,
        config.coordinator,
        config.token,
        wire::PROTOCOL,
        wire::NODE_HEADER,
        config.node,
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(handshake_error)?;
    let status = read_response_head(&mut stream).await?;
    if status != 101 {
        return Err(Error::Control(format!(
            "the coordinator at {} refused the link (HTTP {status}){}",
            config.coordinator,
            if status == 401 { ": wrong run token" } else { "" }
        )));
    }
    Ok(stream)
}

/// Reads the response's status line and headers; returns the status code.
async fn read_response_head(stream: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    stream.read_line(&mut line).await.map_err(handshake_error)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::Control(format!("the coordinator's answer is not HTTP: {:?}", line.trim_end())))?;
    loop {
        line.clear();
        let read = stream.read_line(&mut line).await.map_err(handshake_error)?;
        if read == 0 || line == "\r\n" || line == "\n" {
            return Ok(status);
        }
        if line.len() > 8192 {
            return Err(Error::Control(
                "the coordinator's answer has an oversized header".into(),
            ));
        }
    }
}

fn handshake_error(error: std::io::Error) -> Error {
    Error::Control(format!("handshake with the coordinator failed: {error}"))
}

/// Sends every report as it comes, batched with the ones that queued behind it, and a heartbeat when
/// the node has been quiet for `heartbeat`. Returns when the node closes the channel.
async fn send_reports(
    write: impl AsyncWrite + Unpin,
    mut reports: mpsc::UnboundedReceiver<Report>,
    heartbeat: Duration,
) -> Result<LinkEnd> {
    let mut write = tokio::io::BufWriter::new(write);
    loop {
        let first = match tokio::time::timeout(heartbeat, reports.recv()).await {
            Ok(Some(report)) => Some(report),
            Ok(None) => return Ok(LinkEnd::Closed),
            Err(_) => None, // quiet: an empty report says the node is alive
        };
        let mut events: Vec<Report> = first.into_iter().collect();
        while let Ok(report) = reports.try_recv() {
            events.push(report);
        }
        wire::write_frames(&mut write, &[Up::Report { events }]).await?;
    }
}
