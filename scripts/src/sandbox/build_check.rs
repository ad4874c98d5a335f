//! Whether this build of Lua is deterministic: the string-hash seed is
//! pinned and tables hash by creation number (vendor/lua-src).

use mlua::{Lua, LuaOptions, StdLib};

use super::LoadError;

/// Pairs order of a fixed set of string keys: the same on every machine
/// only if Lua was built with the pinned hash seed (vendor/lua-src's build).
pub fn string_key_order() -> Result<String, LoadError> {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default())
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    lua.load(
        r#"local t = {}
        for _, k in ipairs({"alpha","beta","gamma","delta","epsilon","zeta","eta","theta",
                            "iota","kappa","lambda","mu","nu","xi","omicron","pi"}) do t[k] = true end
        local out = {}
        for k in pairs(t) do out[#out + 1] = k end
        return table.concat(out, ",")"#,
    )
    .eval::<String>()
    .map_err(|e| LoadError::Setup(e.to_string()))
}

/// The order [`string_key_order`] gives with the pinned seed.
pub const PINNED_STRING_KEY_ORDER: &str =
    "kappa,zeta,theta,eta,pi,omicron,xi,gamma,alpha,beta,nu,mu,delta,lambda,iota,epsilon";

/// Pairs order of twelve tables used as keys: the same on every machine
/// only with the patched Lua (vendor/lua-src), which hashes tables by
/// creation number instead of address.
pub fn table_key_order() -> Result<String, LoadError> {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default())
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    lua.load(
        r#"local t, out = {}, {}
        for i = 1, 12 do t[{ id = i }] = true end
        for k in pairs(t) do out[#out + 1] = k.id end
        return table.concat(out, ",")"#,
    )
    .eval::<String>()
    .map_err(|e| LoadError::Setup(e.to_string()))
}

/// The order [`table_key_order`] gives with the patched Lua.
pub const PINNED_TABLE_KEY_ORDER: &str = "1,2,3,4,5,6,7,8,9,10,11,12";

/// Checks that this build of Lua is deterministic (the string-hash seed is
/// pinned, tables hash by creation number). A node must not run scripts
/// otherwise: its replicas would disagree on `pairs` order.
pub fn check_build() -> Result<(), LoadError> {
    let got = string_key_order()?;
    if got != PINNED_STRING_KEY_ORDER {
        return Err(LoadError::Setup(format!(
            "this build of Lua does not pin its string-hash seed (pairs order {got:?}); build with the workspace's patched lua-src (vendor/lua-src), whose build pins it"
        )));
    }
    let got = table_key_order()?;
    if got != PINNED_TABLE_KEY_ORDER {
        return Err(LoadError::Setup(format!(
            "this build of Lua hashes table keys by address (pairs order {got:?}); build with the workspace's patched lua-src (vendor/lua-src)"
        )));
    }
    Ok(())
}
