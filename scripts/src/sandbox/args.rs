//! Reading and checking the host functions' arguments.

use metatopia_sim::{ElementId, Fx};

use crate::errors::rt;
use crate::raw::Arg;

/// A text argument: a string (numbers are not silently converted).
pub(super) fn text_arg(v: &Arg, what: &str) -> mlua::Result<String> {
    match v {
        Arg::Str(s) => std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| rt(format!("{what} must be UTF-8 text"))),
        other => Err(rt(format!(
            "{what} must be a string, got {}",
            other.type_name()
        ))),
    }
}

pub(super) fn element_arg(v: &Arg, what: &str) -> mlua::Result<ElementId> {
    let s = text_arg(v, what)?;
    s.parse().map_err(|_| {
        rt(format!(
            "{what} must be an element id like \"1.42\", got {s:?}"
        ))
    })
}

pub(super) fn int_arg(v: &Arg, what: &str) -> mlua::Result<i64> {
    match v {
        Arg::Int(i) => Ok(*i),
        Arg::Float(n) => Err(rt(format!(
            "{what} is a float ({n}); world values are integers or fx: use fx(...)"
        ))),
        other => Err(rt(format!(
            "{what} must be an integer, got {}",
            other.type_name()
        ))),
    }
}

/// Text for events, chat and sends: bounded and without control characters
/// other than newlines (the sim checks again at merge).
pub(super) fn check_text(s: &str, max: u32, what: &str) -> mlua::Result<()> {
    if s.len() as u64 > u64::from(max) {
        return Err(rt(format!("{what} is {} bytes, limit {max}", s.len())));
    }
    Ok(())
}

pub(super) fn fx_arg(v: &Arg, what: &str) -> mlua::Result<Fx> {
    int_arg(v, what).map(Fx::from_bits)
}
