//! `string.find`, `match`, `gmatch` and `gsub` with their work charged to
//! the budget (the matcher itself is [`crate::pattern`]), and the check of
//! `string.format`'s format strings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mlua::{Function, Lua, MultiValue, Table, Value};

use crate::budget::Budget;
use crate::errors::rt;
use crate::pattern;

/// Refuses `%p` (it prints addresses) in a format string.
pub(crate) fn check_format(fmt: &[u8]) -> mlua::Result<()> {
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] == b'%' {
            i += 1;
            while i < fmt.len() && b"-+ #0123456789.".contains(&fmt[i]) {
                i += 1;
            }
            if i < fmt.len() && fmt[i] == b'p' {
                return Err(rt(
                    "string.format: %p prints addresses, which differ between replicas",
                ));
            }
        }
        i += 1;
    }
    Ok(())
}

/// Runs the matcher with its steps charged to the budget; a budget error
/// becomes the budget fault, a pattern error Lua's message.
fn run_matcher<'a, R>(
    budget: &'a Budget,
    src: &'a [u8],
    pat: &'a [u8],
    f: impl FnOnce(
        &mut pattern::Matcher<'a, Box<dyn FnMut(u64) -> bool + 'a>>,
    ) -> Result<R, pattern::PatternError>,
) -> mlua::Result<R> {
    let mut charged = 0u64;
    let charge: Box<dyn FnMut(u64) -> bool + 'a> = Box::new(move |total: u64| {
        let n = total.saturating_sub(charged);
        charged = total;
        budget.charge(n)
    });
    let mut m = pattern::Matcher::new(src, pat, charge);
    let r = f(&mut m).and_then(|r| m.finish().map(|()| r));
    r.map_err(|e| match e {
        pattern::PatternError::Budget => mlua::Error::runtime("instruction budget exhausted"),
        pattern::PatternError::Lua(m) => rt(m),
    })
}

/// A string argument as Lua's `luaL_checklstring` takes it (numbers are
/// converted).
fn str_arg(lua: &Lua, v: Value, n: u32, f: &str) -> mlua::Result<mlua::LuaString> {
    let t = v.type_name();
    match v {
        Value::String(s) => Ok(s),
        v @ (Value::Integer(_) | Value::Number(_)) => lua.coerce_string(v)?.ok_or_else(|| {
            rt(format!(
                "bad argument #{n} to '{f}' (string expected, got {t})"
            ))
        }),
        _ => Err(rt(format!(
            "bad argument #{n} to '{f}' (string expected, got {t})"
        ))),
    }
}

fn opt_int(lua: &Lua, v: Value, n: u32, f: &str) -> mlua::Result<Option<i64>> {
    if v.is_nil() {
        return Ok(None);
    }
    let t = v.type_name();
    lua.coerce_integer(v)?.map(Some).ok_or_else(|| {
        rt(format!(
            "bad argument #{n} to '{f}' (number expected, got {t})"
        ))
    })
}

fn capture_value(lua: &Lua, src: &[u8], c: pattern::Capture) -> mlua::Result<Value> {
    Ok(match c {
        pattern::Capture::Position(p) => Value::Integer(p as i64),
        pattern::Capture::Text(a, b) => Value::String(lua.create_string(&src[a..b])?),
    })
}

fn captures_values(lua: &Lua, src: &[u8], caps: Vec<pattern::Capture>) -> mlua::Result<Vec<Value>> {
    caps.into_iter()
        .map(|c| capture_value(lua, src, c))
        .collect()
}

/// `string.find`, `match`, `gmatch` and `gsub` with counted work
/// ([`pattern`]).
///
/// `in_call` tells whether a handler is running (else the top level is
/// loading).
pub(crate) fn patterns(
    lua: &Lua,
    budget: &Arc<Budget>,
    in_call: fn() -> bool,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, find) in [("find", true), ("match", false)] {
        t.set(name, find_function(lua, budget.clone(), name, find)?)?;
    }
    t.set("gmatch", gmatch_function(lua, budget.clone(), in_call)?)?;
    t.set("gsub", gsub_function(lua, budget.clone())?)?;
    Ok(t)
}

