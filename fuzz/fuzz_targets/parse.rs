//! The definition parser: never panics; a definition that parses prints back to one that
//! parses to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upstreams::Definition;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for port in [0, 11333] {
        if let Ok(def) = Definition::parse(text, port) {
            let printed = def.to_string();
            let again = Definition::parse(&printed, port)
                .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}: {e}"));
            assert_eq!(again, def, "{text:?} printed as {printed:?}");
        }
    }
});
