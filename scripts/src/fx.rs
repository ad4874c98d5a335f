//! `fx` for scripts: fixed-point numbers as plain Lua integers holding the
//! raw bits of the sim's `Fx` (signed 32.32). See docs/adr/0002-fx-in-lua.md.
//!
//! `+`, `-`, unary minus and comparisons are Lua's own integer operations
//! (exact; `+`/`-` wrap on overflow like all Lua integers). Everything else
//! goes through Rust: `fx(3)`, `fx("1.25")`, `fx.mul`, `fx.div`, `fx.sqrt`,
//! `fx.sin`, `fx.cos`, `fx.atan2`, `fx.abs`, `fx.floor`, `fx.tostring`.
//! Floats are refused everywhere with advice to use `fx`.

use std::sync::atomic::AtomicBool;

use mlua::{Lua, Table};

use crate::raw::{self, Arg, RawFn, Ret};

use metatopia_sim::Fx;

fn rt(msg: String) -> mlua::Error {
    mlua::Error::runtime(msg)
}

fn arg(v: &Arg, f: &str) -> mlua::Result<Fx> {
    match v {
        Arg::Int(i) => Ok(Fx::from_bits(*i)),
        Arg::Float(n) => Err(rt(format!(
            "fx.{f}: got the float {n}; floats differ between machines, build fx values with fx(3) or fx(\"1.5\")"
        ))),
        other => Err(rt(format!(
            "fx.{f}: expected an fx value (an integer), got {}",
            other.type_name()
        ))),
    }
}

/// `fx(v)`: an integer count of units, or decimal text.
pub fn new(v: &Arg) -> mlua::Result<i64> {
    match v {
        Arg::Int(i) => {
            let n = i32::try_from(*i).map_err(|_| {
                rt(format!(
                    "fx({i}): out of range (fx holds -2147483648 to 2147483647)"
                ))
            })?;
            Ok(Fx::from_int(n).to_bits())
        }
        Arg::Str(s) => {
            let text =
                std::str::from_utf8(s).map_err(|_| rt("fx: the text is not UTF-8".into()))?;
            text.parse::<Fx>()
                .map(|f| f.to_bits())
                .map_err(|e| rt(format!("fx({text:?}): {e}")))
        }
        Arg::Float(n) => Err(rt(format!(
            "fx({n}): floats differ between machines; write fx(\"{n}\") for an exact decimal"
        ))),
        other => Err(rt(format!(
            "fx: expected an integer or decimal text, got {}",
            other.type_name()
        ))),
    }
}

fn int(v: Fx) -> mlua::Result<Ret> {
    Ok(Ret::Int(v.to_bits()))
}

/// The functions of the `fx` table, run as C functions ([`raw`]).
const FUNCTIONS: [(&str, RawFn); 12] = [
    ("new", |a| new(&a[0]).map(Ret::Int)),
    ("mul", |a| {
        let (x, y) = (arg(&a[0], "mul")?, arg(&a[1], "mul")?);
        x.checked_mul(y)
            .ok_or_else(|| rt(format!("fx.mul({x}, {y}): overflow")))
            .and_then(int)
    }),
    ("div", |a| {
        let (x, y) = (arg(&a[0], "div")?, arg(&a[1], "div")?);
        if y == Fx::ZERO {
            return Err(rt(format!("fx.div({x}, 0): division by zero")));
        }
        x.checked_div(y)
            .ok_or_else(|| rt(format!("fx.div({x}, {y}): overflow")))
            .and_then(int)
    }),
    ("add", |a| {
        int(arg(&a[0], "add")?.saturating_add(arg(&a[1], "add")?))
    }),
    ("sub", |a| {
        int(arg(&a[0], "sub")?.saturating_sub(arg(&a[1], "sub")?))
    }),
    ("sqrt", |a| {
        let x = arg(&a[0], "sqrt")?;
        x.sqrt()
            .ok_or_else(|| rt(format!("fx.sqrt({x}): negative")))
            .and_then(int)
    }),
    ("sin", |a| int(arg(&a[0], "sin")?.sin())),
    ("cos", |a| int(arg(&a[0], "cos")?.cos())),
    ("atan2", |a| {
        int(Fx::atan2(arg(&a[0], "atan2")?, arg(&a[1], "atan2")?))
    }),
    ("abs", |a| int(arg(&a[0], "abs")?.saturating_abs())),
    ("floor", |a| {
        Ok(Ret::Int(i64::from(arg(&a[0], "floor")?.floor_int())))
    }),
    ("tostring", |a| {
        Ok(Ret::Text(arg(&a[0], "tostring")?.to_string()))
    }),
];

/// The `fx` library table. `memory` is the sandbox's memory fault flag.
pub fn table(lua: &Lua, memory: &AtomicBool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, f) in FUNCTIONS {
        t.set(name, raw::function(lua, memory, f)?)?;
    }
    t.set("ZERO", 0i64)?;
    t.set("ONE", Fx::ONE.to_bits())?;
    t.set("HALF", Fx::ONE.to_bits() / 2)?;
    t.set("PI", Fx::PI.to_bits())?;
    t.set("MAX", Fx::MAX.to_bits())?;
    t.set("MIN", Fx::MIN.to_bits())?;
    t.set("DELTA", Fx::DELTA.to_bits())?;
    Ok(t)
}
