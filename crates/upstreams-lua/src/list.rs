//! The `upstream_list` userdata and the delivery of watch events to Lua callbacks.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{
    AnyUserData, Function, Lua, MetaMethod, Result, Table, UserData, UserDataMethods, Value,
};
use upstreams::{Event, Events, Rotation, Upstream, UpstreamList};

use crate::upstream::LuaUpstream;

type Queued = (Event, Arc<Upstream>, u32);

/// What a list and every upstream wrapper taken from it share.
pub(crate) struct Core {
    pub(crate) list: Arc<UpstreamList>,
    /// Events the core reported, waiting to be handed to Lua callbacks. The core's watchers
    /// must be `Send + Sync` and may fire at any point inside a call; Lua callbacks run when
    /// that call is about to return, in order, with no Rust borrow held.
    queue: Arc<Mutex<VecDeque<Queued>>>,
    /// Bit per event that some Lua watcher wants (so unwatched events are not queued).
    wanted: Arc<AtomicU8>,
    /// A delivery is running: events raised by its callbacks are queued and delivered by
    /// that outermost call, in order, instead of by a nested one (no native recursion).
    delivering: Cell<bool>,
    /// The list's handle on the FFI path (`fast.rs`), once asked for.
    fast: Cell<Option<f64>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(h) = self.fast.get() {
            crate::fast::unregister_list(h);
        }
    }
}

/// Most events one outermost delivery hands out: callbacks that raise an event for every
/// event they get would otherwise loop for ever (each `ok()` raises `success`).
const MOST_DELIVERIES: usize = 100_000;

/// The callbacks of a list live in its userdata's user value (a Lua table of `{mask, fn}`
/// pairs), where Lua's collector sees them: a callback that refers to its own list is then a
/// cycle the collector can free. Upstream wrappers keep their list's userdata in their own
/// user value, for the same reason.
pub(crate) fn callbacks(list: &AnyUserData) -> Result<Option<Table>> {
    list.user_value::<Option<Table>>()
}

impl Core {
    pub(crate) fn new(list: UpstreamList) -> Rc<Self> {
        let queue: Arc<Mutex<VecDeque<Queued>>> = Arc::default();
        let wanted = Arc::new(AtomicU8::new(0));
        let (q, w) = (Arc::clone(&queue), Arc::clone(&wanted));
        list.add_watcher(Events::ALL, move |event, up, errors| {
            if w.load(Ordering::Relaxed) & event.bit() == 0 {
                return;
            }
            if let Some(handle) = up.handle() {
                q.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((event, handle, errors));
            }
        });
        Rc::new(Self {
            list: Arc::new(list),
            queue,
            wanted,
            delivering: Cell::new(false),
            fast: Cell::new(None),
        })
    }

    /// The list's handle on the FFI path, registered at the first call.
    pub(crate) fn fast_handle(&self) -> Result<f64> {
        if let Some(h) = self.fast.get() {
            return Ok(h);
        }
        let h = crate::fast::register_list(Arc::clone(&self.list))
            .ok_or_else(|| mlua::Error::runtime("upstream_list: too many lists"))?;
        self.fast.set(Some(h));
        Ok(h)
    }

    /// Whether some Lua watcher was added (before that, nothing is ever queued).
    pub(crate) fn has_watchers(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) != 0
    }

    /// Runs the Lua watchers of `list` (the list's userdata) for every queued event. A
    /// callback's error is reported on stderr and swallowed (SPEC.md item 45); callbacks may
    /// call back into the list: what they raise is delivered after them by this same call.
    pub(crate) fn deliver(core: &Rc<Self>, lua: &Lua, list: &AnyUserData) -> Result<()> {
        if core.wanted.load(Ordering::Relaxed) == 0 || core.delivering.get() {
            // No Lua watcher (nothing was queued), or an outer delivery will get to it.
            return Ok(());
        }
        let Some(table) = callbacks(list)? else {
            return Ok(());
        };
        core.delivering.set(true);
        let result = Self::deliver_all(core, lua, list, &table);
        core.delivering.set(false);
        result
    }

    fn deliver_all(core: &Rc<Self>, lua: &Lua, list: &AnyUserData, table: &Table) -> Result<()> {
        for _ in 0..MOST_DELIVERIES {
            let next = core
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some((event, up, errors)) = next else {
                return Ok(());
            };
            // The callbacks registered now (one a callback adds sees later events), taken one
            // at a time: a Lua reference held from Rust takes a slot of a stack LuaJIT
            // limits to about 8 000.
            let registered = table.raw_len();
            for i in 1..=registered {
                let pair: Table = table.raw_get(i)?;
                let mask: u8 = pair.raw_get(1)?;
                if mask & event.bit() == 0 {
                    continue;
                }
                let callback: Function = pair.raw_get(2)?;
                let wrapper = LuaUpstream::view(Arc::clone(&up), Some(Rc::clone(core)))
                    .into_userdata(lua, list)?;
                if let Err(err) = callback.call::<()>((event.name(), wrapper, errors)) {
                    eprintln!(
                        "upstream_list: {event} watcher for {} raised an error: {err}",
                        up.name()
                    );
                }
            }
        }
        // Still going: the callbacks raise an event for every event they get.
        core.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Err(mlua::Error::runtime(format!(
            "upstream_list: watchers raised events for {MOST_DELIVERIES} deliveries in a row \
             (a watcher that calls ok() on every success?); the rest were dropped"
        )))
    }
}

