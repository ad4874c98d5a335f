//! `fx` for scripts: fixed-point numbers as plain Lua integers holding the
//! raw bits of the sim's `Fx` (signed 32.32). See docs/adr/0002-fx-in-lua.md.
//!
//! `+`, `-`, unary minus and comparisons are Lua's own integer operations
//! (exact; `+`/`-` wrap on overflow like all Lua integers). Everything else
//! goes through Rust: `fx(3)`, `fx("1.25")`, `fx.mul`, `fx.div`, `fx.sqrt`,
//! `fx.sin`, `fx.cos`, `fx.atan2`, `fx.abs`, `fx.floor`, `fx.tostring`.
//! Floats are refused everywhere with advice to use `fx`.

use mlua::{Lua, Table, Value};

use metatopia_sim::Fx;

fn rt(msg: String) -> mlua::Error {
    mlua::Error::runtime(msg)
}

fn arg(v: &Value, f: &str) -> mlua::Result<Fx> {
    match v {
        Value::Integer(i) => Ok(Fx::from_bits(*i)),
        Value::Number(n) => Err(rt(format!(
            "fx.{f}: got the float {n}; floats differ between machines, build fx values with fx(3) or fx(\"1.5\")"
        ))),
        other => Err(rt(format!(
            "fx.{f}: expected an fx value (an integer), got {}",
            other.type_name()
        ))),
    }
}

/// `fx(v)`: an integer count of units, or decimal text.
pub fn new(v: &Value) -> mlua::Result<i64> {
    match v {
        Value::Integer(i) => {
            let n = i32::try_from(*i).map_err(|_| {
                rt(format!(
                    "fx({i}): out of range (fx holds -2147483648 to 2147483647)"
                ))
            })?;
            Ok(Fx::from_int(n).to_bits())
        }
        Value::String(s) => {
            let text = s.to_str()?;
            text.parse::<Fx>()
                .map(|f| f.to_bits())
                .map_err(|e| rt(format!("fx({:?}): {e}", &*text)))
        }
        Value::Number(n) => Err(rt(format!(
            "fx({n}): floats differ between machines; write fx(\"{n}\") for an exact decimal"
        ))),
        other => Err(rt(format!(
            "fx: expected an integer or decimal text, got {}",
            other.type_name()
        ))),
    }
}

/// The `fx` library table.
pub fn table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("new", lua.create_function(|_, v: Value| new(&v))?)?;
    t.set(
        "mul",
        lua.create_function(|_, (a, b): (Value, Value)| {
            let (a, b) = (arg(&a, "mul")?, arg(&b, "mul")?);
            a.checked_mul(b)
                .map(Fx::to_bits)
                .ok_or_else(|| rt(format!("fx.mul({a}, {b}): overflow")))
        })?,
    )?;
    t.set(
        "div",
        lua.create_function(|_, (a, b): (Value, Value)| {
            let (a, b) = (arg(&a, "div")?, arg(&b, "div")?);
            if b == Fx::ZERO {
                return Err(rt(format!("fx.div({a}, 0): division by zero")));
            }
            a.checked_div(b)
                .map(Fx::to_bits)
                .ok_or_else(|| rt(format!("fx.div({a}, {b}): overflow")))
        })?,
    )?;
    t.set(
        "add",
        lua.create_function(|_, (a, b): (Value, Value)| {
            Ok(arg(&a, "add")?.saturating_add(arg(&b, "add")?).to_bits())
        })?,
    )?;
    t.set(
        "sub",
        lua.create_function(|_, (a, b): (Value, Value)| {
            Ok(arg(&a, "sub")?.saturating_sub(arg(&b, "sub")?).to_bits())
        })?,
    )?;
    t.set(
        "sqrt",
        lua.create_function(|_, a: Value| {
            let a = arg(&a, "sqrt")?;
            a.sqrt()
                .map(Fx::to_bits)
                .ok_or_else(|| rt(format!("fx.sqrt({a}): negative")))
        })?,
    )?;
    t.set(
        "sin",
        lua.create_function(|_, a: Value| Ok(arg(&a, "sin")?.sin().to_bits()))?,
    )?;
    t.set(
        "cos",
        lua.create_function(|_, a: Value| Ok(arg(&a, "cos")?.cos().to_bits()))?,
    )?;
    t.set(
        "atan2",
        lua.create_function(|_, (y, x): (Value, Value)| {
            Ok(Fx::atan2(arg(&y, "atan2")?, arg(&x, "atan2")?).to_bits())
        })?,
    )?;
    t.set(
        "abs",
        lua.create_function(|_, a: Value| Ok(arg(&a, "abs")?.saturating_abs().to_bits()))?,
    )?;
    t.set(
        "floor",
        lua.create_function(|_, a: Value| Ok(i64::from(arg(&a, "floor")?.floor_int())))?,
    )?;
    t.set(
        "tostring",
        lua.create_function(|_, a: Value| Ok(arg(&a, "tostring")?.to_string()))?,
    )?;
    t.set("ZERO", 0i64)?;
    t.set("ONE", Fx::ONE.to_bits())?;
    t.set("HALF", Fx::ONE.to_bits() / 2)?;
    t.set("PI", Fx::PI.to_bits())?;
    t.set("MAX", Fx::MAX.to_bits())?;
    t.set("MIN", Fx::MIN.to_bits())?;
    t.set("DELTA", Fx::DELTA.to_bits())?;
    Ok(t)
}
