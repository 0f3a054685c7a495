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
mod list;
mod upstream;

use mlua::{Lua, Result, Table};

/// Builds the module table (`create`) in `lua`.
pub fn register(lua: &Lua) -> Result<Table> {
    list::module(lua)
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
