//! The `gauntlet` binary: parses flags into a plan once, then runs it.
//! Errors print with their causes; bad input exits with code 2.

mod cli;

// Replaying a journal allocates millions of small strings; mimalloc halves that cost.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if args.may_train() {
        // Before any torch call, and before the spawner forks: its workers inherit it.
        if let gauntlet::cuda::Cuda::Failed(why) = gauntlet::cuda::load() {
            eprintln!("warning: libtorch_cuda did not load; training on the CPU: {why}");
        }
    }
    if args.spawns_workers() {
        // Before any thread starts: the spawner must be forked single-threaded.
        gauntlet::cluster::spawner::start(forked_worker);
    }
    let code = run(args);
    // Everything is written and closed: skip libtorch's static destructors.
    gauntlet::cluster::spawner::fast_exit(code)
}

/// What a worker forked by the spawner runs: a command line, as `main` would.
fn forked_worker(argv: Vec<String>) -> u8 {
    match cli::Cli::try_parse_from(argv) {
        Ok(args) => run(args),
        Err(e) => {
            let _ = e.print();
            2
        }
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text
/// the message already holds (many errors name their cause themselves).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn run(args: cli::Cli) -> u8 {
    match cli::run(args) {
        Ok(code) => code.0,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            if cli::is_usage_error(&e) {
                2
            } else {
                1
            }
        }
    }
}
