//! `upstreams pick DEF [KEY]...`: which server gets this key?

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use upstreams::{HashMode, Limits, Rotation, UpstreamList};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition (`-`: standard input, `@FILE`: a file).
    definition: String,
    /// Keys to place (hash rotation); without keys, prints the next `--count` picks.
    keys: Vec<String>,
    /// Rotation when the definition has no prefix (random, hash, round-robin,
    /// master-slave, sequential, p2c). Defaults to hash when keys are given, else round-robin.
    #[arg(long, short = 'r')]
    rotation: Option<Rotation>,
    /// Consistent-hash mode: balanced, bounded, rspamd-ring (rspamd 4.x) or rspamd-jump
    /// (rspamd 3.x).
    #[arg(long, default_value = "balanced")]
    hash: HashMode,
    /// Take this upstream offline first (by name; repeatable).
    #[arg(long = "down", value_name = "NAME")]
    down: Vec<String>,
    /// Picks to print for unkeyed rotations.
    #[arg(long, short = 'n', default_value_t = 10)]
    count: usize,
    /// Read keys one per line from this file (`-` for standard input); also `--keys`.
    #[arg(long, visible_alias = "keys", value_name = "FILE")]
    keys_from: Option<String>,
    /// Port for entries that name none.
    #[arg(long, short = 'p', default_value_t = 11333)]
    default_port: u16,
    #[command(flatten)]
    dns: crate::check::DnsArgs,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.definition == "-" && args.keys_from.as_deref() == Some("-") {
        bail!("the definition and the keys cannot both come from standard input");
    }
    let text = crate::check::definition_text(&args.definition)?;
    let limits = Limits::default().with_hash_mode(args.hash);
    let list = UpstreamList::parse(&text, args.default_port, limits)?;
    args.dns.resolve(&list)?;
    for name in &args.down {
        let up = list
            .find(name)
            .with_context(|| format!("--down {name:?}: no upstream of that name"))?;
        up.mark_offline(Duration::from_secs(3600));
    }
    let keyed = !args.keys.is_empty() || args.keys_from.is_some();
    let rotation = args.rotation.unwrap_or(if keyed {
        Rotation::Hashed
    } else {
        Rotation::RoundRobin
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    let place = |key: &[u8], out: &mut dyn std::io::Write| -> Result<()> {
        match list.get(rotation, key) {
            Some(p) => writeln!(out, "{}", p.name())?,
            None => bail!("no upstream is selectable"),
        }
        Ok(())
    };
    if keyed {
        for key in &args.keys {
            place(key.as_bytes(), &mut out)?;
        }
        if let Some(path) = &args.keys_from {
            // Streamed, as bytes: a key need not be UTF-8, and 10^7 keys are not held at once.
            let reader: Box<dyn BufRead> = if path == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("reading keys from {path}"))?,
                ))
            };
            for line in reader.split(b'\n') {
                let mut key = line?;
                if key.last() == Some(&b'\r') {
                    key.pop();
                }
                place(&key, &mut out)?;
            }
        }
    } else {
        for _ in 0..args.count {
            match list.get(rotation, b"") {
                Some(p) => {
                    writeln!(out, "{}", p.name())?;
                    p.ok();
                }
                // Sequential answers nothing after running off the end, then starts over.
                None if list.alive_count() > 0 => writeln!(out, "(none)")?,
                None => {
                    out.flush()?;
                    bail!("no upstream is selectable");
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}
