//! The `qf-engine` command line.

mod cli;

use clap::Parser;

fn main() {
    qf_engine::backend::cpu::keep_freed_memory();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
