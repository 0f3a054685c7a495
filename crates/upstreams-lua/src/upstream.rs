//! The `upstream` and address userdata.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use mlua::{AnyUserData, MetaMethod, Result, UserData, UserDataMethods, Value};
use upstreams::{FailKind, Picked, Upstream};

use crate::list::Core;

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
        Some(list) => Core::deliver(core, lua, &list),
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