/// The Lua `upstream_list` object.
pub(crate) struct LuaList {
    pub(crate) core: Rc<Core>,
}

impl LuaList {
    fn wrap(
        &self,
        lua: &Lua,
        me: &AnyUserData,
        picked: Option<upstreams::Picked>,
    ) -> Result<Value> {
        let value = match picked {
            Some(p) => Value::UserData(
                LuaUpstream::picked(p, Rc::clone(&self.core)).into_userdata(lua, me)?,
            ),
            None => Value::Nil,
        };
        Core::deliver(&self.core, lua, me)?;
        Ok(value)
    }
}

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

/// A list method that needs its own userdata (for the callbacks and for wrappers).
fn with_list<R>(ud: &AnyUserData, f: impl FnOnce(&LuaList) -> Result<R>) -> Result<R> {
    let this = ud.borrow::<LuaList>()?;
    f(&this)
}

/// `self` of a list method taken as a plain value, so that a wrong one gets the same message
/// as a method's: "bad argument `self` to `LuaList.NAME`".
pub(crate) fn this_list(name: &str, value: Value) -> Result<AnyUserData> {
    match value {
        Value::UserData(ud) if ud.is::<LuaList>() => Ok(ud),
        other => Err(mlua::Error::runtime(format!(
            "bad argument `self` to `LuaList.{name}`: expected an upstream_list, got {}",
            crate::cfg::lua_type(&other)
        ))),
    }
}

fn parse_events(what: &Value) -> Result<Events> {
    let one = |v: &Value| -> Result<Event> {
        match v {
            Value::String(s) => s
                .to_str()
                .ok()
                .and_then(|s| s.parse::<Event>().ok())
                .ok_or_else(|| {
                    mlua::Error::runtime(format!(
                        "add_watcher: unknown event {:?} (expected success, failure, online or offline)",
                        s.to_string_lossy()
                    ))
                }),
            other => Err(mlua::Error::runtime(format!(
                "add_watcher: event names must be strings, got {}",
                crate::cfg::lua_type(other)
            ))),
        }
    };
    match what {
        Value::String(_) => Ok(one(what)?.into()),
        Value::Table(t) => {
            let mut events = Events::NONE;
            for v in t.sequence_values::<Value>() {
                events = events.with(one(&v?)?);
            }
            if events == Events::NONE {
                return Err(mlua::Error::runtime("add_watcher: empty event table"));
            }
            Ok(events)
        }
        other => Err(mlua::Error::runtime(format!(
            "add_watcher: invalid arguments: expected an event name or a table of names, got {}",
            crate::cfg::lua_type(other)
        ))),
    }
}

