//! The canonical encoding of a script's persistent `state` table.
//!
//! The sim stores only bytes (`ScriptSlot::state`); this module defines
//! them. Plain data only: booleans, integers (fixed-point values are
//! integers), strings and nested tables. Floats, functions, coroutines and
//! userdata are refused with an error that says what to do instead.
//!
//! Format (all integers little endian):
//! - empty state: zero bytes;
//! - otherwise: version byte [`VERSION`], then the root table;
//! - value: `0` false, `1` true, `2` + i64, `3` + u32 length + bytes,
//!   `4` + u32 count + `count` (key, value) pairs.
//!
//! Keys are booleans, integers or strings, sorted (false < true < integers
//! ascending < strings bytewise), with no duplicates; decoding refuses any
//! other order, so every state has exactly one encoding. Depth is at most
//! [`DEPTH_MAX`]; size is bounded by the caller's byte limit while encoding
//! (so a table that references itself, or a DAG that doubles at each level,
//! stops at the limit instead of exhausting memory).

use std::cmp::Ordering;

use std::ffi::c_int;

use mlua::{Lua, Table, Value, ffi};

/// The encoding version.
pub const VERSION: u8 = 1;
/// Deepest nesting of tables (the root is depth 1).
pub const DEPTH_MAX: usize = 16;

/// Plain data, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A boolean.
    Bool(bool),
    /// An integer (or the raw bits of an `fx`).
    Int(i64),
    /// A string (any bytes).
    Str(Vec<u8>),
    /// A table: sorted, unique keys.
    Table(Vec<(Data, Data)>),
}

/// Why a state cannot be stored or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A value of a type that cannot be stored.
    #[error(
        "state{path} is a {kind}; state holds only booleans, integers, fx values, strings and tables{hint}"
    )]
    Unstorable {
        /// Where, e.g. `.pets[3]`.
        path: String,
        /// The Lua type.
        kind: String,
        /// Advice.
        hint: &'static str,
    },
    /// Nested too deeply (or a table contains itself).
    #[error("state{path} is nested deeper than {DEPTH_MAX} tables (or contains itself)")]
    TooDeep {
        /// Where.
        path: String,
    },
    /// Larger than the region's limit.
    #[error("state is larger than {0} bytes")]
    TooLarge(u32),
    /// Stored bytes that are not a canonical encoding.
    #[error("stored state is corrupt: {0}")]
    Corrupt(&'static str),
    /// The Lua VM refused (e.g. out of memory while decoding).
    #[error("lua: {0}")]
    Lua(String),
}

fn rank(d: &Data) -> u8 {
    match d {
        Data::Bool(_) => 0,
        Data::Int(_) => 1,
        Data::Str(_) => 2,
        Data::Table(_) => 3,
    }
}

