//! The LuaJIT FFI path: picks and verdicts through plain C functions the JIT compiles.
//!
//! Under LuaJIT, `require "upstream_list"` hands out a thin Lua layer (`fast.lua`) over the
//! same lists: `get_upstream_by_hash`, `get_upstream_round_robin`,
//! `get_upstream_master_slave`, `upstream:ok()` and `upstream:fail()` call the `extern "C"`
//! functions below through FFI function pointers (no mlua dispatch, no userdata per pick: an
//! upstream is a small cdata whose `__gc` releases an unreported pick). Everything else goes
//! through the mlua methods, so both paths answer from one core.
//!
//! Handles are numbers, never pointers: a list is an index into a registry with a
//! generation, a pick an index into a slab with a generation (both below 2^53, so a Lua
//! number carries them exactly). Every call checks its handle; a forged, stale or released
//! one is an error code, never undefined behaviour. No panic crosses the C boundary: each
//! function catches unwinding and answers with an error code.
//!
//! Written by hand because it *is* the binding: no crate offers an FFI-callable handle slab.

#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use upstreams::{FailKind, Picked, Rotation, Upstream, UpstreamList};

/// One slot of a slab: the generation counts reuses, so an old handle never matches.
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Slots with generations and a free list; handle = generation × 2^24 + index + 1.
struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

/// Most slots in one slab (2^24 − 1): live picks or live lists, not calls.
const MAX_SLOTS: usize = (1 << 24) - 1;
const GENERATIONS: u32 = 1 << 29;