/// `string.find` (`find`) or `string.match`.
fn find_function(
    lua: &Lua,
    b: Arc<Budget>,
    name: &'static str,
    find: bool,
) -> mlua::Result<Function> {
    lua.create_function(
        move |lua, (s, p, init, plain): (Value, Value, Value, Value)| {
            let s = str_arg(lua, s, 1, name)?;
            let p = str_arg(lua, p, 2, name)?;
            let init = opt_int(lua, init, 3, name)?;
            let (src, pat) = (s.as_bytes(), p.as_bytes());
            let init = pattern::init_index(init, src.len());
            if init > src.len() {
                return Ok(MultiValue::from_iter([Value::Nil]));
            }
            if find && (plain.as_boolean().unwrap_or(!plain.is_nil()) || pattern::no_specials(&pat))
            {
                let mut steps = 0;
                let r = pattern::plain_find(&src, &pat, init, &mut steps);
                if !b.charge(steps) {
                    return Err(mlua::Error::runtime("instruction budget exhausted"));
                }
                return Ok(match r {
                    Some((a, e)) => MultiValue::from_iter([
                        Value::Integer(a as i64 + 1),
                        Value::Integer(e as i64),
                    ]),
                    None => MultiValue::from_iter([Value::Nil]),
                });
            }
            let anchor = pat.first() == Some(&b'^');
            let found = run_matcher(&b, &src, &pat, |m| {
                match m.find(init, usize::from(anchor), anchor, None)? {
                    Some((a, e)) => Ok(Some((a, e, m.captures(a, e, !find)?))),
                    None => Ok(None),
                }
            })?;
            let Some((a, e, caps)) = found else {
                return Ok(MultiValue::from_iter([Value::Nil]));
            };
            let mut out = Vec::with_capacity(caps.len() + 2);
            if find {
                out.push(Value::Integer(a as i64 + 1));
                out.push(Value::Integer(e as i64));
            }
            out.extend(captures_values(lua, &src, caps)?);
            Ok(MultiValue::from_iter(out))
        },
    )
}

/// `string.gmatch`: an iterator usable only where it was made (loading or
/// one call).
fn gmatch_function(lua: &Lua, b: Arc<Budget>, in_call: fn() -> bool) -> mlua::Result<Function> {
    lua.create_function(move |lua, (s, p, init): (Value, Value, Value)| {
        let s = str_arg(lua, s, 1, "gmatch")?;
        let p = str_arg(lua, p, 2, "gmatch")?;
        let init = opt_int(lua, init, 3, "gmatch")?;
        let len = s.as_bytes().len();
        let start = pattern::init_index(init, len).min(len + 1);
        // An iterator made while loading would carry its position
        // from call to call (docs/adr/0004): it works during load only.
        let at_load = !in_call();
        let pos = std::sync::Mutex::new((start, None::<usize>));
        let b = b.clone();
        lua.create_function(move |lua, ()| {
            if at_load && in_call() {
                return Err(rt(
                    "a gmatch iterator made while the script loaded cannot be used in a handler (it would keep its position between calls)",
                ));
            }
            let mut pos = pos.lock().map_err(|_| rt("gmatch iterator is broken"))?;
            let (src, pat) = (s.as_bytes(), p.as_bytes());
            let (from, last) = *pos;
            let found = run_matcher(&b, &src, &pat, |m| match m.find(from, 0, false, last)? {
                Some((a, e)) => Ok(Some((e, m.captures(a, e, true)?))),
                None => Ok(None),
            })?;
            match found {
                Some((e, caps)) => {
                    *pos = (e, Some(e));
                    Ok(MultiValue::from_iter(captures_values(lua, &src, caps)?))
                }
                None => {
                    *pos = (len + 1, last);
                    Ok(MultiValue::from_iter([Value::Nil]))
                }
            }
        })
    })
}

