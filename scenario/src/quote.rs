//! Quoting user input in error messages, bounded.
//!
//! A file may hold one 3 MB line; an error about it must not print that
//! line (the `toml` crate's own message prints the line and then a caret
//! under every byte of the bad span: the line twice). Everything an error
//! quotes goes through [`cap`]; TOML errors through [`toml_error`].

use std::borrow::Cow;

/// Most characters of input one error message quotes.
pub const QUOTE_CHARS_MAX: usize = 120;

/// Most characters of one error message (which may quote input, e.g. a
/// repeated key).
pub const MESSAGE_CHARS_MAX: usize = 1000;

/// `text` if it has at most `max` characters, else its first `max`
/// followed by `…`.
pub fn cap(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// A TOML error like the `toml` crate's (line, column, the line with a
/// caret, the message), quoting at most [`QUOTE_CHARS_MAX`] characters of
/// the line around the error and of the message.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = cap(e.message().trim_end(), 2 * QUOTE_CHARS_MAX);
    let Some(span) = e.span() else {
        return message.into_owned();
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count();
    // A window of the line: up to 40 characters before the error, the
    // rest after it.
    let before = column.saturating_sub(40);
    let window_start = text[line_start..start]
        .char_indices()
        .nth(before)
        .map_or(start, |(i, _)| line_start + i);
    let window = &text[window_start..line_end];
    let shown = cap(window.trim_end_matches('\r'), QUOTE_CHARS_MAX);
    let lead = if window_start > line_start { "…" } else { "" };
    let caret_at = column - before + lead.chars().count();
    let gutter = " ".repeat(line.to_string().len());
    let caret = " ".repeat(caret_at);
    format!(
        "TOML parse error at line {line}, column {}\n{gutter} |\n{line} | {lead}{shown}\n{gutter} | {caret}^\n{message}",
        column + 1
    )
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct T {
        a: u64,
    }

    fn err(text: &str) -> String {
        let e = toml::from_str::<T>(text).unwrap_err();
        toml_error(text, &e)
    }

    #[test]
    fn cap_counts_characters() {
        assert_eq!(cap("héllo", 5), "héllo");
        assert_eq!(cap("héllo", 2), "hé…");
    }

    #[test]
    fn a_huge_line_is_quoted_briefly_once() {
        let text = format!("a = \"{}\"\n", "x".repeat(3_000_000));
        let msg = err(&text);
        assert!(msg.len() < 1000, "{} bytes: {}", msg.len(), cap(&msg, 500));
        assert!(msg.contains("line 1, column 5"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        assert!(msg.contains('…'), "{msg}");
    }

    #[test]
    fn the_caret_points_at_the_error() {
        let msg = err("# c\na = 1x\n");
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "TOML parse error at line 2, column 5");
        assert_eq!(lines[2], "2 | a = 1x");
        let caret = lines[3].find('^').unwrap();
        assert_eq!(&lines[2][caret..caret + 1], "1");
    }

    #[test]
    fn a_late_error_in_a_long_line_shows_its_surroundings() {
        let text = format!("t = {{ b = \"{}\", c = ] }}\n", "x".repeat(500));
        let msg = err(&text);
        let lines: Vec<&str> = msg.lines().collect();
        assert!(lines[2].starts_with("1 | …"), "{msg}");
        assert!(lines[2].chars().count() < QUOTE_CHARS_MAX + 10, "{msg}");
    }
}
