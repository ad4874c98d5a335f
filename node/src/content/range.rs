//! The `Range` request header (RFC 9110 §14.2), for one representation of
//! a known length: a pure decoder, fuzzed (`fuzz/fuzz_targets/content_range.rs`).
//!
//! Only the `bytes` unit and a single range are honoured:
//! `bytes=a-b`, `bytes=a-` and `bytes=-n`. What the server does with the
//! other forms, as RFC 9110 allows:
//! - a header that does not parse, or another unit: ignored (200, the
//!   whole body);
//! - several ranges (`bytes=0-1,5-6`): ignored (200, the whole body), so a
//!   client never has to decode `multipart/byteranges`;
//! - a single range that selects nothing (`bytes=500-` of a 100-byte body,
//!   `bytes=-0`, any range of an empty body): 416 with
//!   `Content-Range: bytes */LEN`.

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Serve the whole body with 200 (no header, a header we ignore, or
    /// several ranges).
    Whole,
    /// Serve bytes `start..=end` (inclusive, `end < len`) with 206.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Nothing satisfiable: 416.
    Unsatisfiable,
}

/// Longest header value looked at; a longer one is ignored (served whole).
pub const HEADER_BYTES_MAX: usize = 256;

/// Decodes `header` (the `Range` value) for a body of `len` bytes.
pub fn parse(header: &[u8], len: u64) -> Range {
    if header.len() > HEADER_BYTES_MAX {
        return Range::Whole;
    }
    let Ok(text) = std::str::from_utf8(header) else {
        return Range::Whole;
    };
    let text = text.trim();
    let Some((unit, set)) = text.split_once('=') else {
        return Range::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Range::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => {
            let Some(n) = digits(last) else {
                return Range::Whole;
            };
            if n == 0 || len == 0 {
                return Range::Unsatisfiable;
            }
            Range::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        // `a-` or `a-b`.
        (false, _) => {
            let Some(start) = digits(first) else {
                return Range::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match digits(last) {
                    Some(e) if e >= start => e,
                    // `5-3` is invalid syntax: ignored.
                    _ => return Range::Whole,
                }
            };
            if start >= len {
                return Range::Unsatisfiable;
            }
            Range::Part {
                start,
                end: end.min(len - 1),
            }
        }
        (true, true) => Range::Whole,
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces); `None` if
/// empty, not digits, or over `u64`.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The header value of a [`Range::Part`] (`bytes=a-b`): what a client
/// sends to ask for exactly that part again.
pub fn format(start: u64, end: u64) -> String {
    format!("bytes={start}-{end}")
}

/// Checks the decoder's contract on arbitrary input (the fuzz target):
/// never panics, a part lies inside the body, and asking again for a part
/// gives the same part.
pub fn fuzz(data: &[u8]) {
    let (len, header) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l) % (1 << 40), rest),
        None => (0, data),
    };
    if let Range::Part { start, end } = parse(header, len) {
        assert!(start <= end && end < len, "{start}-{end} of {len}");
        assert_eq!(
            parse(format(start, end).as_bytes(), len),
            Range::Part { start, end }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(h: &str, len: u64) -> Range {
        parse(h.as_bytes(), len)
    }

    fn part(start: u64, end: u64) -> Range {
        Range::Part { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-9", 100), part(0, 9));
        assert_eq!(p("bytes=10-19", 100), part(10, 19));
        assert_eq!(p("bytes=90-", 100), part(90, 99));
        assert_eq!(p("bytes=90-1000", 100), part(90, 99));
        assert_eq!(p("bytes=-10", 100), part(90, 99));
        assert_eq!(p("bytes=-1000", 100), part(0, 99));
        assert_eq!(p("Bytes = 0-0", 100), part(0, 0));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(p("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(p("bytes=100-200", 100), Range::Unsatisfiable);
        assert_eq!(p("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Range::Unsatisfiable);
        assert_eq!(p("bytes=-5", 0), Range::Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-3",
            "bytes=+1-2",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(p(h, 100), Range::Whole, "{h:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe], 100), Range::Whole);
        let long = format!("bytes=0-{}", "0".repeat(HEADER_BYTES_MAX));
        assert_eq!(p(&long, 100), Range::Whole);
    }

    #[test]
    fn fuzz_contract_holds_on_examples() {
        fuzz(b"");
        fuzz(b"\x64\0\0\0\0\0\0\0bytes=-7");
        fuzz(b"\x64\0\0\0\0\0\0\0bytes=3-");
    }
}