/// `string.gsub`, its output bounded by the call's memory limit.
///
/// Long on purpose: one loop keeps Lua's order of work per match (match,
/// replacement, budget charge, memory check) in one place.
fn gsub_function(lua: &Lua, b: Arc<Budget>) -> mlua::Result<Function> {
    lua.create_function(
        move |lua, (s, p, repl, max_n): (Value, Value, Value, Value)| {
            let s = str_arg(lua, s, 1, "gsub")?;
            let p = str_arg(lua, p, 2, "gsub")?;
            if !matches!(
                repl,
                Value::Integer(_)
                    | Value::Number(_)
                    | Value::String(_)
                    | Value::Function(_)
                    | Value::Table(_)
            ) {
                return Err(rt(format!(
                    "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                    repl.type_name()
                )));
            }
            let repl_text = match &repl {
                Value::Integer(_) | Value::Number(_) | Value::String(_) => {
                    Some(str_arg(lua, repl.clone(), 3, "gsub")?)
                }
                _ => None,
            };
            let (src, pat) = (s.as_bytes(), p.as_bytes());
            let max_n = opt_int(lua, max_n, 4, "gsub")?.unwrap_or(src.len() as i64 + 1);
            let anchor = pat.first() == Some(&b'^');
            let cap = b.memory_limit.load(Ordering::Relaxed);
            let mut out: Vec<u8> = Vec::new();
            let (mut at, mut last, mut n) = (0usize, None::<usize>, 0i64);
            while n < max_n {
                // One match, then its replacement (which may call Lua).
                let found = run_matcher(&b, &src, &pat, |m| {
                    match m.find(at, usize::from(anchor), anchor, last)? {
                        Some((a, e)) => {
                            // Only what the replacement uses (an unfinished
                            // capture is an error only when used).
                            let all = match &repl {
                                Value::Function(_) => m.captures(a, e, true)?,
                                _ => Vec::new(),
                            };
                            let first = match &repl {
                                Value::Table(_) => Some(m.one_capture(0, a, e)?),
                                _ => None,
                            };
                            let text = match &repl_text {
                                Some(r) => expand(m, &r.as_bytes(), &src, a, e)?,
                                None => Vec::new(),
                            };
                            Ok(Some((a, e, all, first, text)))
                        }
                        None => Ok(None),
                    }
                })?;
                let Some((a, e, all, first, text)) = found else {
                    break;
                };
                n += 1;
                out.extend_from_slice(&src[at..a]);
                if repl_text.is_some() {
                    out.extend_from_slice(&text);
                } else {
                    let value = replacement(lua, &repl, &src, all, first)?;
                    push_replacement(lua, value, &src[a..e], &mut out)?;
                }
                if !b.charge(out.len() as u64 / 64) {
                    return Err(mlua::Error::runtime("instruction budget exhausted"));
                }
                if out.len() as u64 > cap {
                    b.memory.store(true, Ordering::Relaxed);
                    return Err(rt("memory cap exceeded"));
                }
                at = e;
                last = Some(e);
                if anchor {
                    break;
                }
            }
            out.extend_from_slice(&src[at.min(src.len())..]);
            Ok((lua.create_string(&out)?, n))
        },
    )
}

/// A replacement string with `%0`..`%9` and `%%` expanded for the match
/// `a..e`.
fn expand<'a, C: FnMut(u64) -> bool>(
    m: &mut pattern::Matcher<'a, C>,
    r: &[u8],
    src: &[u8],
    a: usize,
    e: usize,
) -> Result<Vec<u8>, pattern::PatternError> {
    let mut text = Vec::new();
    let mut i = 0;
    while i < r.len() {
        if r[i] != b'%' {
            text.push(r[i]);
            i += 1;
            continue;
        }
        let c = r.get(i + 1).copied().unwrap_or(0);
        match c {
            b'%' => text.push(b'%'),
            b'0' => text.extend_from_slice(&src[a..e]),
            b'1'..=b'9' => match m.one_capture(usize::from(c - b'1'), a, e)? {
                pattern::Capture::Position(p) => text.extend_from_slice(p.to_string().as_bytes()),
                pattern::Capture::Text(x, y) => text.extend_from_slice(&src[x..y]),
            },
            _ => {
                return Err(pattern::PatternError::Lua(
                    "invalid use of '%' in replacement string".into(),
                ));
            }
        }
        i += 2;
    }
    Ok(text)
}

/// What a function or table replacement gives for a match (`all`: its
/// captures for a function, `first`: its first capture for a table).
fn replacement(
    lua: &Lua,
    repl: &Value,
    src: &[u8],
    all: Vec<pattern::Capture>,
    first: Option<pattern::Capture>,
) -> mlua::Result<Value> {
    Ok(match repl {
        Value::Function(f) => {
            let args = captures_values(lua, src, all)?;
            f.call::<Value>(MultiValue::from_iter(args))?
        }
        Value::Table(t) => match first {
            Some(c) => t.get::<Value>(capture_value(lua, src, c)?)?,
            None => Value::Nil,
        },
        _ => Value::Nil,
    })
}

/// Appends a replacement value: `nil` or `false` keeps the match, a string
/// or number replaces it, anything else is an error.
fn push_replacement(
    lua: &Lua,
    value: Value,
    matched: &[u8],
    out: &mut Vec<u8>,
) -> mlua::Result<()> {
    match value {
        Value::Nil | Value::Boolean(false) => out.extend_from_slice(matched),
        v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
            if let Some(t) = lua.coerce_string(v)? {
                out.extend_from_slice(&t.as_bytes());
            }
        }
        other => {
            return Err(rt(format!(
                "invalid replacement value (a {})",
                other.type_name()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_check() {
        assert!(check_format(b"%d %s %5.2f %%p").is_ok());
        assert!(check_format(b"%p").is_err());
        assert!(check_format(b"x %-10p").is_err());
    }
}