/// The canonical key order.
pub fn key_order(a: &Data, b: &Data) -> Ordering {
    match (a, b) {
        (Data::Bool(x), Data::Bool(y)) => x.cmp(y),
        (Data::Int(x), Data::Int(y)) => x.cmp(y),
        (Data::Str(x), Data::Str(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Encodes `data` (the root table), failing past `limit` bytes.
pub fn encode(data: &Data, limit: u32) -> Result<Vec<u8>, CodecError> {
    if matches!(data, Data::Table(entries) if entries.is_empty()) {
        return Ok(Vec::new());
    }
    let mut out = vec![VERSION];
    put(data, &mut out, limit)?;
    Ok(out)
}

fn put(d: &Data, out: &mut Vec<u8>, limit: u32) -> Result<(), CodecError> {
    match d {
        Data::Bool(false) => out.push(0),
        Data::Bool(true) => out.push(1),
        Data::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Data::Str(s) => {
            out.push(3);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        }
        Data::Table(entries) => {
            out.push(4);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (k, v) in entries {
                put(k, out, limit)?;
                put(v, out, limit)?;
            }
        }
    }
    if out.len() as u64 > u64::from(limit) {
        return Err(CodecError::TooLarge(limit));
    }
    Ok(())
}

/// Decodes stored bytes (empty: an empty table).
pub fn decode(bytes: &[u8]) -> Result<Data, CodecError> {
    parse_root(&mut BuildData, bytes).map(|d| d.unwrap_or(Data::Table(Vec::new())))
}

/// Checks that `bytes` are a canonical encoding ([`decode`] would accept
/// them) without building anything.
pub fn check(bytes: &[u8]) -> Result<(), CodecError> {
    parse_root(&mut Check, bytes).map(|_| ())
}

/// What a parse builds, value by value: [`Data`] ([`decode`]), nothing
/// ([`check`]) or Lua values on a stack ([`push_encoded`]). One parser
/// serves all three, so they accept exactly the same encodings.
trait Build {
    /// A built value.
    type V;
    /// A table being built.
    type T;
    fn bool(&mut self, b: bool) -> Self::V;
    fn int(&mut self, i: i64) -> Self::V;
    fn str(&mut self, s: &[u8]) -> Self::V;
    /// Starts a table of `n` entries.
    fn table(&mut self, n: usize) -> Self::T;
    /// Adds an entry (its key and value were built in this order).
    fn entry(&mut self, t: &mut Self::T, k: Self::V, v: Self::V);
    fn end(&mut self, t: Self::T) -> Self::V;
}

struct BuildData;

impl Build for BuildData {
    type V = Data;
    type T = Vec<(Data, Data)>;
    fn bool(&mut self, b: bool) -> Data {
        Data::Bool(b)
    }
    fn int(&mut self, i: i64) -> Data {
        Data::Int(i)
    }
    fn str(&mut self, s: &[u8]) -> Data {
        Data::Str(s.to_vec())
    }
    fn table(&mut self, n: usize) -> Vec<(Data, Data)> {
        Vec::with_capacity(n)
    }
    fn entry(&mut self, t: &mut Vec<(Data, Data)>, k: Data, v: Data) {
        t.push((k, v));
    }
    fn end(&mut self, t: Vec<(Data, Data)>) -> Data {
        Data::Table(t)
    }
}

struct Check;

impl Build for Check {
    type V = ();
    type T = ();
    fn bool(&mut self, _: bool) {}
    fn int(&mut self, _: i64) {}
    fn str(&mut self, _: &[u8]) {}
    fn table(&mut self, _: usize) {}
    fn entry(&mut self, _: &mut (), _: (), _: ()) {}
    fn end(&mut self, _: ()) {}
}

/// A key as it is compared for the canonical order.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Bool(bool),
    Int(i64),
    Str(&'a [u8]),
}

impl KeyRef<'_> {
    fn order(&self, other: &KeyRef<'_>) -> Ordering {
        let rank = |k: &KeyRef<'_>| match k {
            KeyRef::Bool(_) => 0,
            KeyRef::Int(_) => 1,
            KeyRef::Str(_) => 2,
        };
        match (self, other) {
            (KeyRef::Bool(x), KeyRef::Bool(y)) => x.cmp(y),
            (KeyRef::Int(x), KeyRef::Int(y)) => x.cmp(y),
            (KeyRef::Str(x), KeyRef::Str(y)) => x.cmp(y),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

/// Parses a whole encoding: `None` for the empty state.
fn parse_root<B: Build>(b: &mut B, bytes: &[u8]) -> Result<Option<B::V>, CodecError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes[0] != VERSION {
        return Err(CodecError::Corrupt("unknown version"));
    }
    // The empty state is stored as zero bytes, so an empty root table
    // written out is not canonical (found by the fuzz smoke).
    if bytes.get(1..6) == Some(&[4, 0, 0, 0, 0]) {
        return Err(CodecError::Corrupt(
            "an empty state is stored as zero bytes",
        ));
    }
    let mut at = 1;
    let (v, key) = parse(b, bytes, &mut at, 1)?;
    if key.is_some() {
        return Err(CodecError::Corrupt("root is not a table"));
    }
    if at != bytes.len() {
        return Err(CodecError::Corrupt("trailing bytes"));
    }
    Ok(Some(v))
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], CodecError> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= bytes.len())
        .ok_or(CodecError::Corrupt("truncated"))?;
    let s = &bytes[*at..end];
    *at = end;
    Ok(s)
}

fn u32_at(bytes: &[u8], at: &mut usize) -> Result<u32, CodecError> {
    let s = take(bytes, at, 4)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses one value; returns it with its key form (`None` for a table).
fn parse<'a, B: Build>(
    b: &mut B,
    bytes: &'a [u8],
    at: &mut usize,
    depth: usize,
) -> Result<(B::V, Option<KeyRef<'a>>), CodecError> {
    let tag = take(bytes, at, 1)?[0];
    Ok(match tag {
        0 => (b.bool(false), Some(KeyRef::Bool(false))),
        1 => (b.bool(true), Some(KeyRef::Bool(true))),
        2 => {
            let s = take(bytes, at, 8)?;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(s);
            let i = i64::from_le_bytes(raw);
            (b.int(i), Some(KeyRef::Int(i)))
        }
        3 => {
            let n = u32_at(bytes, at)? as usize;
            let s = take(bytes, at, n)?;
            (b.str(s), Some(KeyRef::Str(s)))
        }
        4 => {
            if depth > DEPTH_MAX {
                return Err(CodecError::Corrupt("nested too deeply"));
            }
            let n = u32_at(bytes, at)? as usize;
            // Each entry takes at least two bytes: bound the allocation.
            if n > (bytes.len() - *at) / 2 {
                return Err(CodecError::Corrupt("count larger than the data"));
            }
            let mut t = b.table(n);
            let mut prev: Option<KeyRef<'a>> = None;
            for _ in 0..n {
                let (k, key) = parse(b, bytes, at, depth + 1)?;
                let Some(key) = key else {
                    return Err(CodecError::Corrupt("table used as a key"));
                };
                if prev.is_some_and(|p| p.order(&key) != Ordering::Less) {
                    return Err(CodecError::Corrupt("keys out of order"));
                }
                prev = Some(key);
                let (v, _) = parse(b, bytes, at, depth + 1)?;
                b.entry(&mut t, k, v);
            }
            (b.end(t), None)
        }
        _ => return Err(CodecError::Corrupt("unknown tag")),
    })
}

fn path_key(path: &str, k: &Data) -> String {
    match k {
        Data::Int(i) => format!("{path}[{i}]"),
        Data::Bool(b) => format!("{path}[{b}]"),
        Data::Str(s) => {
            let s = String::from_utf8_lossy(s);
            if !s.is_empty()
                && s.len() <= 40
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                format!("{path}.{s}")
            } else {
                format!("{path}[{:?}]", s.chars().take(40).collect::<String>())
            }
        }
        Data::Table(_) => format!("{path}[?]"),
    }
}

/// A value of Lua type `ty` that cannot be stored.
fn unstorable(path: &str, ty: c_int, float: bool) -> CodecError {
    let (kind, hint) = match ty {
        ffi::LUA_TNUMBER if float => (
            "float",
            ": floats differ between machines, use fx (fx(\"1.5\"), fx.mul, ...) or integers",
        ),
        ffi::LUA_TFUNCTION => ("function", ": keep functions out of state"),
        ffi::LUA_TTHREAD => ("coroutine", ": coroutines cannot be saved"),
        ffi::LUA_TNIL => ("nil", ""),
        ffi::LUA_TBOOLEAN => ("boolean", ""),
        ffi::LUA_TSTRING => ("string", ""),
        ffi::LUA_TTABLE => ("table", ""),
        ffi::LUA_TLIGHTUSERDATA => ("lightuserdata", ""),
        _ => ("userdata", ""),
    };
    CodecError::Unstorable {
        path: path.to_string(),
        kind: kind.to_string(),
        hint,
    }
}

/// Reads a Lua table as plain data. `limit` bounds the work (entries
/// visited and string bytes), so shared subtables cannot blow up.
#[allow(unsafe_code)]
pub fn from_lua(lua: &Lua, table: &Table, limit: u32) -> Result<Data, CodecError> {
    let mut budget = u64::from(limit);
    // SAFETY: the table is pushed, read and popped with the stack checked
    // first, and only with functions that raise no Lua error and allocate
    // nothing (`lua_next` over a table nobody changes meanwhile, type
    // tests, `lua_tolstring` on strings only), so no error can long-jump
    // over this frame's values.
    lua.exec_raw_lua(|raw| unsafe {
        let l = raw.state();
        if ffi::lua_checkstack(l, 2 * DEPTH_MAX as c_int + 4) == 0 {
            return Err(CodecError::Lua("stack overflow".into()));
        }
        let top = ffi::lua_gettop(l);
        raw.push(table)
            .map_err(|e| CodecError::Lua(e.to_string()))?;
        let r = table_from_stack(l, top + 1, "", 1, &mut budget, limit);
        ffi::lua_settop(l, top);
        r
    })
}

/// [`from_lua`] of the table at absolute stack index `at` of `l`.
///
/// # Safety
/// `l` is a live Lua state that no other thread uses meanwhile, `at` holds
/// a table, and the stack has room for `2 * DEPTH_MAX + 4` more values
/// (`lua_checkstack`). Nothing here raises a Lua error or allocates in Lua
/// (as in [`from_lua`]), so it may run outside a protected call.
#[allow(unsafe_code)]
pub unsafe fn from_stack(
    l: *mut ffi::lua_State,
    at: c_int,
    limit: u32,
) -> Result<Data, CodecError> {
    let mut budget = u64::from(limit);
    // SAFETY: the caller's contract.
    unsafe { table_from_stack(l, at, "", 1, &mut budget, limit) }
}

/// The key or value at absolute stack index `at` as data.
#[allow(unsafe_code)]
unsafe fn value_from_stack(
    l: *mut ffi::lua_State,
    at: c_int,
    path: &dyn Fn() -> String,
    depth: usize,
    budget: &mut u64,
    limit: u32,
) -> Result<Data, CodecError> {
    // SAFETY: as in `from_lua`.
    unsafe {
        let ty = ffi::lua_type(l, at);
        Ok(match ty {
            ffi::LUA_TBOOLEAN => Data::Bool(ffi::lua_toboolean(l, at) != 0),
            ffi::LUA_TNUMBER if ffi::lua_isinteger(l, at) != 0 => {
                Data::Int(ffi::lua_tointegerx(l, at, std::ptr::null_mut()))
            }
            ffi::LUA_TSTRING => {
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, at, &mut len);
                *budget = budget
                    .checked_sub(len as u64)
                    .ok_or(CodecError::TooLarge(limit))?;
                Data::Str(std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec())
            }
            ffi::LUA_TTABLE => table_from_stack(l, at, &path(), depth + 1, budget, limit)?,
            other => return Err(unstorable(&path(), other, true)),
        })
    }
}

