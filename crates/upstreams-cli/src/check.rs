//! `upstreams check DEF`.

use std::io::Write;

use anyhow::{Context, Result};
use upstreams::{Definition, Host, Limits, UpstreamList};
use upstreams_dns::Nameservers;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition, e.g. `round-robin:10.0.0.1:11333:5,redis.example:6379`;
    /// `-` reads it from standard input, `@FILE` from a file (one or more entries a line).
    definition: String,
    /// Port for entries that name none.
    #[arg(long, short = 'p', default_value_t = 11333)]
    default_port: u16,
    #[command(flatten)]
    dns: DnsArgs,
}

/// `--dns`: resolve names (A/AAAA, SRV) before answering.
#[derive(clap::Args, Debug)]
pub(crate) struct DnsArgs {
    /// Resolve names first, asking these nameservers (`ip[:port],…`) or `system`
    /// (/etc/resolv.conf). Without it, names stay unresolved (pending).
    #[arg(long, value_name = "SERVERS")]
    dns: Option<String>,
}

impl DnsArgs {
    /// Resolves the names of `list` when `--dns` was given; failures are reported on stderr
    /// and leave the names pending.
    pub(crate) fn resolve(&self, list: &UpstreamList) -> Result<()> {
        let Some(servers) = &self.dns else {
            return Ok(());
        };
        let servers = Nameservers::parse(servers)?;
        let report = upstreams_dns::resolve_blocking(list, &servers)?;
        if report.failed > 0 {
            eprintln!(
                "upstreams: {} of {} DNS queries failed; those names stay unresolved",
                report.failed, report.queried
            );
        }
        Ok(())
    }
}

/// A definition argument: the text itself, `-` for standard input or `@FILE` for a file
/// (lines are joined as entries: a 10 000-entry list is beyond the argument limit).
pub(crate) fn definition_text(arg: &str) -> Result<String> {
    let text = if arg == "-" {
        std::io::read_to_string(std::io::stdin().lock())
            .context("reading the definition from standard input")?
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the definition from {path}"))?
    } else {
        return Ok(arg.to_owned());
    };
    let entries: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(entries.join(","))
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let text = definition_text(&args.definition)?;
    let def = Definition::parse(&text, args.default_port)?;
    let list = UpstreamList::new(&def, Limits::default())?;
    args.dns.resolve(&list)?;
    let mut out = std::io::stdout().lock();
    let rotation = def
        .rotation()
        .map_or_else(|| "(none: caller decides)".to_owned(), |r| r.to_string());
    writeln!(out, "rotation: {rotation}")?;
    writeln!(out, "upstreams: {}", list.len())?;
    let srv_groups: Vec<usize> = list.srv_entries().iter().map(|(g, _)| *g).collect();
    // A weight-0 entry of a weighted list is a backup: used only when every weighted one is
    // out (SPEC.md item 18).
    let weighted = list.upstreams().iter().any(|u| u.weight() > 0);
    let rows: Vec<[String; 7]> = list
        .upstreams()
        .iter()
        .map(|up| {
            let kind = match up.entry().host() {
                Host::Ip(ip) if ip.is_ipv4() => "ipv4",
                Host::Ip(_) => "ipv6",
                Host::Name(_) if srv_groups.contains(&up.group()) => "srv target",
                Host::Name(_) => "dns name",
                Host::Unix(_) => "unix socket",
                Host::Srv { .. } => "srv",
                _ => "other",
            };
            let addrs: Vec<String> = up.addrs().iter().map(|(a, _)| a.to_string()).collect();
            [
                (up.index() + 1).to_string(),
                up.name().to_owned(),
                up.port().to_string(),
                if weighted && up.weight() == 0 {
                    "0 (backup)".to_owned()
                } else {
                    up.weight().to_string()
                },
                kind.to_owned(),
                format!("{:?}", up.state()).to_lowercase(),
                addrs.join(" "),
            ]
        })
        .collect();
    print_table(
        &mut out,
        &["#", "name", "port", "weight", "kind", "state", "addresses"],
        &rows,
    )?;
    writeln!(out, "normalised: {def}")?;
    Ok(())
}

/// Prints left-aligned columns under a header and a rule.
pub(crate) fn print_table<H: AsRef<str>, C: AsRef<str>>(
    out: &mut impl Write,
    header: &[H],
    rows: &[impl AsRef<[C]>],
) -> std::io::Result<()> {
    let mut width: Vec<usize> = header.iter().map(|h| h.as_ref().chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&width)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(&mut header.iter().map(AsRef::as_ref))?;
    let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
    line(&mut rule.iter().map(String::as_str))?;
    for row in rows {
        line(&mut row.as_ref().iter().map(AsRef::as_ref))?;
    }
    Ok(())
}