impl<T> Slab<T> {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value`; gives it back when the slab is full.
    fn insert(&mut self, value: T) -> Result<f64, T> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
            None => return Err(value),
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some(value);
        Ok(f64::from(slot.generation) * f64::from(1u32 << 24) + f64::from(index) + 1.0)
    }

    /// The slot index of a live `handle`.
    fn find(&self, handle: f64) -> Option<usize> {
        if !(handle >= 1.0 && handle < f64::from(GENERATIONS) * f64::from(1u32 << 24)) {
            return None;
        }
        if handle.fract() != 0.0 {
            return None;
        }
        let h = handle as u64 - 1;
        let (generation, index) = ((h >> 24) as u32, (h & 0xff_ffff) as usize);
        let slot = self.slots.get(index)?;
        (slot.generation == generation && slot.value.is_some()).then_some(index)
    }

    fn get(&self, handle: f64) -> Option<&T> {
        let i = self.find(handle)?;
        self.slots[i].value.as_ref()
    }

    fn remove(&mut self, handle: f64) -> Option<T> {
        let i = self.find(handle)?;
        let slot = &mut self.slots[i];
        let value = slot.value.take();
        slot.generation = (slot.generation + 1) % GENERATIONS;
        self.free.push(i as u32);
        value
    }
}

/// An upstream's handle on the FFI path, carried in the upstream itself (the list's
/// per-upstream value): it lives as long as the upstream and leaves the registry with it.
pub(crate) struct FastUp(f64);

impl Drop for FastUp {
    fn drop(&mut self) {
        let removed = registry().ups.remove(self.0);
        drop(removed);
    }
}

struct Registry {
    lists: Slab<Arc<UpstreamList>>,
    /// Picks not yet reported (or released by the collector).
    picks: Slab<Picked>,
    /// Upstreams by handle (weak: the upstream's own `FastUp` removes it).
    ups: Slab<Weak<Upstream>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    lists: Slab::new(),
    picks: Slab::new(),
    ups: Slab::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a list for the FFI path (and gives each of its upstreams a handle, now and
/// when they join); the list's handle.
pub(crate) fn register_list(list: Arc<UpstreamList>) -> Option<f64> {
    list.set_values(|up: &Upstream| {
        let weak = up
            .handle()
            .map_or_else(Weak::new, |arc| Arc::downgrade(&arc));
        // A full slab leaves the upstream without a handle: its picks answer −2.
        let handle = registry().ups.insert(weak);
        FastUp(handle.unwrap_or(0.0))
    });
    let handle = registry().lists.insert(list);
    handle.ok()
}

/// Forgets a list (its Lua object was collected); picks taken from it live on.
pub(crate) fn unregister_list(handle: f64) {
    let removed = registry().lists.remove(handle);
    drop(removed);
}

/// The upstream of a live upstream handle.
pub(crate) fn upstream_of(up: f64) -> Option<Arc<Upstream>> {
    registry().ups.get(up).and_then(Weak::upgrade)
}

/// Result codes of the C functions.
const STALE: f64 = -1.0;
const FAILED: f64 = -2.0;

/// A pick as the Lua API makes it (see `list::lua_get`); `rotation`: 0 round-robin,
/// 1 master-slave, 2 hashed. Returns a pick handle and writes the upstream's handle to
/// `*up`; 0 when nothing is selectable, −1 for a stale list handle or a bad rotation, −2
/// when the pick could not be stored.
///
/// # Safety
/// `key` points at `len` readable bytes (or `len` is 0); `up` is null or writable.
pub(crate) unsafe extern "C" fn upstreams_ffi_pick(
    list: f64,
    rotation: i32,
    key: *const u8,
    len: usize,
    up: *mut f64,
) -> f64 {
    let key: &[u8] = if len == 0 || key.is_null() {
        &[]
    } else {
        // SAFETY: the caller passes a Lua string's bytes and its length.
        unsafe { std::slice::from_raw_parts(key, len) }
    };
    let answer = catch_unwind(AssertUnwindSafe(|| {
        let rotation = match rotation {
            0 => Rotation::RoundRobin,
            1 => Rotation::MasterSlave,
            2 => Rotation::Hashed,
            _ => return (STALE, 0.0),
        };
        // The registry's lock is never held while a pick or an upstream is dropped: either
        // may end up in `FastUp::drop`, which takes it.
        let list = registry().lists.get(list).cloned();
        let Some(list) = list else {
            return (STALE, 0.0);
        };
        let Some(picked) = crate::pick::lua_get(&list, rotation, key) else {
            return (0.0, 0.0);
        };
        let handle = match picked.value::<FastUp>() {
            Some(&FastUp(h)) if h != 0.0 => h,
            _ => return (FAILED, 0.0),
        };
        let stored = registry().picks.insert(picked);
        match stored {
            Ok(pick) => (pick, handle),
            Err(_picked) => (FAILED, 0.0),
        }
    }))
    .unwrap_or((FAILED, 0.0));
    if !up.is_null() {
        // SAFETY: the caller passes a writable double.
        unsafe { *up = answer.1 };
    }
    answer.0
}

/// The verdict of a pick (`pick` > 0: ends it) or, for a wrapper whose pick was already
/// reported (`pick` = 0), of the upstream alone, as rspamd's `ok` on an old wrapper.
fn verdict(pick: f64, up: f64, report: impl FnOnce(Result<Picked, Arc<Upstream>>)) -> f64 {
    let target = {
        let mut reg = registry();
        if pick != 0.0 {
            reg.picks.remove(pick).map(Ok)
        } else {
            reg.ups.get(up).and_then(Weak::upgrade).map(Err)
        }
    };
    // Outside the registry's lock: watchers may run.
    match target {
        Some(t) => {
            report(t);
            0.0
        }
        None => STALE,
    }
}

/// `upstream:ok()`: 0 done, −1 for a stale handle.
pub(crate) extern "C" fn upstreams_ffi_ok(pick: f64, up: f64) -> f64 {
    catch_unwind(|| {
        verdict(pick, up, |t| match t {
            Ok(p) => p.ok(),
            Err(u) => u.record_success(),
        })
    })
    .unwrap_or(FAILED)
}

/// `upstream:fail(addr, reason)`: `addr` non-zero for an address failure; 0 done, −1 for
/// a stale handle.
///
/// # Safety
/// `reason` points at `len` readable bytes (or `len` is 0).
pub(crate) unsafe extern "C" fn upstreams_ffi_fail(
    pick: f64,
    up: f64,
    addr: i32,
    reason: *const u8,
    len: usize,
) -> f64 {
    let reason: &[u8] = if len == 0 || reason.is_null() {
        b"unknown"
    } else {
        // SAFETY: the caller passes a Lua string's bytes and its length.
        unsafe { std::slice::from_raw_parts(reason, len) }
    };
    catch_unwind(AssertUnwindSafe(|| {
        let kind = if addr != 0 {
            FailKind::Address
        } else {
            FailKind::Other
        };
        let reason = String::from_utf8_lossy(reason);
        verdict(pick, up, |t| match t {
            Ok(p) => p.fail(kind, &reason),
            Err(u) => u.record_failure(kind, &reason),
        })
    }))
    .unwrap_or(FAILED)
}

/// The finaliser of a wrapper collected before its verdict: releases the pick, so its
/// in-flight count goes back. Unknown handles are ignored.
pub(crate) extern "C" fn upstreams_ffi_release(pick: f64) {
    let _ = catch_unwind(|| {
        let removed = registry().picks.remove(pick);
        // Dropped outside the lock: a release may end a probe and raise events.
        drop(removed);
    });
}

/// Writes the handles of the list's upstreams (configuration order) into `out` (room for
/// `cap`); returns how many there are (more than `cap`: call again with more room), or −1
/// for a stale list handle.
///
/// # Safety
/// `out` points at `cap` writable doubles (or `cap` is 0).
pub(crate) unsafe extern "C" fn upstreams_ffi_members(list: f64, out: *mut f64, cap: usize) -> f64 {
    let handles = catch_unwind(|| {
        let list = registry().lists.get(list).cloned()?;
        let snapshot = list.snapshot();
        Some(
            snapshot
                .upstreams()
                .iter()
                .map(|u| u.value::<FastUp>().map_or(0.0, |v| v.0))
                .collect::<Vec<f64>>(),
        )
    });
    let Ok(Some(handles)) = handles else {
        return STALE;
    };
    if !out.is_null() {
        for (i, h) in handles.iter().take(cap).enumerate() {
            // SAFETY: `i` < `cap`, and the caller gives `cap` writable doubles.
            unsafe { *out.add(i) = *h };
        }
    }
    handles.len() as f64
}

/// `upstream:get_addr()`: the next address of the upstream (rotating, as the C path's), as
/// text without the port (a socket's path) written into `buf` (room for `cap`); `*port`,
/// `*version` (4, 6, or 0 for a socket), `*local` (loopback or socket) and `*key` (a
/// 52-bit digest of the address, so the Lua layer can reuse the object it made for the same
/// address last time) beside it. Returns the text's length, 0 when the upstream has no
/// address yet, −1 for a stale handle (the text is cut at `cap`).
///
/// # Safety
/// `buf` points at `cap` writable bytes; `port`, `version`, `local`, `key` are writable.
pub(crate) unsafe extern "C" fn upstreams_ffi_addr(
    up: f64,
    buf: *mut u8,
    cap: usize,
    port: *mut f64,
    version: *mut f64,
    local: *mut f64,
    key: *mut f64,
) -> f64 {
    let answer = catch_unwind(|| {
        let up = upstream_of(up)?;
        Some(match up.entry().host() {
            upstreams::Host::Unix(path) => Some((path.clone(), 0u16, 0u8, true)),
            _ => up.next_addr().map(|a| {
                let v = if a.is_ipv4() { 4 } else { 6 };
                (a.ip().to_string(), a.port(), v, a.ip().is_loopback())
            }),
        })
    });
    let Ok(Some(addr)) = answer else {
        return STALE;
    };
    let Some((text, p, v, l)) = addr else {
        return 0.0;
    };
    let n = text.len().min(cap);
    if buf.is_null() || port.is_null() || version.is_null() || local.is_null() || key.is_null() {
        return STALE;
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&text, p, v).hash(&mut h);
        (h.finish() >> 12) as f64
    };
    // SAFETY: the caller gives `cap` writable bytes at `buf` and writable doubles.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf, n);
        *port = f64::from(p);
        *version = f64::from(v);
        *local = f64::from(u8::from(l));
        *key = digest;
    }
    n as f64
}

/// The handle of an upstream (0 when it has none).
pub(crate) fn handle_of(up: &Upstream) -> f64 {
    up.value::<FastUp>().map_or(0.0, |v| v.0)
}

/// The C functions as addresses, for the Lua layer's `ffi.cast`.
pub(crate) fn functions() -> [(&'static str, *const ()); 6] {
    [
        ("addr", upstreams_ffi_addr as *const ()),
        ("members", upstreams_ffi_members as *const ()),
        ("pick", upstreams_ffi_pick as *const ()),
        ("ok", upstreams_ffi_ok as *const ()),
        ("fail", upstreams_ffi_fail as *const ()),
        ("release", upstreams_ffi_release as *const ()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_and_stale_handles_are_refused() {
        let list = Arc::new(
            UpstreamList::parse("127.0.0.1,127.0.0.2", 1, upstreams::Limits::default())
                .expect("list"),
        );
        let h = register_list(Arc::clone(&list)).expect("handle");
        let mut up = 0.0;
        let none = std::ptr::null();
        for forged in [
            0.0,
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            1e300,
            h + 1.0,
            h + 16777216.0,
        ] {
            // SAFETY: an empty key, a writable double.
            assert_eq!(
                unsafe { upstreams_ffi_pick(forged, 0, none, 0, &mut up) },
                STALE
            );
            assert_eq!(upstreams_ffi_ok(forged, forged), STALE);
            // SAFETY: an empty reason.
            assert_eq!(
                unsafe { upstreams_ffi_fail(forged, forged, 0, none, 0) },
                STALE
            );
            upstreams_ffi_release(forged);
        }
        // SAFETY: an empty key.
        assert_eq!(unsafe { upstreams_ffi_pick(h, 7, none, 0, &mut up) }, STALE);
        let key = b"key";
        // SAFETY: `key` is 3 readable bytes.
        let p = unsafe { upstreams_ffi_pick(h, 2, key.as_ptr(), key.len(), &mut up) };
        assert!(p > 0.0 && up > 0.0);
        let u = upstream_of(up).expect("live");
        assert_eq!(u.inflight(), 1);
        assert_eq!(upstreams_ffi_ok(p, up), 0.0);
        assert_eq!(u.inflight(), 0);
        assert_eq!(upstreams_ffi_ok(p, up), STALE, "the pick is over");
        assert_eq!(
            upstreams_ffi_ok(0.0, up),
            0.0,
            "ok again: the upstream's health only"
        );
        // A pick released without a verdict gives its in-flight count back.
        // SAFETY: an empty key.
        let q = unsafe { upstreams_ffi_pick(h, 0, none, 0, &mut up) };
        let u = upstream_of(up).expect("live");
        assert_eq!(u.inflight(), 1);
        upstreams_ffi_release(q);
        assert_eq!(u.inflight(), 0);
        unregister_list(h);
        // SAFETY: an empty key.
        assert_eq!(unsafe { upstreams_ffi_pick(h, 0, none, 0, &mut up) }, STALE);
        drop(u);
        drop(list);
        assert!(
            upstream_of(up).is_none(),
            "the upstream's handle left with it"
        );
    }
}

/// The Lua 5.4 backend of `layer.lua`: the same calls as plain C functions on the Lua stack
/// (Lua 5.4 has no FFI). An upstream is a 24-byte full userdata (pick, upstream and list
/// handles) with the layer's metatable, checked by identity on every call; its `__gc`
/// releases a pick collected before its verdict. These functions never raise a Lua error
/// (the layer turns their codes into errors), so no Lua error ever unwinds a Rust frame.
#[cfg(feature = "lua54")]
pub(crate) mod c54 {
    use std::os::raw::c_int;
    use std::ptr;

    use mlua::ffi::{self, lua_State};

    /// The userdata of an upstream at `idx` when it has the layer's metatable (upvalue 1).
    ///
    /// # Safety
    /// `l` is a live Lua state inside a C function call.
    unsafe fn ours(l: *mut lua_State, idx: c_int) -> *mut f64 {
        // SAFETY: plain stack reads on a live state; the metatable push is popped.
        unsafe {
            let p = ffi::lua_touserdata(l, idx);
            if p.is_null() || ffi::lua_getmetatable(l, idx) == 0 {
                return ptr::null_mut();
            }
            let same = ffi::lua_rawequal(l, -1, ffi::lua_upvalueindex(1));
            ffi::lua_settop(l, -2);
            if same == 0 {
                ptr::null_mut()
            } else {
                p.cast()
            }
        }
    }

    /// Pushes a new upstream userdata.
    ///
    /// # Safety
    /// `l` is a live Lua state inside a C function call with the metatable as upvalue 1.
    unsafe fn push_upstream(l: *mut lua_State, pick: f64, up: f64, list: f64) {
        // SAFETY: a 24-byte block Lua owns, written once, then the metatable set.
        unsafe {
            let p: *mut f64 = ffi::lua_newuserdatauv(l, 3 * std::mem::size_of::<f64>(), 0).cast();
            p.write(pick);
            p.add(1).write(up);
            p.add(2).write(list);
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
            ffi::lua_setmetatable(l, -2);
        }
    }

    fn number(l: *mut lua_State, idx: c_int) -> f64 {
        // SAFETY: a stack read on a live state.
        unsafe { ffi::lua_tonumberx(l, idx, ptr::null_mut()) }
    }

    /// `B.pick(list, rotation, key)` → upstream or nil, code.
    unsafe extern "C-unwind" fn pick(l: *mut lua_State) -> c_int {
        let list = number(l, 1);
        let rotation = number(l, 2);
        let mut len = 0usize;
        // SAFETY: stack reads on a live state; the key stays on the stack during the call.
        let key = unsafe {
            if ffi::lua_type(l, 3) == ffi::LUA_TSTRING {
                ffi::lua_tolstring(l, 3, &mut len).cast::<u8>()
            } else {
                ptr::null()
            }
        };
        let mut up = 0.0;
        let rotation = if (0.0..=2.0).contains(&rotation) {
            rotation as i32
        } else {
            -1
        };
        // SAFETY: `key` is `len` bytes of a Lua string on the stack.
        let h = unsafe { super::upstreams_ffi_pick(list, rotation, key, len, &mut up) };
        // SAFETY: pushes on a live state.
        unsafe {
            if h > 0.0 {
                push_upstream(l, h, up, list);
                ffi::lua_pushinteger(l, 0);
            } else {
                ffi::lua_pushnil(l);
                ffi::lua_pushnumber(l, h.min(0.0));
            }
        }
        2
    }

    /// A verdict on the upstream at index 1 by `report(pick, upstream)`; pushes the code
    /// and the list's handle (or −3 alone when index 1 is not one of ours).
    ///
    /// # Safety
    /// `l` is a live Lua state inside a C function call with the metatable as upvalue 1.
    unsafe fn verdict(l: *mut lua_State, report: impl FnOnce(f64, f64) -> f64) -> c_int {
        // SAFETY: a live state; `p` points at the userdata's three handles.
        unsafe {
            let p = ours(l, 1);
            if p.is_null() {
                ffi::lua_pushnumber(l, -3.0);
                return 1;
            }
            let code = report(*p, *p.add(1));
            if code >= 0.0 {
                *p = 0.0;
            }
            ffi::lua_pushnumber(l, code);
            ffi::lua_pushnumber(l, *p.add(2));
        }
        2
    }

    /// `B.ok(up)` → code, list.
    unsafe extern "C-unwind" fn ok(l: *mut lua_State) -> c_int {
        // SAFETY: inside a C function call of the layer's backend.
        unsafe { verdict(l, |pick, up| super::upstreams_ffi_ok(pick, up)) }
    }

    /// `B.fail(up, kind, reason)` → code, list.
    unsafe extern "C-unwind" fn fail(l: *mut lua_State) -> c_int {
        let kind = number(l, 2) as i32;
        let mut len = 0usize;
        // SAFETY: stack reads on a live state; the reason stays on the stack during the call.
        unsafe {
            let reason = if ffi::lua_type(l, 3) == ffi::LUA_TSTRING {
                ffi::lua_tolstring(l, 3, &mut len).cast::<u8>()
            } else {
                ptr::null()
            };
            verdict(l, |pick, up| {
                super::upstreams_ffi_fail(pick, up, kind, reason, len)
            })
        }
    }

    /// `__gc`: releases an unreported pick.
    unsafe extern "C-unwind" fn gc(l: *mut lua_State) -> c_int {
        // SAFETY: a live state; `p` points at the userdata's three handles.
        unsafe {
            let p = ours(l, 1);
            if !p.is_null() && *p != 0.0 {
                super::upstreams_ffi_release(*p);
                *p = 0.0;
            }
        }
        0
    }

    /// `B.handle(x)` → the upstream handle, or nil.
    unsafe extern "C-unwind" fn handle(l: *mut lua_State) -> c_int {
        // SAFETY: a live state; `p` points at the userdata's three handles.
        unsafe {
            let p = ours(l, 1);
            if p.is_null() {
                ffi::lua_pushnil(l);
            } else {
                ffi::lua_pushnumber(l, *p.add(1));
            }
        }
        1
    }

    /// `B.adopt(handle, list)` → an upstream without a pick.
    unsafe extern "C-unwind" fn adopt(l: *mut lua_State) -> c_int {
        let (up, list) = (number(l, 1), number(l, 2));
        // SAFETY: the metatable is upvalue 1.
        unsafe { push_upstream(l, 0.0, up, list) };
        1
    }

    /// `B.members(list)` → a table of upstream handles, or nil.
    unsafe extern "C-unwind" fn members(l: *mut lua_State) -> c_int {
        let list = number(l, 1);
        // SAFETY: a null buffer with no room only counts.
        let n = unsafe { super::upstreams_ffi_members(list, ptr::null_mut(), 0) };
        // SAFETY: pushes on a live state; the buffer has room for `n`.
        unsafe {
            if n < 0.0 {
                ffi::lua_pushnil(l);
                return 1;
            }
            let mut handles = vec![0.0f64; n as usize];
            let got = super::upstreams_ffi_members(list, handles.as_mut_ptr(), handles.len());
            let got = (got.max(0.0) as usize).min(handles.len());
            ffi::lua_createtable(l, got as c_int, 0);
            for (i, h) in handles[..got].iter().enumerate() {
                ffi::lua_pushnumber(l, *h);
                ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
            }
        }
        1
    }

    /// `B.addr(handle)` → n, port, version, is_local, key, text.
    unsafe extern "C-unwind" fn addr(l: *mut lua_State) -> c_int {
        let up = number(l, 1);
        let mut text = [0u8; 4096];
        let (mut port, mut version, mut local, mut key) = (0.0, 0.0, 0.0, 0.0);
        // SAFETY: the buffer and the four doubles are writable.
        let n = unsafe {
            super::upstreams_ffi_addr(
                up,
                text.as_mut_ptr(),
                text.len(),
                &mut port,
                &mut version,
                &mut local,
                &mut key,
            )
        };
        // SAFETY: pushes on a live state (six values: below LUA_MINSTACK).
        unsafe {
            ffi::lua_pushnumber(l, n);
            if n <= 0.0 {
                return 1;
            }
            ffi::lua_pushinteger(l, port as ffi::lua_Integer);
            ffi::lua_pushinteger(l, version as ffi::lua_Integer);
            ffi::lua_pushboolean(l, c_int::from(local != 0.0));
            ffi::lua_pushnumber(l, key);
            ffi::lua_pushlstring(l, text.as_ptr().cast(), n as usize);
        }
        6
    }

    /// `B.proxy(mt)` → an empty userdata with metatable `mt`.
    unsafe extern "C-unwind" fn proxy(l: *mut lua_State) -> c_int {
        // SAFETY: a zero-byte userdata, then the given metatable.
        unsafe {
            ffi::lua_newuserdatauv(l, 0, 0);
            ffi::lua_pushvalue(l, 1);
            ffi::lua_setmetatable(l, -2);
        }
        1
    }

    /// `make_backend(Meta)`: the functions above as closures over `Meta` (their upvalue 1,
    /// what `ours` compares with), and `Meta.__gc`.
    pub(crate) unsafe extern "C-unwind" fn bind(l: *mut lua_State) -> c_int {
        let functions: [(&[u8], ffi::lua_CFunction); 9] = [
            (b"pick\0", pick),
            (b"ok\0", ok),
            (b"fail\0", fail),
            (b"handle\0", handle),
            (b"adopt\0", adopt),
            (b"members\0", members),
            (b"addr\0", addr),
            (b"proxy\0", proxy),
            (b"__gc\0", gc),
        ];
        // SAFETY: a live state with the metatable at index 1; names are NUL-terminated.
        unsafe {
            ffi::lua_createtable(l, 0, functions.len() as c_int);
            for (name, f) in functions {
                ffi::lua_pushvalue(l, 1);
                ffi::lua_pushcclosure(l, f, 1);
                if name == b"__gc\0" {
                    ffi::lua_setfield(l, 1, name.as_ptr().cast());
                } else {
                    ffi::lua_setfield(l, -2, name.as_ptr().cast());
                }
            }
        }
        1
    }
}
