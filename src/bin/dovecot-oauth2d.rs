//! `dovecot-oauth2d -c SETTINGS`: the dovecot-oauth2 engine as an RFC 7662 introspection service for
//! Dovecot's own oauth2 client. Everything is in `dovecot_oauth2::daemon`; this is the entry point.

use dovecot_oauth2::daemon::{self, cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(cli::Command::Run(path)) => daemon::run(&path),
        Ok(cli::Command::Test(path)) => daemon::test(&path),
        Ok(cli::Command::ScimStatus(path)) => daemon::scim_status(&path),
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Version) => {
            println!("dovecot-oauth2d {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dovecot-oauth2d: {e}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}
