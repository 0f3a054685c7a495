//! The `upstream_list` userdata.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use mlua::{AnyUserData, Lua, MetaMethod, Result, Table, UserData, UserDataMethods, Value};
use upstreams::{Event, Events, Rotation, UpstreamList};

use crate::core::{callbacks, Core};
use crate::pick::lua_get;
use crate::upstream::{deliver, LuaUpstream};

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
        deliver(&self.core, lua, me)?;
        Ok(value)
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
