//! Loading a script: a hardened Lua state, the prelude, the script's top
//! level run once without world access, then everything it made sealed
//! (docs/adr/0004) and its handlers registered for the call path.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use metatopia_sim::ElementId;

use super::api::install_host;
use super::call::HANDLERS;
use super::{MainState, RawRefs, Sandbox};
use crate::budget::{Budget, HOOK_STEP, Limits};
use crate::bytecode;
use crate::errors::describe_error;

/// Why a script could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The Lua state could not be created or hardened (a bug or no memory).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The source does not compile.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The source compiles but breaks a rule checked before it runs.
    #[error("{0}")]
    Refused(String),
    /// The top level fails when run, or leaves something that cannot be
    /// sealed.
    #[error("the script fails when loaded: {0}")]
    TopLevel(String),
}

/// The prelude compiled once per process, without debug information: every
/// sandbox loads it without parsing, and holds less. (Bytecode from our own
/// compiler only; scripts can never load bytecode.)
fn prelude_bytecode() -> Result<&'static [u8], LoadError> {
    static CODE: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    CODE.get_or_init(|| {
        let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| e.to_string())?;
        let f = lua
            .load(include_str!("../prelude.lua"))
            .set_name("=prelude")
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| describe_error(&e))?;
        Ok(f.dump(true))
    })
    .as_deref()
    .map_err(|e| LoadError::Setup(e.clone()))
}

/// A Lua state with the standard libraries scripts get, plus `debug` for
/// the prelude's own use.
#[allow(unsafe_code)]
fn new_lua() -> Lua {
    // SAFETY: `unsafe_new_with` is unsafe because the debug library can
    // break Lua's memory safety from Lua code. The prelude takes the four
    // functions it needs into locals and sets the global `debug` to nil
    // before any script code exists; scripts run in their own environment
    // built from an explicit list (where `debug` is an error proxy), so no
    // script can reach the library. No C-module loader is loaded (no
    // `package`), and chunks are loaded as text only.
    unsafe {
        Lua::unsafe_new_with(
            StdLib::TABLE
                | StdLib::STRING
                | StdLib::MATH
                | StdLib::UTF8
                | StdLib::COROUTINE
                | StdLib::DEBUG,
            LuaOptions::default(),
        )
    }
}

fn setup(e: mlua::Error) -> LoadError {
    LoadError::Setup(describe_error(&e))
}

/// The script compiled as a chunk taking its `_ENV`, refused if a function
/// assigns a variable of an enclosing function.
fn compile(lua: &Lua, source: &str) -> Result<Function, LoadError> {
    // `_ENV` is the chunk's argument. Same line, so line numbers stay
    // right.
    let wrapped = format!("local _ENV = ...; {source}");
    let chunk = lua
        .load(wrapped)
        .set_name("=script")
        .set_mode(ChunkMode::Text)
        .into_function()
        .map_err(|e| LoadError::Syntax(describe_error(&e)))?;
    let writes = bytecode::upvalue_writes(&chunk.dump(false))
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    if let Some(w) = writes.first() {
        return Err(LoadError::Refused(format!(
            "line {}: a function assigns `{}`, a variable of an enclosing function; functions may read such variables but not assign them (data that lasts between calls goes in `state`)",
            w.line, w.name
        )));
    }
    Ok(chunk)
}

/// The script's environment (globals), reading through to the prelude's
/// `base`, and its metatable.
fn script_env(lua: &Lua, base: Table, me: ElementId) -> mlua::Result<(Table, Table)> {
    let env = lua.create_table()?;
    let env_mt = lua.create_table()?;
    env_mt.raw_set("__index", base)?;
    env_mt.raw_set("__metatable", false)?;
    env.set_metatable(Some(env_mt.clone()))?;
    env.raw_set("_G", env.clone())?;
    env.raw_set("me", me.to_string())?;
    Ok((env, env_mt))
}

/// `lua`'s main state, for the call path's raw API use.
fn main_state(lua: &Lua) -> Result<*mut mlua::ffi::lua_State, LoadError> {
    let mut main = std::ptr::null_mut();
    // SAFETY: only reads the state pointer mlua calls the closure with,
    // which is the main state (no coroutine is running).
    #[allow(unsafe_code)]
    unsafe {
        lua.exec_raw::<()>((), |l| main = l).map_err(setup)?;
    }
    Ok(main)
}

