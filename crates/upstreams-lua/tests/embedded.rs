//! The Lua API test script, run through the embedded registration (vendored Lua 5.4), so
//! `cargo test` covers the same behaviours as the real interpreters in `.ci/run`.

#![allow(clippy::unwrap_used)]

use mlua::Lua;

fn run_script(name: &str) -> i64 {
    let path = format!("{}/tests/lua/{name}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).unwrap();
    let lua = Lua::new();
    upstreams_lua::preload(&lua).unwrap();
    lua.load(&source).set_name(name).eval::<i64>().unwrap()
}

#[test]
fn api_script_passes_embedded() {
    assert_eq!(run_script("api.lua"), 0, "failures in api.lua (see stderr)");
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

/// SPEC.md item 45: no Rust panic crosses into Lua, whatever the arguments.
#[test]
fn hostile_arguments_never_panic() {
    let lua = Lua::new();
    upstreams_lua::preload(&lua).unwrap();
    let result: i64 = lua
        .load(
            r#"
            local m = require "upstream_list"
            local values = {nil, true, 0, -1, 1e308, 0/0, "", string.rep("x", 1e6),
                            "\0\255", {}, {1, 2}, function() end}
            local errors = 0
            for _, a in pairs(values) do
              for _, b in pairs(values) do
                local ok = pcall(m.create, a, b)
                if not ok then errors = errors + 1 end
                local l = m.create("127.0.0.1,127.0.0.2")
                pcall(l.get_upstream_by_hash, l, a)
                pcall(l.add_watcher, l, a, b)
                local up = l:get_upstream_round_robin()
                pcall(up.fail, up, a, b)
                pcall(up.ok, up, a)
              end
            end
            return errors
            "#,
        )
        .eval()
        .unwrap();
    assert!(result > 0);
}
