//! The host functions scripts call (`say`, `send`, `set_timer`, writes,
//! `math.random`) and the table the prelude builds the script API from.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mlua::{Lua, MultiValue, Table, Value};

use metatopia_sim::script::Write;
use metatopia_sim::{ElementId, RegionId, State, Vec3};

use super::args::{check_text, element_arg, fx_arg, int_arg, text_arg};
use super::context::{Ctx, in_call, with_ctx};
use super::state::state_index_function;
use super::world::world_table;
use crate::budget::Budget;
use crate::errors::rt;
use crate::raw::{self, Arg, Ret};
use crate::{fx, strings};

/// Long on purpose: one registration per host function in the table the prelude reads.
pub(super) fn install_host(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<Table> {
    let h = lua.create_table()?;
    let b = budget.clone();
    h.set(
        "check",
        lua.create_function(move |lua, args: MultiValue| {
            if let Some(e) = b.fault() {
                return Err(e);
            }
            if let (Some(Value::Boolean(false)), Some(Value::String(msg))) =
                (args.front(), args.get(1))
                && msg.as_bytes() == b"not enough memory"
            {
                b.memory.store(true, Ordering::Relaxed);
                // Room for the error to travel up.
                let _ = lua.set_memory_limit(lua.used_memory() + 256 * 1024);
                return Err(rt("memory cap exceeded"));
            }
            Ok(args)
        })?,
    )?;
    let b = budget.clone();
    h.set(
        "faulted",
        lua.create_function(move |_, ()| Ok(b.fault().is_some()))?,
    )?;
    h.set(
        "check_format",
        lua.create_function(|_, fmt: Value| match fmt {
            Value::String(s) => strings::check_format(&s.as_bytes()),
            _ => Ok(()),
        })?,
    )?;
    h.set(
        "random",
        lua.create_function(|_, args: MultiValue| {
            let a: Vec<Value> = args.into_iter().collect();
            with_ctx(|ctx, _| {
                let r = &mut ctx.rng;
                match a.as_slice() {
                    [] => Ok(Value::Number(r.next_f64())),
                    [m] => {
                        let m = int_arg(&Arg::of(m), "math.random(m)")?;
                        if m == 0 {
                            return Ok(Value::Integer(r.next_u64() as i64));
                        }
                        if m < 1 {
                            return Err(rt("bad argument #1 to 'random' (interval is empty)"));
                        }
                        Ok(Value::Integer(r.range(1, m)))
                    }
                    [m, n] => {
                        let (m, n) = (
                            int_arg(&Arg::of(m), "math.random(m, n)")?,
                            int_arg(&Arg::of(n), "math.random(m, n)")?,
                        );
                        if m > n {
                            return Err(rt("bad argument #2 to 'random' (interval is empty)"));
                        }
                        Ok(Value::Integer(r.range(m, n)))
                    }
                    _ => Err(rt("wrong number of arguments to 'random'")),
                }
            })
        })?,
    )?;
    let memory = &budget.memory;
    for (name, f) in HOST_FUNCTIONS {
        h.set(name, raw::function(lua, memory, f)?)?;
    }
    h.set("state_index", state_index_function(lua, budget)?)?;
    h.set(
        "touch_state",
        lua.create_function(|_, ()| {
            with_ctx(|ctx, _| {
                ctx.touched = true;
                Ok(())
            })
        })?,
    )?;
    h.set("patterns", strings::patterns(lua, budget, in_call)?)?;
    h.set("world", world_table(lua)?)?;
    h.set("fx", fx::table(lua, memory)?)?;
    Ok(h)
}

/// The host functions a handler calls most, run as C functions
/// ([`raw::function`]): an mlua callback costs several times more per call
/// and touches more memory of a Lua state that is cold at every tick.
const HOST_FUNCTIONS: [(&str, raw::RawFn); 7] = [
    ("say", host_say),
    ("send", host_send),
    ("set_timer", host_set_timer),
    ("set_pos", host_set_pos),
    ("set_name", host_set_name),
    ("impulse", host_impulse),
    ("set_velocity", host_set_velocity),
];

fn host_say(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let text = text_arg(&a[0], "say: text")?;
    let radius = match &a[1] {
        Arg::Nil => None,
        v => Some(fx_arg(v, "say: radius")?),
    };
    with_ctx(|ctx, _| {
        check_text(&text, ctx.limits.text_bytes, "say: text")?;
        push_send_count(ctx)?;
        ctx.out.says.push((text, radius));
        Ok(Ret::None)
    })
}

/// `send(target, text [, region])`: without a region (or with this
/// region's id) a message to a script here; with another region's id, to
/// the script `target` of that region (docs/adr/0016).
fn host_send(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let target = element_arg(&a[0], "send: target")?;
    let body = text_arg(&a[1], "send: message")?;
    let region = match &a[2] {
        Arg::Nil => None,
        v => {
            let r = int_arg(v, "send: region")?;
            Some(RegionId(u32::try_from(r).map_err(|_| {
                rt(format!(
                    "send: region must be a region id (0..=4294967295), got {r}"
                ))
            })?))
        }
    };
    with_ctx(|ctx, world| {
        check_text(&body, ctx.limits.text_bytes, "send: message")?;
        push_send_count(ctx)?;
        match region {
            Some(r) if r != world.region => {
                if body.is_empty() {
                    return Err(rt("send: a message to another region cannot be empty"));
                }
                ctx.out.remote_sends.push((r, target, body));
            }
            _ => ctx.out.sends.push((target, body)),
        }
        Ok(Ret::None)
    })
}

fn host_set_timer(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let id = int_arg(&a[0], "set_timer: id")?;
    let id = u32::try_from(id).map_err(|_| rt("set_timer: id must be in 0..=4294967295"))?;
    let delay = int_arg(&a[1], "set_timer: delay")?;
    if !(1..=1_000_000_000).contains(&delay) {
        return Err(rt("set_timer: delay must be 1..=1000000000 ticks"));
    }
    with_ctx(|ctx, _| {
        if ctx.out.timers.len() >= 64 {
            return Err(rt("set_timer: at most 64 timers per call"));
        }
        ctx.out.timers.push((id, delay as u64));
        Ok(Ret::None)
    })
}

fn host_set_pos(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], "set_pos: element")?;
    let pos = Vec3::new(
        fx_arg(&a[1], "set_pos: x")?,
        fx_arg(&a[2], "set_pos: y")?,
        fx_arg(&a[3], "set_pos: z")?,
    );
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, "set_pos")?;
        if !world.in_bounds(pos) {
            return Err(rt(format!("set_pos: {pos} is outside the region")));
        }
        ctx.out.writes.push(Write::SetPos { element, pos });
        Ok(Ret::None)
    })
}