/// The table at absolute stack index `at` as data.
#[allow(unsafe_code)]
unsafe fn table_from_stack(
    l: *mut ffi::lua_State,
    at: c_int,
    path: &str,
    depth: usize,
    budget: &mut u64,
    limit: u32,
) -> Result<Data, CodecError> {
    if depth > DEPTH_MAX {
        return Err(CodecError::TooDeep {
            path: path.to_string(),
        });
    }
    let mut entries = Vec::new();
    // SAFETY: as in `from_lua`; each level uses two slots (key, value),
    // checked there for the deepest nesting.
    unsafe {
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, at) != 0 {
            let (k, v) = (ffi::lua_gettop(l) - 1, ffi::lua_gettop(l));
            let entry = budget
                .checked_sub(2)
                .ok_or(CodecError::TooLarge(limit))
                .and_then(|b| {
                    *budget = b;
                    if ffi::lua_type(l, k) == ffi::LUA_TTABLE {
                        return Err(unstorable(&format!("{path} key"), ffi::LUA_TTABLE, false));
                    }
                    let key =
                        value_from_stack(l, k, &|| format!("{path} key"), depth, budget, limit)?;
                    let val =
                        value_from_stack(l, v, &|| path_key(path, &key), depth, budget, limit)?;
                    Ok((key, val))
                });
            match entry {
                Ok(kv) => entries.push(kv),
                Err(e) => {
                    ffi::lua_settop(l, at);
                    return Err(e);
                }
            }
            ffi::lua_settop(l, k);
        }
    }
    entries.sort_by(|a, b| key_order(&a.0, &b.0));
    Ok(Data::Table(entries))
}

