//! The read-only `world` table: the tick, the time, elements and players
//! as the tick started.

use mlua::{Lua, Table, Value};

use metatopia_sim::PlayerId;

use super::args::{element_arg, text_arg};
use super::context::with_ctx;
use crate::raw::Arg;

fn player_str(p: PlayerId) -> String {
    p.to_string()
}

/// Long on purpose: one short closure per `world` function, the table in one place.
pub(super) fn world_table(lua: &Lua) -> mlua::Result<Table> {
    let w = lua.create_table()?;
    w.set(
        "tick",
        lua.create_function(|_, ()| with_ctx(|_, world| Ok(world.tick as i64)))?,
    )?;
    w.set(
        "time_ms",
        lua.create_function(|_, ()| with_ctx(|_, world| Ok(world.time_ms as i64)))?,
    )?;
    w.set(
        "me",
        lua.create_function(|_, ()| with_ctx(|c, _| Ok(c.script.to_string())))?,
    )?;
    w.set(
        "pos",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.pos")?;
            with_ctx(|_, world| match world.elements.get(&id) {
                Some(el) => Ok((
                    Some(el.pos.x.to_bits()),
                    Some(el.pos.y.to_bits()),
                    Some(el.pos.z.to_bits()),
                )),
                None => Ok((None, None, None)),
            })
        })?,
    )?;
    w.set(
        "name",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.name")?;
            with_ctx(|_, world| Ok(world.elements.get(&id).map(|el| el.name.clone())))
        })?,
    )?;
    w.set(
        "owner",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.owner")?;
            with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .and_then(|el| el.owner)
                    .map(player_str))
            })
        })?,
    )?;
    w.set(
        "parent",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.parent")?;
            with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .and_then(|el| el.parent)
                    .map(|p| p.to_string()))
            })
        })?,
    )?;
    w.set(
        "children",
        lua.create_function(|lua, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.children")?;
            let kids: Vec<String> = with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .map(|el| el.children.iter().map(|k| k.to_string()).collect())
                    .unwrap_or_default())
            })?;
            lua.create_sequence_from(kids)
        })?,
    )?;
    w.set(
        "player_name",
        lua.create_function(|_, p: Value| {
            let text = text_arg(&Arg::of(&p), "world.player_name")?;
            let Ok(id) = text.parse::<PlayerId>() else {
                return Ok(None);
            };
            with_ctx(|_, world| Ok(world.players.get(&id).map(|p| p.name.clone())))
        })?,
    )?;
    Ok(w)
}
