//! The `upstream_list` userdata and the delivery of watch events to Lua callbacks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{Function, Lua, MetaMethod, Result, Table, UserData, UserDataMethods, Value};
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
    watchers: RefCell<Vec<(Events, Function)>>,
}

fn bit(event: Event) -> u8 {
    match event {
        Event::Success => 1,
        Event::Failure => 2,
        Event::Online => 4,
        _ => 8,
    }
}

impl Core {
    pub(crate) fn new(list: UpstreamList) -> Rc<Self> {
        let queue: Arc<Mutex<VecDeque<Queued>>> = Arc::default();
        let wanted = Arc::new(AtomicU8::new(0));
        let (q, w) = (Arc::clone(&queue), Arc::clone(&wanted));
        list.add_watcher(Events::ALL, move |event, up, errors| {
            if w.load(Ordering::Relaxed) & bit(event) == 0 {
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
            watchers: RefCell::default(),
        })
    }

    /// Runs the Lua watchers for every queued event. A callback's error is reported on
    /// stderr and swallowed (SPEC.md item 45); callbacks may call back into the list.
    pub(crate) fn deliver(core: &Rc<Self>, lua: &Lua) -> Result<()> {
        if core.wanted.load(Ordering::Relaxed) == 0 {
            return Ok(()); // no Lua watcher: nothing was queued
        }
        loop {
            let next = core
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some((event, up, errors)) = next else {
                return Ok(());
            };
            let callbacks: Vec<Function> = core
                .watchers
                .borrow()
                .iter()
                .filter(|(events, _)| events.contains(event))
                .map(|(_, f)| f.clone())
                .collect();
            for callback in callbacks {
                let wrapper =
                    lua.create_userdata(LuaUpstream::view(Arc::clone(&up), Rc::clone(core)))?;
                if let Err(err) = callback.call::<()>((event.name(), wrapper, errors)) {
                    eprintln!(
                        "upstream_list: {event} watcher for {} raised an error: {err}",
                        up.name()
                    );
                }
            }
        }
    }
}

/// The Lua `upstream_list` object.
pub(crate) struct LuaList {
    pub(crate) core: Rc<Core>,
}

impl LuaList {
    fn wrap(&self, lua: &Lua, picked: Option<upstreams::Picked>) -> Result<Value> {
        let value = match picked {
            Some(p) => {
                Value::UserData(lua.create_userdata(LuaUpstream::picked(p, Rc::clone(&self.core)))?)
            }
            None => Value::Nil,
        };
        Core::deliver(&self.core, lua)?;
        Ok(value)
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
        methods.add_method("get_upstream_by_hash", |lua, this, key: Value| {
            let key = match &key {
                Value::String(_) | Value::Integer(_) | Value::Number(_) => lua
                    .coerce_string(key.clone())?
                    .ok_or_else(|| mlua::Error::runtime("get_upstream_by_hash: bad key"))?,
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "get_upstream_by_hash: key must be a string or a number, got {}",
                        crate::cfg::lua_type(other)
                    )))
                }
            };
            let picked = this.core.list.get(Rotation::Hashed, &key.as_bytes());
            this.wrap(lua, picked)
        });
        methods.add_method("get_upstream_round_robin", |lua, this, ()| {
            let picked = this.core.list.get(Rotation::RoundRobin, b"");
            this.wrap(lua, picked)
        });
        methods.add_method("get_upstream_master_slave", |lua, this, ()| {
            let picked = this.core.list.get(Rotation::MasterSlave, b"");
            this.wrap(lua, picked)
        });
        // Ours: a retry elsewhere (rspamd's C API has it; its Lua API does not).
        methods.add_method(
            "get_upstream_except",
            |lua,
             this,
             (except, key): (mlua::UserDataRef<LuaUpstream>, Option<mlua::LuaString>)| {
                let key = key.map(|k| k.as_bytes().to_vec()).unwrap_or_default();
                let rotation = if key.is_empty() {
                    Rotation::RoundRobin
                } else {
                    Rotation::Hashed
                };
                let picked = this.core.list.get_except(except.upstream(), rotation, &key);
                this.wrap(lua, picked)
            },
        );
        methods.add_method("all_upstreams", |lua, this, ()| {
            let t = lua.create_table()?;
            for (i, up) in this.core.list.upstreams().into_iter().enumerate() {
                t.raw_set(i + 1, LuaUpstream::view(up, Rc::clone(&this.core)))?;
            }
            Ok(t)
        });
        methods.add_method(
            "add_watcher",
            |_, this, (what, callback): (Value, Value)| {
                let events = parse_events(&what)?;
                let Value::Function(callback) = callback else {
                    return Err(mlua::Error::runtime(format!(
                        "add_watcher: callback must be a function, got {}",
                        crate::cfg::lua_type(&callback)
                    )));
                };
                let mask = Event::ALL
                    .into_iter()
                    .filter(|e| events.contains(*e))
                    .fold(0, |m, e| m | bit(e));
                this.core.wanted.fetch_or(mask, Ordering::Relaxed);
                this.core.watchers.borrow_mut().push((events, callback));
                Ok(())
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
    let needs = list
        .upstreams()
        .iter()
        .any(|u| u.entry().host().needs_resolution());
    if !needs {
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