/// Builds a fresh Lua table from plain data, inserting keys in canonical
/// order (so its layout, and `pairs` order, depend only on the data). One
/// protected call builds it all.
#[allow(unsafe_code)]
pub fn to_lua(lua: &Lua, data: &Data) -> mlua::Result<Value> {
    // SAFETY: runs inside mlua's protected call; `push` holds only
    // references, so a memory error long-jumps over no destructor.
    unsafe { lua.exec_raw::<Value>((), |l| push(l, data)) }
}

/// Pushes `d` onto the stack of `l` (tables built as [`to_lua`] does).
///
/// # Safety
/// `l` is a live Lua state inside a protected call (a memory error
/// long-jumps out of this function).
#[allow(unsafe_code)]
pub unsafe fn push(l: *mut ffi::lua_State, d: &Data) {
    // SAFETY: see `to_lua`; three slots per level.
    unsafe {
        ffi::luaL_checkstack(l, 3, std::ptr::null());
        match d {
            Data::Bool(b) => ffi::lua_pushboolean(l, c_int::from(*b)),
            Data::Int(i) => ffi::lua_pushinteger(l, *i),
            Data::Str(s) => {
                ffi::lua_pushlstring(l, s.as_ptr().cast(), s.len());
            }
            Data::Table(entries) => {
                ffi::lua_createtable(l, 0, 0);
                for (k, v) in entries {
                    push(l, k);
                    push(l, v);
                    ffi::lua_rawset(l, -3);
                }
            }
        }
    }
}

