//! The `upstream` and address userdata, and the delivery of watch events to Lua callbacks
//! (each callback gets an `upstream` wrapper).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mlua::{AnyUserData, MetaMethod, Result, UserData, UserDataMethods, Value};
use upstreams::{FailKind, Picked, Upstream};

use mlua::{Function, Lua, Table};

use crate::core::{callbacks, Core};

/// The Lua `upstream` object: a handle on one upstream of a list.
pub(crate) struct LuaUpstream {
    up: Arc<Upstream>,
    /// The pick this wrapper came from, ended by the first `ok`/`fail` (or by garbage
    /// collection, which releases it). Views (`all_upstreams`, watchers) have none.
    pick: RefCell<Option<Picked>>,
    /// The list's shared part, for event delivery; none for a view the FFI path made.
    core: Option<Rc<Core>>,
}

impl LuaUpstream {
    pub(crate) fn picked(p: Picked, core: Rc<Core>) -> Self {
        Self {
            up: Arc::clone(p.upstream()),
            pick: RefCell::new(Some(p)),
            core: Some(core),
        }
    }

    pub(crate) fn view(up: Arc<Upstream>, core: Option<Rc<Core>>) -> Self {
        Self {
            up,
            pick: RefCell::new(None),
            core,
        }
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        &self.up
    }

    /// This wrapper as Lua userdata. While its list has Lua watchers, it keeps `list` (its
    /// list's userdata) alive through its user value, where Lua's collector sees the
    /// reference, and its `ok`/`fail` deliver the events they raise at once; a wrapper made
    /// before the first watcher leaves its events to the list's next call.
    pub(crate) fn into_userdata(self, lua: &mlua::Lua, list: &AnyUserData) -> Result<AnyUserData> {
        let watched = self.core.as_ref().is_some_and(|c| c.has_watchers());
        let ud = lua.create_userdata(self)?;
        if watched {
            ud.set_user_value(list)?;
        }
        Ok(ud)
    }

    fn take_pick(&self) -> Option<Picked> {
        self.pick.borrow_mut().take()
    }
}

/// `self` of an upstream method taken as a plain value (see `list::this_list`).
fn this_upstream(name: &str, value: Value) -> Result<AnyUserData> {
    match value {
        Value::UserData(ud) if ud.is::<LuaUpstream>() => Ok(ud),
        other => Err(mlua::Error::runtime(format!(
            "bad argument `self` to `LuaUpstream.{name}`: expected an upstream, got {}",
            crate::cfg::lua_type(&other)
        ))),
    }
}

/// Delivers queued events through the list that `upstream` (a wrapper's userdata) came from.
fn deliver_from(core: Option<&Rc<Core>>, lua: &mlua::Lua, upstream: &AnyUserData) -> Result<()> {
    let Some(core) = core else {
        return Ok(());
    };
    if !core.has_watchers() {
        return Ok(());
    }
    match upstream.user_value::<Option<AnyUserData>>()? {
        Some(list) => deliver(core, lua, &list),
        None => Ok(()),
    }
}

/// `fail([addr_failure [, reason]])` or `fail(reason)`, as rspamd reads them.
fn fail_args(args: &mlua::MultiValue) -> Result<(FailKind, String)> {
    let mut it = args.iter();
    let (kind, reason) = match (it.next(), it.next()) {
        (None | Some(Value::Nil), _) => (FailKind::Other, None),
        (Some(Value::Boolean(addr)), reason) => (
            if *addr {
                FailKind::Address
            } else {
                FailKind::Other
            },
            reason,
        ),
        (Some(reason @ Value::String(_)), _) => (FailKind::Other, Some(reason)),
        (Some(other), _) => {
            return Err(mlua::Error::runtime(format!(
                "upstream:fail: expected a boolean or a reason string, got {}",
                crate::cfg::lua_type(other)
            )))
        }
    };
    let reason = match reason {
        None | Some(Value::Nil) => "unknown".to_owned(),
        Some(Value::String(s)) => s.to_string_lossy(),
        Some(other) => {
            return Err(mlua::Error::runtime(format!(
                "upstream:fail: reason must be a string, got {}",
                crate::cfg::lua_type(other)
            )))
        }
    };
    Ok((kind, reason))
}

