//! Errors as the script's owner reads them.

/// A runtime error with `msg`.
pub(crate) fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

/// Tidy an error for the owner: no addresses, no traceback, bounded.
pub fn describe_error(e: &mlua::Error) -> String {
    let mut inner = e;
    while let mlua::Error::CallbackError { cause, .. } = inner {
        inner = cause;
    }
    let text = match inner {
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        other => other.to_string(),
    };
    let text = text.split("\nstack traceback").next().unwrap_or("").trim();
    let mut out = String::with_capacity(text.len().min(512));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= 500 {
            out.push('…');
            break;
        }
        out.push(c);
        // Addresses never reach the owner.
        if c == '0' && chars.peek() == Some(&'x') {
            chars.next();
            out.push('x');
            let mut hidden = false;
            while chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                chars.next();
                hidden = true;
            }
            if hidden {
                out.push('…');
            }
        }
    }
    out
}
