//! The frames of a control link: one JSON object per line, each way, after an HTTP/1.1 upgrade.
//!
//! Units (chunks, or bundles of small files) are named by their plan ids, so a frame means the same on
//! both ends without any shared numbering; the coordinator maps them to the scheduler's dense indices.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// The `Upgrade` token of the handshake; a new version of the frames gets a new token.
pub const PROTOCOL: &str = "xfd-control/2";
/// The path of the handshake request.
pub const PATH: &str = "/v1/control";
/// The header naming the node a link speaks for.
pub const NODE_HEADER: &str = "x-xfd-node";
/// A frame longer than this is refused: the largest real one (a work frame for a node's full download
/// slots of peer transfers) is a few kilobytes.
pub const MAX_FRAME: usize = 4 << 20;

/// Node to coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Up {
    /// What happened on the node since its previous frame, oldest first. An empty report is the
    /// heartbeat an idle node sends, so silence means trouble.
    Report { events: Vec<Report> },
}

/// One outcome on a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Report {
    /// A unit arrived, verified: `peer` is the `ip:port` it came from (`None` from the origin).
    Done {
        unit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        seconds: f64,
        digest: String,
    },
    /// A transfer failed; `kind` is the engine's error kind (`integrity`, `stalled`, `peer`, `busy`,
    /// `origin`, `fatal`).
    Failed {
        unit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        error: String,
        kind: String,
    },
    /// Every byte the origin served this node so far (attempts that failed or were cut short included),
    /// and the GETs it sent and that failed (absent from an older node: 0).
    OriginBytes {
        bytes: u64,
        #[serde(default)]
        requests: u64,
        #[serde(default)]
        failed: u64,
    },
}

impl Report {
    pub fn unit(&self) -> Option<&str> {
        match self {
            Report::Done { unit, .. } | Report::Failed { unit, .. } => Some(unit),
            Report::OriginBytes { .. } => None,
        }
    }
}

/// Coordinator to node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Down {
    /// Transfers to start now: units from the origin, and units from peers (each with the digest the
    /// unit had when first fetched, when known).
    Work {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        origin: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        peers: Vec<PeerWork>,
    },
    /// The run is over for this node: it reports nothing more and closes the link.
    End,
}

/// Fetch `unit` from the peer server at `peer` (`ip:port`): at once, or, with `after`, as a follow-up
/// the moment this node's transfer of unit `after` from the same peer ends (at once if it already has).
/// A follow-up takes over the slots of the transfer it follows, so a node's next transfer does not
/// wait for the coordinator to hear that a slot freed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerWork {
    pub unit: String,
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Writes `frames` as lines and flushes once: a writer that fell behind sends its backlog in one write.
pub async fn write_frames<W, T>(writer: &mut W, frames: &[T]) -> Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buffer = Vec::with_capacity(256 * frames.len());
    for frame in frames {
        serde_json::to_writer(&mut buffer, frame).map_err(|e| Error::Control(format!("encode frame: {e}")))?;
        buffer.push(b'\n');
    }
    writer.write_all(&buffer).await.map_err(broken)?;
    writer.flush().await.map_err(broken)?;
    Ok(())
}

/// Reads the next frame; `None` at a clean end of the stream.
pub async fn read_frame<R, T>(reader: &mut R, line: &mut Vec<u8>) -> Result<Option<T>>
where
    R: AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    line.clear();
    let read = (&mut *reader)
        .take(MAX_FRAME as u64 + 1)
        .read_until(b'\n', line)
        .await
        .map_err(broken)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if line.len() > MAX_FRAME {
            "longer than the limit"
        } else {
            "cut short"
        };
        return Err(Error::Control(format!("a control frame was {why}")));
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| Error::Control(format!("a control frame is not valid: {e}")))
}

fn broken(error: std::io::Error) -> Error {
    Error::Control(format!("the connection broke: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_their_json_lines() {
        let frames = vec![
            Up::Report { events: vec![] },
            Up::Report {
                events: vec![
                    Report::Done {
                        unit: "c1".into(),
                        peer: Some("127.0.0.2:9".into()),
                        seconds: 0.5,
                        digest: "ab".into(),
                    },
                    Report::Failed {
                        unit: "c2".into(),
                        peer: None,
                        error: "gone".into(),
                        kind: "origin".into(),
                    },
                    Report::OriginBytes {
                        bytes: 7,
                        requests: 3,
                        failed: 1,
                    },
                ],
            },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut bytes = Vec::new();
            write_frames(&mut bytes, &frames).await.unwrap();
            let mut reader = &bytes[..];
            let mut line = Vec::new();
            for frame in &frames {
                assert_eq!(
                    read_frame::<_, Up>(&mut reader, &mut line).await.unwrap().as_ref(),
                    Some(frame)
                );
            }
            assert_eq!(read_frame::<_, Up>(&mut reader, &mut line).await.unwrap(), None);
        });
    }

    #[test]
    fn an_older_nodes_origin_bytes_count_no_requests() {
        let report: Report = serde_json::from_str(r#"{"k":"origin_bytes","bytes":7}"#).unwrap();
        let expected = Report::OriginBytes {
            bytes: 7,
            requests: 0,
            failed: 0,
        };
        assert_eq!(report, expected);
    }

    #[test]
    fn a_frame_cut_short_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut reader = &b"{\"t\":\"end\"}"[..];
            let error = read_frame::<_, Down>(&mut reader, &mut Vec::new()).await.unwrap_err();
            assert!(error.to_string().contains("cut short"), "{error}");
        });
    }
}
