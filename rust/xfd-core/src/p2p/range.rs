//! The `Range` request header, reduced to the one form a chunk transfer needs.

use std::ops::Range;

/// Parses a `Range` header value against a chunk of `chunk_len` bytes.
///
/// Accepted: one range `bytes=a-b` (inclusive, `a <= b < chunk_len`), `bytes=a-` (to the end) or
/// `bytes=-n` (the last `n` bytes, `1 <= n <= chunk_len`). Everything else is `None`, answered with 416:
/// several ranges, other units, inverted ranges, ranges reaching past the chunk (a peer never clamps,
/// since a client asking past the end has a wrong plan and should learn it), numbers that overflow.
pub(crate) fn parse_range(header: &str, chunk_len: u64) -> Option<Range<u64>> {
    let spec = header.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    match (first, last) {
        ("", suffix) => {
            let n = parse_decimal(suffix)?;
            (1..=chunk_len).contains(&n).then(|| chunk_len - n..chunk_len)
        }
        (first, "") => {
            let start = parse_decimal(first)?;
            (start < chunk_len).then_some(start..chunk_len)
        }
        (first, last) => {
            let (start, last) = (parse_decimal(first)?, parse_decimal(last)?);
            (start <= last && last < chunk_len).then(|| start..last + 1)
        }
    }
}

/// A plain decimal number: digits only (no sign, no spaces, no commas), no overflow.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The header value a client sends for `range` (end exclusive, non-empty).
pub(crate) fn format_range(range: &Range<u64>) -> String {
    format!("bytes={}-{}", range.start, range.end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let cases = [
            ("bytes=0-0", 0..1),
            ("bytes=0-99", 0..100),
            ("bytes=10-19", 10..20),
            ("bytes=99-99", 99..100),
            ("bytes=90-", 90..100),
            ("bytes=0-", 0..100),
            ("bytes=-1", 99..100),
            ("bytes=-100", 0..100),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_range(header, 100), Some(expected), "{header}");
        }
    }

    #[test]
    fn refused_forms() {
        let cases = [
            "",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=20-10",
            "bytes=0-100",
            "bytes=100-",
            "bytes=-0",
            "bytes=-101",
            "bytes=0-1,5-6",
            "bytes= 0-1",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1--2",
            "bytes=0-18446744073709551616",
            "bytes=18446744073709551615-18446744073709551615",
            "items=0-1",
            "Bytes=0-1",
        ];
        for header in cases {
            assert_eq!(parse_range(header, 100), None, "{header:?}");
        }
    }

    #[test]
    fn empty_chunk_has_no_satisfiable_range() {
        for header in ["bytes=0-0", "bytes=0-", "bytes=-1"] {
            assert_eq!(parse_range(header, 0), None, "{header}");
        }
    }

    #[test]
    fn formatted_range_parses_back() {
        let range = 7..42;
        assert_eq!(parse_range(&format_range(&range), 100), Some(range));
    }
}