impl Sandbox {
    /// A hardened Lua state with `source` compiled, checked, its top level
    /// run once (as the script `me`, within `limits`) and everything it
    /// made sealed (docs/adr/0004). A pure function of its arguments: every
    /// replica that loads the same source gets the same sandbox.
    pub fn new(source: &str, me: ElementId, limits: &Limits) -> Result<Sandbox, LoadError> {
        let lua = new_lua();
        let budget = Arc::new(Budget::default());
        let host = install_host(&lua, &budget).map_err(setup)?;
        let api: Table = lua
            .load(prelude_bytecode()?)
            .set_name("=prelude")
            .set_mode(ChunkMode::Binary)
            .call(host)
            .map_err(setup)?;
        let base: Table = api.get("base").map_err(setup)?;
        let seal: Function = api.get("seal").map_err(setup)?;
        let set_loading: Function = api.get("set_loading").map_err(setup)?;
        let chunk = compile(&lua, source)?;
        let (env, env_mt) = script_env(&lua, base, me).map_err(setup)?;
        let state_key = lua.create_string("state").map_err(setup)?;
        let main = main_state(&lua)?;
        let error_key = lua.create_registry_value(true).map_err(setup)?;
        let mut sandbox = Sandbox {
            lua,
            main: MainState(main),
            error_key,
            refs: Vec::new(),
            raw: RawRefs::default(),
            budget,
            idle_bytes: 0,
            cap: std::cell::Cell::new(0),
            ran: std::cell::Cell::new(false),
        };
        sandbox.idle_bytes = sandbox.lua.used_memory();
        let shadow = sandbox.run_top_level(&seal, &set_loading, &chunk, (env, env_mt), limits)?;
        sandbox.raw = sandbox.register(&shadow, state_key)?;
        sandbox.install_hook().map_err(setup)?;
        sandbox.lua.gc_collect().map_err(setup)?;
        sandbox.idle_bytes = sandbox.lua.used_memory();
        Ok(sandbox)
    }

    /// Runs the top level once in `env`, with the budget armed and without
    /// world access, then seals what it made; returns the sealed globals.
    fn run_top_level(
        &self,
        seal: &Function,
        set_loading: &Function,
        chunk: &Function,
        (env, env_mt): (Table, Table),
        limits: &Limits,
    ) -> Result<Table, LoadError> {
        let top = (|| {
            self.arm(limits)?;
            self.install_hook()?;
            set_loading.call::<()>(true)?;
            chunk.call::<()>(env.clone())?;
            if let Some(e) = self.budget.fault() {
                return Err(e);
            }
            set_loading.call::<()>(false)?;
            self.lua.remove_global_hook();
            seal.call::<Table>((env, env_mt))
        })();
        let _ = self.lua.set_memory_limit(0);
        self.cap.set(0);
        self.lua.remove_global_hook();
        top.map_err(|e| LoadError::TopLevel(self.fault_of(&e, limits).to_string()))
    }

    /// Registry references for the call path: the sealed globals, the key
    /// `"state"` and each handler the script defines.
    fn register(
        &mut self,
        shadow: &Table,
        state_key: mlua::LuaString,
    ) -> Result<RawRefs, LoadError> {
        let mut reg = |v: Value| -> Result<std::ffi::c_int, LoadError> {
            let key = self.lua.create_registry_value(v).map_err(setup)?;
            let id = key.id();
            self.refs.push(key);
            Ok(id)
        };
        let mut raw = RawRefs {
            env_shadow: reg(Value::Table(shadow.clone()))?,
            state_key: reg(Value::String(state_key))?,
            ..RawRefs::default()
        };
        for (i, name) in HANDLERS.iter().enumerate() {
            match shadow.raw_get::<Value>(*name).map_err(setup)? {
                Value::Nil => {}
                f @ Value::Function(_) => raw.handlers[i] = reg(f)?,
                other => {
                    return Err(LoadError::TopLevel(format!(
                        "{name} must be a function, got {}",
                        other.type_name()
                    )));
                }
            }
        }
        Ok(raw)
    }

    /// Installs the instruction-count hook (once per Lua state; each call
    /// restarts its countdown, [`reset_countdown`]).
    fn install_hook(&self) -> mlua::Result<()> {
        let hook_budget = self.budget.clone();
        self.lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_STEP),
            move |_, _| {
                let used = hook_budget
                    .used
                    .fetch_add(u64::from(HOOK_STEP), Ordering::Relaxed)
                    + u64::from(HOOK_STEP);
                if used > hook_budget.limit.load(Ordering::Relaxed) {
                    hook_budget.exhausted.store(true, Ordering::Relaxed);
                }
                match hook_budget.fault() {
                    Some(e) => Err(e),
                    None => Ok(VmState::Continue),
                }
            },
        )
    }
}
