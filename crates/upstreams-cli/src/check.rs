//! `upstreams check DEF`.

use std::io::Write;

use anyhow::Result;
use upstreams::{Definition, Host};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition, e.g. `round-robin:10.0.0.1:11333:5,redis.example:6379`.
    definition: String,
    /// Port for entries that name none.
    #[arg(long, short = 'p', default_value_t = 11333)]
    default_port: u16,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let def = Definition::parse(&args.definition, args.default_port)?;
    let mut out = std::io::stdout().lock();
    let rotation = def
        .rotation()
        .map_or_else(|| "(none: caller decides)".to_owned(), |r| r.to_string());
    writeln!(out, "rotation: {rotation}")?;
    writeln!(out, "upstreams: {}", def.entries().len())?;
    let rows: Vec<[String; 5]> = def
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let kind = match e.host() {
                Host::Ip(ip) if ip.is_ipv4() => "ipv4".to_owned(),
                Host::Ip(_) => "ipv6".to_owned(),
                Host::Name(_) => "dns name (pending)".to_owned(),
                Host::Unix(_) => "unix socket".to_owned(),
                Host::Srv { .. } => "srv (pending)".to_owned(),
                _ => "other".to_owned(),
            };
            [
                (i + 1).to_string(),
                e.name().to_owned(),
                e.port().to_string(),
                e.weight().to_string(),
                kind,
            ]
        })
        .collect();
    print_table(&mut out, &["#", "name", "port", "weight", "kind"], &rows)?;
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
