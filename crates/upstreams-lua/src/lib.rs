//! rspamd's `rspamd_upstream_list` Lua API on the `upstreams` core.
//!
//! Scripts written for rspamd run unchanged:
//!
//! ```lua
//! local upstream_list = require "rspamd_upstream_list"   -- or "upstream_list"
//! local ups = upstream_list.create(rspamd_config, "127.0.0.1,10.0.0.1,10.0.0.2", 6379)
//! local up = ups:get_upstream_by_hash("example.com")
//! if talk_to(up:get_addr()) then up:ok() else up:fail() end
//! ```
//!
//! Build it as a loadable module with `scripts/build-lua-module lua5.4 DIR` (or `luajit`), or
//! register it into an embedded `mlua::Lua` with [`register`] / [`preload`].
//!
//! Differences from rspamd (SPEC.md §7): `create` also takes a `cfg` table of limits
//! (`max_errors`, `error_time`, `revive_time`, … and `hash = "balanced"`); failures count
//! without an rspamd config; unknown watcher events are an error instead of an abort;
//! `get_upstream_except(up [, key])` picks a retry target. The hash defaults to rspamd's ring
//! so keys shard exactly as rspamd shards them.

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod cfg;
mod core;
mod fast;
mod list;
mod pick;
mod upstream;

use mlua::{Lua, Result, Table, Value};

/// Builds the module table (`create`) in `lua`. The hot calls take the fast layer of
/// `fast.rs` (LuaJIT's FFI, or plain C functions under Lua 5.4) unless
/// `UPSTREAMS_LUA_FFI=0` is in the environment (then mlua's methods serve every call); the
/// answers are the same either way.
pub fn register(lua: &Lua) -> Result<Table> {
    let module = list::module(lua)?;
    if std::env::var_os("UPSTREAMS_LUA_FFI").is_some_and(|v| v == "0") {
        return Ok(module);
    }
    let fast = fast_table(lua)?;
    let backend: Option<Value> = if lua.globals().get::<Option<Table>>("jit")?.is_some() {
        let (has_ffi, _): (bool, Value) = lua.load("return pcall(require, 'ffi')").call(())?;
        if has_ffi {
            Some(
                lua.load(include_str!("backend_ffi.lua"))
                    .set_name("=upstream_list/backend_ffi.lua")
                    .call(fast.clone())?,
            )
        } else {
            None
        }
    } else {
        c54_backend(lua)?
    };
    let Some(backend) = backend else {
        return Ok(module);
    };
    lua.load(include_str!("layer.lua"))
        .set_name("=upstream_list/layer.lua")
        .call((module, fast, backend))
}

/// The Lua 5.4 backend's maker (plain C functions); none for other Luas without FFI.
#[cfg(feature = "lua54")]
#[allow(unsafe_code)]
fn c54_backend(lua: &Lua) -> Result<Option<Value>> {
    // SAFETY: `bind` follows the C function protocol and never raises a Lua error.
    let bind = unsafe { lua.create_c_function(fast::c54::bind)? };
    Ok(Some(Value::Function(bind)))
}

#[cfg(not(feature = "lua54"))]
fn c54_backend(_lua: &Lua) -> Result<Option<Value>> {
    Ok(None)
}

/// What `fast.lua` is handed: the C functions' addresses and three mlua helpers.
fn fast_table(lua: &Lua) -> Result<Table> {
    let t = lua.create_table()?;
    for (name, address) in fast::functions() {
        t.set(
            name,
            Value::LightUserData(mlua::LightUserData(address.cast_mut().cast())),
        )?;
    }
    t.set(
        "handle",
        lua.create_function(|_, ud: mlua::AnyUserData| {
            ud.borrow::<list::LuaList>()?.core.fast_handle()
        })?,
    )?;
    t.set(
        "view",
        lua.create_function(|lua, h: f64| match fast::upstream_of(h) {
            Some(up) => Ok(Value::UserData(
                lua.create_userdata(upstream::LuaUpstream::view(up, None))?,
            )),
            None => Ok(Value::Nil),
        })?,
    )?;
    t.set(
        "up_handle",
        lua.create_function(|_, ud: mlua::AnyUserData| {
            Ok(fast::handle_of(
                ud.borrow::<upstream::LuaUpstream>()?.upstream(),
            ))
        })?,
    )?;
    t.set(
        "deliver",
        lua.create_function(|lua, ud: mlua::AnyUserData| {
            let core = std::rc::Rc::clone(&ud.borrow::<list::LuaList>()?.core);
            upstream::deliver(&core, lua, &ud)
        })?,
    )?;
    Ok(t)
}

/// Makes `require "upstream_list"` and `require "rspamd_upstream_list"` return the module in
/// an embedded Lua state.
pub fn preload(lua: &Lua) -> Result<()> {
    let module = register(lua)?;
    let loaded: Table = lua
        .globals()
        .get::<Table>("package")?
        .get::<Table>("loaded")?;
    loaded.set("upstream_list", module.clone())?;
    loaded.set("rspamd_upstream_list", module)?;
    Ok(())
}

/// Entry points of the loadable module: one per name, so `require` finds either file.
#[cfg(feature = "module")]
#[allow(unsafe_code, missing_docs)]
mod entry {
    #[mlua::lua_module(name = "upstream_list")]
    fn upstream_list(lua: &mlua::Lua) -> mlua::Result<mlua::Table> {
        super::register(lua)
    }

    #[mlua::lua_module(name = "rspamd_upstream_list")]
    fn rspamd_upstream_list(lua: &mlua::Lua) -> mlua::Result<mlua::Table> {
        super::register(lua)
    }
}
