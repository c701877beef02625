//! The `astrtc` binary: parse the command line, run the command, print errors as miette
//! reports, exit 0 (success), 1 (failure at run time) or 2 (bad input).

mod cmd;
mod ui;

use clap::Parser;

fn main() {
    let cli = astrtc::cli::Cli::parse();
    if let Err(err) = cmd::run(cli.command) {
        let code = err.exit_code();
        eprintln!("{:?}", miette::Report::new(err));
        std::process::exit(code);
    }
}
