//! `astrtc completions SHELL` and `astrtc man`: the command line described for shells and `man`.

use std::io::Write;

use clap::CommandFactory;

use super::CmdError;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CmdError> {
    let mut cmd = astrtc::cli::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "astrtc", &mut buf);
    print_bytes(&buf)
}

/// Prints the manual page (roff); its SUBCOMMANDS section lists every command.
pub fn man() -> Result<(), CmdError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(astrtc::cli::Cli::command())
        .render(&mut buf)
        .map_err(|source| CmdError::Output { source })?;
    print_bytes(&buf)
}

fn print_bytes(bytes: &[u8]) -> Result<(), CmdError> {
    std::io::stdout().lock().write_all(bytes).map_err(|source| CmdError::Output { source })
}
