//! The Lua API test script, run through the embedded registration (vendored Lua 5.4), so
//! `cargo test` covers the same behaviours as the real interpreters in `.ci/run`.

#![allow(clippy::unwrap_used)]

use mlua::Lua;

fn run_script(name: &str) -> i64 {
    let path = format!("{}/tests/lua/{name}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).unwrap();
    let lua = Lua::new();
    upstreams_lua::preload(&lua).unwrap();
    // This is a debug build: the hostile script's 100 000 lists run under the interpreters.
    lua.globals().set("HOSTILE_LISTS", 3000).unwrap();
    lua.load(&source).set_name(name).eval::<i64>().unwrap()
}

#[test]
fn api_script_passes_embedded() {
    assert_eq!(run_script("api.lua"), 0, "failures in api.lua (see stderr)");
}

#[test]
fn hostile_script_passes_embedded() {
    assert_eq!(
        run_script("hostile.lua"),
        0,
        "failures in hostile.lua (see stderr)"
    );
}

/// SPEC.md item 46 through the module: the rspamd 3.4 jump-hash vectors.
#[test]
fn jump_vectors_match_embedded() {
    let path = format!(
        "{}/../upstreams/tests/vectors/rspamd3_jump.tsv",
        env!("CARGO_MANIFEST_DIR")
    );
    let source = std::fs::read_to_string(format!(
        "{}/tests/lua/jump_vectors.lua",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let lua = Lua::new();
    upstreams_lua::preload(&lua).unwrap();
    lua.globals().set("VECTORS", path).unwrap();
    let mismatches: i64 = lua
        .load(&source)
        .set_name("jump_vectors.lua")
        .eval()
        .unwrap();
    assert_eq!(mismatches, 0, "see stderr");
}

#[test]
fn register_returns_the_module_table() {
    let lua = Lua::new();
    let module = upstreams_lua::register(&lua).unwrap();
    lua.globals().set("m", module).unwrap();
    let name: String = lua
        .load(r#"return m.create("127.0.0.1,127.0.0.2", 11333):get_upstream_by_hash("hello"):get_name()"#)
        .eval()
        .unwrap();
    assert_eq!(name, "127.0.0.2");
}

/// SPEC.md item 45: no Rust panic crosses into Lua, whatever the arguments: every function
/// and method of the module, called on the right object and on wrong ones, with a sweep of
/// hostile values, raises a Lua error or answers; none of the errors is a caught panic.
#[test]
fn hostile_arguments_never_panic() {
    let lua = Lua::new();
    upstreams_lua::preload(&lua).unwrap();
    let (calls, errors, panics): (i64, i64, String) = lua
        .load(
            r#"
            local m = require "upstream_list"
            local values = {nil, true, 0, -1, 1e308, 0/0, "", string.rep("x", 1e6),
                            "\0\255", {}, {1, 2}, function() end, m.create("127.0.0.1")}
            local calls, errors, panics = 0, 0, {}
            local function try(f, ...)
              calls = calls + 1
              local ok, err = pcall(f, ...)
              if not ok then
                errors = errors + 1
                if tostring(err):lower():find("panic") then panics[#panics + 1] = tostring(err) end
              end
            end
            local list_methods = {"get_upstream_by_hash", "get_upstream_round_robin",
              "get_upstream_master_slave", "get_upstream_except", "all_upstreams", "add_watcher"}
            local up_methods = {"get_name", "get_port", "get_addr", "ok", "fail"}
            local addr_methods = {"to_string", "get_port", "get_version", "is_local"}
            for _, a in pairs(values) do
              for _, b in pairs(values) do
                try(m.create, a, b)
                try(m.create, a, b, a)
                local l = m.create("127.0.0.1,127.0.0.2")
                local up = l:get_upstream_round_robin()
                local addr = up:get_addr()
                for _, name in ipairs(list_methods) do
                  try(l[name], l, a, b)
                  try(l[name], a, b)          -- wrong self
                  try(l[name], up, a)         -- an upstream as self
                end
                for _, name in ipairs(up_methods) do
                  try(up[name], up, a, b)
                  try(up[name], a, b)
                  try(up[name], l, a)
                end
                for _, name in ipairs(addr_methods) do
                  try(addr[name], addr, a)
                  try(addr[name], a)
                  try(addr[name], up)
                end
                try(tostring, l); try(tostring, up); try(tostring, addr)
                try(function() return up == a end)
              end
            end
            return calls, errors, table.concat(panics, "\n")
            "#,
        )
        .eval()
        .unwrap();
    assert!(panics.is_empty(), "panics reached Lua:\n{panics}");
    assert!(
        calls > 5_000 && errors > 1_000,
        "{calls} calls, {errors} errors"
    );
}