impl UserData for LuaList {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_function("get_upstream_by_hash", |lua, (ud, key): (Value, Value)| {
            let ud = this_list("get_upstream_by_hash", ud)?;
            let this = ud.borrow::<LuaList>()?;
            let picked = match &key {
                // The string's own bytes, not a copy.
                Value::String(s) => lua_get(&this.core.list, Rotation::Hashed, &s.as_bytes()),
                Value::Integer(_) | Value::Number(_) => {
                    let text = lua
                        .coerce_string(key.clone())?
                        .ok_or_else(|| mlua::Error::runtime("get_upstream_by_hash: bad key"))?;
                    lua_get(&this.core.list, Rotation::Hashed, &text.as_bytes())
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "get_upstream_by_hash: key must be a string or a number, got {}",
                        crate::cfg::lua_type(other)
                    )))
                }
            };
            this.wrap(lua, &ud, picked)
        });
        methods.add_function("get_upstream_round_robin", |lua, ud: Value| {
            let ud = this_list("get_upstream_round_robin", ud)?;
            let this = ud.borrow::<LuaList>()?;
            let picked = lua_get(&this.core.list, Rotation::RoundRobin, b"");
            this.wrap(lua, &ud, picked)
        });
        methods.add_function("get_upstream_master_slave", |lua, ud: Value| {
            let ud = this_list("get_upstream_master_slave", ud)?;
            let this = ud.borrow::<LuaList>()?;
            let picked = lua_get(&this.core.list, Rotation::MasterSlave, b"");
            this.wrap(lua, &ud, picked)
        });
        // Ours: a retry elsewhere (rspamd's C API has it; its Lua API does not).
        methods.add_function(
            "get_upstream_except",
            |lua,
             (ud, except, key): (
                Value,
                mlua::UserDataRef<LuaUpstream>,
                Option<mlua::LuaString>,
            )| {
                let ud = this_list("get_upstream_except", ud)?;
                let key = key.map(|k| k.as_bytes().to_vec()).unwrap_or_default();
                let rotation = if key.is_empty() {
                    Rotation::RoundRobin
                } else {
                    Rotation::Hashed
                };
                let picked = with_list(&ud, |this| {
                    Ok(this.core.list.get_except(except.upstream(), rotation, &key))
                })?;
                with_list(&ud, |this| this.wrap(lua, &ud, picked))
            },
        );
        methods.add_function("all_upstreams", |lua, ud: Value| {
            let ud = this_list("all_upstreams", ud)?;
            let t = lua.create_table()?;
            let (ups, core) = with_list(&ud, |this| {
                Ok((this.core.list.upstreams(), Rc::clone(&this.core)))
            })?;
            for (i, up) in ups.into_iter().enumerate() {
                t.raw_set(
                    i + 1,
                    LuaUpstream::view(up, Some(Rc::clone(&core))).into_userdata(lua, &ud)?,
                )?;
            }
            Ok(t)
        });
        methods.add_function(
            "add_watcher",
            |lua, (ud, what, callback): (Value, Value, Value)| {
                let ud = this_list("add_watcher", ud)?;
                let events = parse_events(&what)?;
                let Value::Function(callback) = callback else {
                    return Err(mlua::Error::runtime(format!(
                        "add_watcher: callback must be a function, got {}",
                        crate::cfg::lua_type(&callback)
                    )));
                };
                let mask = events.bits();
                let table = match callbacks(&ud)? {
                    Some(t) => t,
                    None => {
                        let t = lua.create_table()?;
                        ud.set_user_value(&t)?;
                        t
                    }
                };
                let pair = lua.create_sequence_from([
                    Value::Integer(i64::from(mask)),
                    Value::Function(callback),
                ])?;
                table.raw_push(pair)?;
                with_list(&ud, |this| {
                    this.core.wanted.fetch_or(mask, Ordering::Relaxed);
                    Ok(())
                })
            },
        );
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("upstream_list: {}", this.core.list))
        });
    }
}

/// The module table: `create`.
pub(crate) fn module(lua: &Lua) -> Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "create",
        lua.create_function(|lua, args: mlua::MultiValue| {
            let args = crate::cfg::create_args(args)?;
            let def = match args.definition {
                Ok(def) => def,
                Err(message) => return (Value::Nil, message).into_lua_multi(lua),
            };
            match UpstreamList::new(&def, args.limits) {
                Ok(list) => {
                    if let Some(servers) = &args.dns {
                        resolve_now(&list, servers);
                    }
                    LuaList {
                        core: Core::new(list),
                    }
                    .into_lua_multi(lua)
                }
                Err(err) => (Value::Nil, err.to_string()).into_lua_multi(lua),
            }
        })?,
    )?;
    Ok(t)
}

use mlua::IntoLuaMulti as _;

/// Resolves the names of a new list before `create` returns, so `create("localhost:6379")`
/// has addresses at once. Runs on its own thread: the host may already be inside a tokio
/// runtime, where another one cannot be started. A failure leaves names pending (logged).
fn resolve_now(list: &UpstreamList, servers: &upstreams_dns::Nameservers) {
    if !list.needs_resolution() {
        return;
    }
    std::thread::scope(|scope| {
        let job = scope.spawn(|| upstreams_dns::resolve_blocking(list, servers));
        match job.join() {
            Ok(Ok(report)) if report.failed > 0 => eprintln!(
                "upstream_list: {} of {} DNS queries failed; those names stay unresolved",
                report.failed, report.queried
            ),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => eprintln!("upstream_list: cannot resolve names: {err}"),
            Err(_) => eprintln!("upstream_list: the resolver thread panicked"),
        }
    });
}