/// Builds a checked encoding ([`check`]) into a Lua value on the stack
/// (the empty state as an empty table), like `push(l, &decode(bytes)?)`
/// but without building the data first.
///
/// # Safety
/// As [`push`]: `l` is a Lua state inside a protected call (building
/// allocates; a memory error long-jumps, and nothing here owns a value
/// with a destructor). `bytes` passed [`check`]; if they did not, the
/// value pushed is `nil` (never a panic).
#[allow(unsafe_code)]
pub unsafe fn push_encoded(l: *mut ffi::lua_State, bytes: &[u8]) {
    struct Push(*mut ffi::lua_State);
    impl Build for Push {
        type V = ();
        type T = ();
        fn bool(&mut self, b: bool) {
            // SAFETY: the caller's contract; the stack was checked.
            unsafe { ffi::lua_pushboolean(self.0, c_int::from(b)) }
        }
        fn int(&mut self, i: i64) {
            // SAFETY: as above.
            unsafe { ffi::lua_pushinteger(self.0, i) }
        }
        fn str(&mut self, s: &[u8]) {
            // SAFETY: as above.
            unsafe {
                ffi::lua_pushlstring(self.0, s.as_ptr().cast(), s.len());
            }
        }
        fn table(&mut self, _: usize) {
            // SAFETY: as above. Created empty and filled in key order, as
            // `push` does: the table's layout (and so `pairs`) is the same.
            unsafe { ffi::lua_createtable(self.0, 0, 0) }
        }
        fn entry(&mut self, _: &mut (), _: (), _: ()) {
            // SAFETY: as above; the table is below its key and value.
            unsafe { ffi::lua_rawset(self.0, -3) }
        }
        fn end(&mut self, _: ()) {}
    }
    // SAFETY: the caller's contract; three slots per level of nesting.
    unsafe {
        ffi::luaL_checkstack(l, 3 * DEPTH_MAX as c_int + 4, std::ptr::null());
        let top = ffi::lua_gettop(l);
        match parse_root(&mut Push(l), bytes) {
            Ok(Some(())) => {}
            Ok(None) => ffi::lua_createtable(l, 0, 0),
            Err(_) => {
                ffi::lua_settop(l, top);
                ffi::lua_pushnil(l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_canonical() {
        let lua = Lua::new();
        let t: Table = lua
            .load(r#"return { b = 2, a = "x", [3] = true, [-1] = false, nested = { z = { 1, 2, 3 } } }"#)
            .eval()
            .unwrap();
        let d = from_lua(&lua, &t, 65536).unwrap();
        let bytes = encode(&d, 65536).unwrap();
        assert_eq!(decode(&bytes).unwrap(), d);
        // Same data built in another order encodes identically.
        let t2: Table = lua
            .load(r#"local t = {}; t.nested = { z = { 1, 2, 3 } }; t[-1] = false; t[3] = true; t.a = "x"; t.b = 2; return t"#)
            .eval()
            .unwrap();
        assert_eq!(
            encode(&from_lua(&lua, &t2, 65536).unwrap(), 65536).unwrap(),
            bytes
        );
        // Built back into Lua, it reads as the same data.
        let Value::Table(t3) = to_lua(&lua, &d).unwrap() else {
            panic!("to_lua of a table is a table");
        };
        assert_eq!(from_lua(&lua, &t3, 65536).unwrap(), d);
        // Empty state is zero bytes.
        assert!(encode(&Data::Table(vec![]), 10).unwrap().is_empty());
        assert_eq!(decode(&[]).unwrap(), Data::Table(vec![]));
    }

    /// Found by the fuzz smoke (`scripts_args`): an empty root table
    /// written out (version, table of 0 entries) decoded to the empty
    /// state, whose canonical encoding is zero bytes.
    #[test]
    fn an_empty_root_table_written_out_is_refused() {
        let bytes = [VERSION, 4, 0, 0, 0, 0];
        assert!(decode(&bytes).is_err());
        assert!(check(&bytes).is_err());
        // A non-empty root and an empty nested table stay canonical.
        let d = Data::Table(vec![(Data::Int(1), Data::Table(vec![]))]);
        let bytes = encode(&d, 100).unwrap();
        assert_eq!(decode(&bytes).unwrap(), d);
    }

    #[test]
    fn refuses_what_cannot_be_stored() {
        let lua = Lua::new();
        let cases = [
            ("return { x = 1.5 }", "state.x is a float"),
            ("return { f = print }", "state.f is a function"),
            ("return { [{}] = 1 }", "key is a table"),
            ("local t = {}; t.me = t; return t", "deeper than"),
            (
                "local t = {}; for i = 1, 14 do t = { t, t } end; return t",
                "larger than",
            ),
        ];
        for (src, want) in cases {
            let t: Table = lua.load(src).eval().unwrap();
            let e = from_lua(&lua, &t, 4096)
                .and_then(|d| encode(&d, 4096))
                .unwrap_err();
            assert!(e.to_string().contains(want), "{src}: {e}");
        }
    }

    /// The keys of `t` in `pairs` order, as data.
    fn pairs_keys(lua: &Lua, t: &Table) -> Vec<String> {
        let f: mlua::Function = lua
            .load("local t = ...; local out = {} for k in pairs(t) do out[#out + 1] = tostring(k) end return out")
            .into_function()
            .unwrap();
        f.call(t).unwrap()
    }

    /// `push_encoded` builds what `push` of the decoded data builds: the
    /// same data, and the same `pairs` order (the table layout follows the
    /// order of insertion). Bytes `check` refuses are the bytes `decode`
    /// refuses.
    #[test]
    fn push_encoded_is_push_of_decode() {
        let lua = Lua::new();
        let sources = [
            "return {}",
            r#"return { n = 1 }"#,
            r#"return { b = 2, a = "x", [3] = true, [-1] = false, [true] = 0, nested = { z = { 1, 2, 3 }, y = {} } }"#,
            "local t = {} for i = 1, 40 do t['k' .. i] = i; t[i * 7] = 'v' .. i end return t",
        ];
        for src in sources {
            let t: Table = lua.load(src).eval().unwrap();
            let d = from_lua(&lua, &t, 65536).unwrap();
            let bytes = encode(&d, 65536).unwrap();
            assert!(check(&bytes).is_ok());
            let Value::Table(via_data) = to_lua(&lua, &d).unwrap() else {
                panic!("a table");
            };
            // SAFETY: inside mlua's protected call; `push_encoded` holds
            // only references.
            #[allow(unsafe_code)]
            let Value::Table(via_bytes) =
                (unsafe { lua.exec_raw::<Value>((), |l| push_encoded(l, &bytes)) }).unwrap()
            else {
                panic!("a table");
            };
            assert_eq!(from_lua(&lua, &via_bytes, 65536).unwrap(), d, "{src}");
            assert_eq!(
                pairs_keys(&lua, &via_bytes),
                pairs_keys(&lua, &via_data),
                "{src}"
            );
            // Every truncation and a flipped byte: check agrees with
            // decode, and push_encoded of refused bytes pushes nil.
            for cut in 0..bytes.len() {
                let mut bad = bytes[..cut].to_vec();
                assert_eq!(check(&bad).is_ok(), decode(&bad).is_ok(), "{src} cut {cut}");
                if let Some(b) = bad.last_mut() {
                    *b ^= 0x5a;
                }
                assert_eq!(
                    check(&bad).is_ok(),
                    decode(&bad).is_ok(),
                    "{src} flip {cut}"
                );
                if check(&bad).is_err() {
                    // SAFETY: as above.
                    #[allow(unsafe_code)]
                    let v = unsafe { lua.exec_raw::<Value>((), |l| push_encoded(l, &bad)) };
                    assert!(matches!(v, Ok(Value::Nil)), "{src} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn refuses_non_canonical_bytes() {
        // Keys out of order: "b" before "a".
        let mut b = vec![VERSION, 4, 2, 0, 0, 0];
        for k in [b"b", b"a"] {
            b.extend_from_slice(&[3, 1, 0, 0, 0, k[0], 1]);
        }
        assert_eq!(
            decode(&b).unwrap_err(),
            CodecError::Corrupt("keys out of order")
        );
        assert!(decode(&[VERSION, 4, 255, 255, 255, 255]).is_err());
        assert!(decode(&[VERSION, 1]).is_err());
        assert!(decode(&[9]).is_err());
    }
}
