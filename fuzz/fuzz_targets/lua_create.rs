//! The Lua `create` path and the list methods with arbitrary arguments: errors are fine,
//! panics and crashes are not. Resolution is off (`dns = false`): no query leaves the machine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lua = mlua::Lua::new();
    if upstreams_lua::preload(&lua).is_err() {
        return;
    }
    let def = lua.create_string(data).expect("string");
    let _ = lua.globals().set("def", def);
    let _ = lua
        .load(
            r#"
            local m = require "upstream_list"
            local ok, l = pcall(m.create, {dns = false}, def, 11333)
            if ok and l then
              pcall(l.get_upstream_by_hash, l, def)
              local up = l:get_upstream_round_robin()
              if up then
                pcall(up.fail, up, def)
                pcall(up.get_addr, up)
                up:ok()
              end
              pcall(l.add_watcher, l, def, function() end)
              local _ = tostring(l)
            end
            -- Never the system resolver: names in fuzzed definitions must not leave loopback.
            pcall(m.create, {dns = false}, {def, def}, def)
            "#,
        )
        .exec();
});
