//! The `gauntlet` binary: parses flags into a plan once, then runs it.
//! Errors print with their causes; bad input exits with code 2.

mod cli;

// Replaying a journal allocates millions of small strings; mimalloc halves that cost.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if cli::is_usage_error(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
