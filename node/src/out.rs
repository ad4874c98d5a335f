//! Standard output for the CLI's verbs: written and flushed line by line,
//! and a reader that went away (`metatopia status | head`) ends the verb
//! quietly. Below both `cli` and the verbs that live beside their routes
//! (`scripts`), so neither imports the other for it.

use anyhow::Result;

/// Standard output was closed by its reader (`metatopia status | head`).
/// Verbs stop quietly on it and the binary exits successfully, as a filter
/// would; nothing is printed about it.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes `text` to standard output and flushes it. A closed stdout is
/// [`StdoutClosed`]; use [`outln!`](crate::outln) in verbs.
pub fn write_out(text: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}
