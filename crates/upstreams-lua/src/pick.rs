//! A pick as the Lua API makes it, shared by the mlua methods and the FFI path.

use upstreams::{Rotation, UpstreamList};

/// A pick as the Lua API makes it: the list's prefix wins (rspamd), and a `random:` list
/// balances by power of two choices, as rspamd 4.x serves it (SPEC.md item 47; the Rust
/// `Rotation::Random` stays plainly random).
pub(crate) fn lua_get(
    list: &UpstreamList,
    rotation: Rotation,
    key: &[u8],
) -> Option<upstreams::Picked> {
    match list.rotation() {
        Some(Rotation::Random) => list.get_forced(Rotation::P2c, key),
        _ => list.get(rotation, key),
    }
}