fn host_set_name(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], "set_name: element")?;
    let name = text_arg(&a[1], "set_name: name")?;
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, "set_name")?;
        let max = world.settings.name_bytes_max;
        check_text(&name, max, "set_name: name")?;
        ctx.out.writes.push(Write::SetName { element, name });
        Ok(Ret::None)
    })
}

fn host_impulse(a: &[Arg; 4]) -> mlua::Result<Ret> {
    body_write(a, "impulse", true)
}

fn host_set_velocity(a: &[Arg; 4]) -> mlua::Result<Ret> {
    body_write(a, "set_velocity", false)
}

/// `impulse` and `set_velocity`.
fn body_write(a: &[Arg; 4], name: &str, impulse: bool) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], name)?;
    let v = Vec3::new(
        fx_arg(&a[1], name)?,
        fx_arg(&a[2], name)?,
        fx_arg(&a[3], name)?,
    );
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, name)?;
        if !world.bodies.contains_key(&element) {
            return Err(rt(format!(
                "{name}: {element} is not a body (spawn it with a body to give it physics)"
            )));
        }
        ctx.out.writes.push(if impulse {
            Write::Impulse {
                element,
                impulse: v,
            }
        } else {
            Write::SetVelocity { element, vel: v }
        });
        Ok(Ret::None)
    })
}

fn push_send_count(ctx: &mut Ctx) -> mlua::Result<()> {
    let n = ctx.out.sends.len() + ctx.out.says.len() + ctx.out.remote_sends.len();
    if n as u64 >= u64::from(ctx.limits.sends_max) {
        return Err(rt(format!(
            "too many messages in one tick (limit {})",
            ctx.limits.sends_max
        )));
    }
    Ok(())
}

fn check_writable(ctx: &Ctx, world: &State, element: ElementId, what: &str) -> mlua::Result<()> {
    if !world.elements.contains_key(&element) {
        return Err(rt(format!("{what}: no element {element}")));
    }
    if !world.is_within(element, ctx.script) {
        return Err(rt(format!(
            "{what}: {element} is not this script's element or one of its parts"
        )));
    }
    Ok(())
}
