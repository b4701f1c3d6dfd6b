//! The `qf-engine` command line.

mod cli;

use clap::Parser;

/// Counts live heap bytes (two relaxed atomics per allocation), so that `bench --memory`
/// sees a peak the resident set can miss.
#[global_allocator]
static ALLOC: qf_engine::train::memory::CountingAllocator = qf_engine::train::memory::CountingAllocator;

fn main() {
    // A file-size limit (`ulimit -f`) then fails the write with EFBIG, which is reported
    // as a clear error, instead of killing the process with SIGXFSZ mid-checkpoint.
    // Safety: called before any other thread exists; SIG_IGN needs no handler.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    qf_engine::backend::cpu::keep_freed_memory();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
