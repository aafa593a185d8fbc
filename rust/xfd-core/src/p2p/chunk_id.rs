//! Chunk ids: the only thing a peer may name in a request.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Length of a chunk id's text form: 16 bytes as lower-case hex.
const HEX_LEN: usize = 32;

/// The id of a chunk, 16 bytes written as 32 lower-case hex characters on the wire and in plans.
///
/// Parsing is strict (exactly 32 characters of `0-9a-f`): an id that comes from a request is validated
/// before anything else happens, so no dot, slash, percent sign or upper-case twin of a valid id ever
/// reaches the registry or the disk, and every chunk has exactly one spelling.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 16]);

impl ChunkId {
    /// Wraps raw bytes (for ids computed by the planner rather than parsed).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ChunkId(bytes)
    }

    /// The raw 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32-character lower-case hex form; anything else is [`Error::InvalidChunkId`].
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidChunkId {
            value: text.chars().take(2 * HEX_LEN).collect(),
        };
        if text.len() != HEX_LEN {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or_else(invalid)?;
            let low = hex_value(pair[1]).ok_or_else(invalid)?;
            *byte = (high << 4) | low;
        }
        Ok(ChunkId(bytes))
    }
}

/// Value of one lower-case hex digit; upper case is refused so that each id has one spelling.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl FromStr for ChunkId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        ChunkId::parse(text)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "0123456789abcdef0f1e2d3c4b5a6978";

    #[test]
    fn valid_id_round_trips() {
        let id = ChunkId::parse(VALID).unwrap();
        assert_eq!(id.to_string(), VALID);
        assert_eq!(id.as_bytes()[0], 0x01);
        assert_eq!(ChunkId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn everything_else_is_refused() {
        let too_long = format!("{VALID}0");
        let upper = VALID.to_uppercase();
        let cases = [
            "",
            &VALID[..31],
            too_long.as_str(),
            upper.as_str(),
            "0123456789abcdef0f1e2d3c4b5a697g",
            "../../../../../../../../etc/pass",
            "..%2f..%2fetc%2fpasswd0000000000",
            "/0123456789abcdef0f1e2d3c4b5a697",
            " 0123456789abcdef0f1e2d3c4b5a697",
            "0123456789abcdef0f1e2d3c4b5a697\n",
            "0123456789abcdef0f1e2d3c4b5a69é",
        ];
        for case in cases {
            let err = ChunkId::parse(case).unwrap_err();
            assert!(matches!(err, Error::InvalidChunkId { .. }), "{case:?}: {err}");
        }
    }

    #[test]
    fn error_value_is_bounded() {
        let huge = "x".repeat(10_000);
        match ChunkId::parse(&huge).unwrap_err() {
            Error::InvalidChunkId { value } => assert_eq!(value.len(), 2 * HEX_LEN),
            other => panic!("unexpected {other}"),
        }
    }
}
