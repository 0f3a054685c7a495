//! `create([cfg,] def [, default_port])`: telling the arguments apart and reading `cfg`.

use mlua::{MultiValue, Result, Table, Value};
use upstreams::{Definition, HashMode, Limits};
use upstreams_dns::Nameservers;

/// The arguments of `create`, sorted out.
pub(crate) struct CreateArgs {
    pub(crate) limits: Limits,
    /// Nameservers for names in the definition; `None` (`dns = false`) leaves them pending.
    pub(crate) dns: Option<Nameservers>,
    /// The definition, or the message `create` returns after `nil`.
    pub(crate) definition: std::result::Result<Definition, String>,
}

fn invalid(what: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("upstream_list.create: {what}"))
}

/// SPEC.md item 42: a first argument that is `nil`, a userdata (rspamd's config object), or a
/// table followed by a string or a table, is `cfg`; otherwise the first argument is `def`.
pub(crate) fn create_args(args: MultiValue) -> Result<CreateArgs> {
    let args: Vec<Value> = args.into_iter().collect();
    let first = args.first().cloned().unwrap_or(Value::Nil);
    let second = args.get(1).cloned().unwrap_or(Value::Nil);
    let has_cfg = match &first {
        Value::Nil | Value::UserData(_) | Value::LightUserData(_) => args.len() >= 2,
        Value::Table(_) => matches!(second, Value::String(_) | Value::Table(_)),
        _ => false,
    };
    let (cfg, def, port) = if has_cfg {
        (first, second, args.get(2).cloned().unwrap_or(Value::Nil))
    } else {
        (Value::Nil, first, second)
    };
    let mut limits = Limits::default().with_hash_mode(HashMode::RspamdRing);
    let mut dns = Some(Nameservers::System);
    if let Value::Table(t) = &cfg {
        dns = read_dns(t)?;
        limits = read_limits(t, limits)?;
    }
    let default_port = default_port(&port)?;
    let definition = match &def {
        Value::String(s) => {
            let text = s
                .to_str()
                .map_err(|_| invalid("definition is not valid UTF-8"))?;
            Definition::parse(&text, default_port).map_err(|e| e.to_string())
        }
        Value::Table(t) => {
            let mut texts = Vec::new();
            for v in t.sequence_values::<Value>() {
                match v? {
                    Value::String(s) => texts.push(
                        s.to_str()
                            .map_err(|_| invalid("definition is not valid UTF-8"))?
                            .to_string(),
                    ),
                    other => {
                        return Err(invalid(format!(
                            "invalid arguments: definition table holds a {}, expected strings",
                            lua_type(&other)
                        )))
                    }
                }
            }
            if texts.is_empty() {
                // rspamd: `create({})` is an empty list whose pickers answer nil.
                Ok(Definition::empty())
            } else {
                Definition::parse_many(texts.iter().map(String::as_str), default_port)
                    .map_err(|e| e.to_string())
            }
        }
        _ => return Err(mlua::Error::runtime("invalid arguments")),
    };
    Ok(CreateArgs {
        limits,
        dns,
        definition,
    })
}

fn default_port(v: &Value) -> Result<u16> {
    let n = match v {
        Value::Nil => return Ok(0),
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        Value::String(s) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| invalid("default port is not a number"))?,
        other => {
            return Err(invalid(format!(
                "default port must be a number, got {}",
                lua_type(other)
            )))
        }
    };
    if n.fract() != 0.0 || !(0.0..=65535.0).contains(&n) {
        return Err(invalid(format!(
            "default port {n} out of range (0..=65535)"
        )));
    }
    Ok(n as u16)
}

fn number(key: &str, v: Value) -> Result<f64> {
    match v {
        Value::Integer(i) => Ok(i as f64),
        Value::Number(n) if n.is_finite() => Ok(n),
        other => Err(invalid(format!(
            "cfg.{key} must be a finite number, got {}",
            lua_type(&other)
        ))),
    }
}

fn count(key: &str, v: Value) -> Result<u32> {
    let n = number(key, v)?;
    if n.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&n) {
        return Err(invalid(format!("cfg.{key} must be a whole number >= 0")));
    }
    Ok(n as u32)
}

/// `cfg.dns`: `"system"` (the default), `"ip[:port],…"`, or `false` (do not resolve).
fn read_dns(t: &Table) -> Result<Option<Nameservers>> {
    match t.get::<Value>("dns")? {
        Value::Nil => Ok(Some(Nameservers::System)),
        Value::Boolean(false) => Ok(None),
        Value::String(s) => Nameservers::parse(&s.to_str()?)
            .map(Some)
            .map_err(|e| invalid(format!("cfg.dns: {e}"))),
        other => Err(invalid(format!(
            "cfg.dns must be a string or false, got {}",
            lua_type(&other)
        ))),
    }
}

/// Reads the limits a `cfg` table sets into the core's one reading of them
/// ([`upstreams::LimitsConfig`]: the names of the proxy's `[listener.limits]`), which checks
/// the ranges; unknown keys are errors (a typo must not pass). Here only Lua's types are
/// read: numbers (integral ones where a count is expected) and the hash mode's name.
fn read_limits(t: &Table, l: Limits) -> Result<Limits> {
    let mut c = upstreams::LimitsConfig::default();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let Value::String(key) = k else {
            return Err(invalid("cfg keys must be strings"));
        };
        let key = key.to_str()?.to_string();
        match key.as_str() {
            "dns" => {} // read by read_dns
            "max_errors" => c.max_errors = Some(count(&key, v)?),
            "max_consecutive_errors" => c.max_consecutive_errors = Some(count(&key, v)?),
            "dns_retransmits" => c.dns_retransmits = Some(count(&key, v)?),
            "error_time" => c.error_time = Some(number(&key, v)?),
            "revive_time" => c.revive_time = Some(number(&key, v)?),
            "dns_timeout" => c.dns_timeout = Some(number(&key, v)?),
            "lazy_resolve_time" => c.lazy_resolve_time = Some(number(&key, v)?),
            "resolve_min_interval" => c.resolve_min_interval = Some(number(&key, v)?),
            "probe_max_backoff" => c.probe_max_backoff = Some(number(&key, v)?),
            "slow_start" => c.slow_start = Some(number(&key, v)?),
            "latency_half_life" => c.latency_half_life = Some(number(&key, v)?),
            "default_latency" => c.default_latency = Some(number(&key, v)?),
            "revive_jitter" => c.revive_jitter = Some(number(&key, v)?),
            "balance_factor" => c.balance_factor = Some(number(&key, v)?),
            "probe_jitter" => c.probe_jitter = Some(number(&key, v)?),
            "seed" => c.seed = Some(u64::from(count(&key, v)?)),
            "hash" => {
                let Value::String(s) = v else {
                    return Err(invalid(
                        "cfg.hash must be \"balanced\", \"bounded\", \"rspamd-ring\" or \
                         \"rspamd-jump\"",
                    ));
                };
                let name = s.to_str()?.to_string();
                // The parser's message names the known modes.
                name.parse::<HashMode>().map_err(invalid)?;
                c.hash = Some(name);
            }
            other => return Err(invalid(format!("unknown cfg option {other:?}"))),
        }
    }
    c.apply(l).map_err(|e| invalid(format!("cfg: {e}")))
}

/// The type name Lua's own `type()` gives (integers are numbers).
pub(crate) fn lua_type(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) | Value::Number(_) => "number",
        other => other.type_name(),
    }
}
