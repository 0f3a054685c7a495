//! `upstreams`: check, pick from and simulate rspamd-style upstream lists.

// One call into the C allocator (proxy/trim.rs) is the only unsafe code, allowed there alone.
#![deny(unsafe_code)]

mod backend;
mod check;
mod pick;
mod proxy;
mod scenario;
mod simulate;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Client-side load balancing over rspamd-style upstream lists.
#[derive(Parser, Debug)]
#[command(name = "upstreams", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse a definition and show the list as a table (non-zero exit on error).
    Check(check::Args),
    /// Which upstream gets this key? Prints one picked name per key (or per pick).
    Pick(pick::Args),
    /// Run picks per rotation against a list with a failing upstream; print how they spread.
    Simulate(simulate::Args),
    /// Load-balance TCP over a list: retries, health, metrics, status page, reload on SIGHUP.
    Proxy(Box<proxy::Args>),
    /// Shell completions: `upstreams completions bash > /etc/bash_completion.d/upstreams`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The manual page (roff): `upstreams man > upstreams.1`.
    Man,
    /// A tiny HTTP backend for tests and benchmarks.
    #[command(hide = true)]
    Backend(backend::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Pick(args) => pick::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Proxy(args) => proxy::run(&args),
        Command::Backend(args) => backend::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "upstreams",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `upstreams simulate | head` is not an error.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("upstreams: {err:#}");
            ExitCode::from(2)
        }
    }
}