impl UserData for LuaUpstream {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get_name", |_, this, ()| Ok(this.up.name().to_owned()));
        methods.add_method("get_port", |_, this, ()| Ok(this.up.port()));
        methods.add_method("get_addr", |_, this, ()| {
            Ok(match this.up.entry().host() {
                upstreams::Host::Unix(path) => Some(LuaAddr::Unix(path.clone())),
                _ => this.up.next_addr().map(LuaAddr::Inet),
            })
        });
        methods.add_function("ok", |lua, ud: Value| {
            let ud = this_upstream("ok", ud)?;
            let core = {
                let this = ud.borrow::<LuaUpstream>()?;
                match this.take_pick() {
                    Some(p) => p.ok(),
                    None => this.up.record_success(),
                }
                this.core.clone()
            };
            deliver_from(core.as_ref(), lua, &ud)
        });
        methods.add_function("fail", |lua, args: mlua::MultiValue| {
            let mut args = args.into_iter();
            let ud = this_upstream("fail", args.next().unwrap_or(Value::Nil))?;
            let args: mlua::MultiValue = args.collect();
            let (kind, reason) = fail_args(&args)?;
            let core = {
                let this = ud.borrow::<LuaUpstream>()?;
                match this.take_pick() {
                    Some(p) => p.fail(kind, &reason),
                    None => this.up.record_failure(kind, &reason),
                }
                this.core.clone()
            };
            deliver_from(core.as_ref(), lua, &ud)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.up.name().to_owned())
        });
        methods.add_meta_function(MetaMethod::Eq, |_, (a, b): (AnyUserData, AnyUserData)| {
            let (Ok(a), Ok(b)) = (a.borrow::<LuaUpstream>(), b.borrow::<LuaUpstream>()) else {
                return Ok(false);
            };
            Ok(Arc::ptr_eq(&a.up, &b.up))
        });
    }
}

/// An address returned by `upstream:get_addr()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LuaAddr {
    Inet(SocketAddr),
    Unix(String),
}

impl LuaAddr {
    fn text(&self, with_port: bool) -> String {
        match self {
            Self::Inet(a) if with_port => a.to_string(),
            Self::Inet(a) => a.ip().to_string(),
            Self::Unix(path) => path.clone(),
        }
    }
}

impl UserData for LuaAddr {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("to_string", |_, this, with_port: Option<bool>| {
            Ok(this.text(with_port.unwrap_or(false)))
        });
        methods.add_method("get_port", |_, this, ()| {
            Ok(match this {
                Self::Inet(a) => a.port(),
                Self::Unix(_) => 0,
            })
        });
        methods.add_method("get_version", |_, this, ()| {
            Ok(match this {
                Self::Inet(a) if a.is_ipv4() => 4,
                Self::Inet(_) => 6,
                Self::Unix(_) => 0,
            })
        });
        methods.add_method("is_local", |_, this, ()| {
            Ok(match this {
                Self::Inet(a) => a.ip().is_loopback(),
                Self::Unix(_) => true,
            })
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.text(false)));
        methods.add_meta_function(MetaMethod::Eq, |_, (a, b): (AnyUserData, AnyUserData)| {
            let (Ok(a), Ok(b)) = (a.borrow::<LuaAddr>(), b.borrow::<LuaAddr>()) else {
                return Ok(false);
            };
            Ok(*a == *b)
        });
    }
}

/// Most events one outermost delivery hands out: callbacks that raise an event for every
/// event they get would otherwise loop for ever (each `ok()` raises `success`).
const MOST_DELIVERIES: usize = 100_000;

/// Runs the Lua watchers of `list` (the list's userdata) for every queued event. A
/// callback's error is reported on stderr and swallowed (SPEC.md item 45); callbacks may
/// call back into the list: what they raise is delivered after them by this same call.
pub(crate) fn deliver(core: &Rc<Core>, lua: &Lua, list: &AnyUserData) -> Result<()> {
    if core.wanted.load(Ordering::Relaxed) == 0 || core.delivering.get() {
        // No Lua watcher (nothing was queued), or an outer delivery will get to it.
        return Ok(());
    }
    let Some(table) = callbacks(list)? else {
        return Ok(());
    };
    core.delivering.set(true);
    let result = deliver_all(core, lua, list, &table);
    core.delivering.set(false);
    result
}

fn deliver_all(core: &Rc<Core>, lua: &Lua, list: &AnyUserData, table: &Table) -> Result<()> {
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
