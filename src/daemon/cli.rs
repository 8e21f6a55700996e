//! The command line: `dovecot-oauth2d -c SETTINGS [-t]`. Nothing is read from the environment.

use std::path::PathBuf;

pub const USAGE: &str = "usage: dovecot-oauth2d -c SETTINGS [-t | --scim-status]

Answers RFC 7662 token introspection (POST /introspect) for Dovecot's oauth2 client, with the
dovecot-oauth2 engine: one cache for every Dovecot process on this host. Runs in the foreground and
logs to standard error. SIGHUP rereads SETTINGS (a broken file keeps the running settings);
SIGTERM and SIGINT stop it after the requests in flight.

  -c, --config SETTINGS  the settings file: the Lua module's keys, plus listen (default
                         127.0.0.1:7662), listen_client_id and listen_client_secret (required: the
                         ID:SECRET of Dovecot's introspection_url) and metrics_listen (optional)
  -t, --test             check SETTINGS and exit: 0 usable, 2 not
      --scim-status      print the users SCIM provisioned (scim_* keys of SETTINGS) and whether
                         the mail system's files hold them; exit 0 all in place, 1 some not, 2 error
  -h, --help             this text
  -V, --version          the version

Exit code: 0 after SIGTERM/SIGINT or a good -t, 2 when it cannot start (settings, listen address).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(PathBuf),
    Test(PathBuf),
    ScimStatus(PathBuf),
    Help,
    Version,
}

/// The arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut path = None;
    let mut test = false;
    let mut status = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-t" | "--test" => test = true,
            "--scim-status" => status = true,
            "-c" | "--config" => {
                let p = it.next().ok_or_else(|| format!("{a} needs a settings file"))?;
                if path.replace(PathBuf::from(p)).is_some() {
                    return Err("-c is given twice".into());
                }
            }
            other => {
                if let Some(p) = other.strip_prefix("--config=") {
                    if path.replace(PathBuf::from(p)).is_some() {
                        return Err("-c is given twice".into());
                    }
                } else {
                    return Err(format!("unknown argument '{}'", crate::escape::shown(other)));
                }
            }
        }
    }
    let path = path.ok_or("-c SETTINGS is required")?;
    match (test, status) {
        (true, true) => Err("-t and --scim-status exclude each other".into()),
        (true, false) => Ok(Command::Test(path)),
        (false, true) => Ok(Command::ScimStatus(path)),
        (false, false) => Ok(Command::Run(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn c_names_the_settings_file() {
        assert_eq!(parse(&args(&["-c", "/etc/d.conf"])), Ok(Command::Run("/etc/d.conf".into())));
        assert_eq!(parse(&args(&["--config=/etc/d.conf"])), Ok(Command::Run("/etc/d.conf".into())));
    }

    #[test]
    fn t_checks_instead_of_running() {
        assert_eq!(parse(&args(&["-t", "-c", "x"])), Ok(Command::Test("x".into())));
        assert_eq!(parse(&args(&["-c", "x", "--test"])), Ok(Command::Test("x".into())));
    }

    #[test]
    fn scim_status_prints_instead_of_running() {
        assert_eq!(parse(&args(&["-c", "x", "--scim-status"])), Ok(Command::ScimStatus("x".into())));
        assert!(parse(&args(&["-c", "x", "--scim-status", "-t"])).is_err());
    }

    #[test]
    fn the_settings_file_is_required() {
        assert!(parse(&args(&[])).unwrap_err().contains("-c SETTINGS is required"));
        assert!(parse(&args(&["-c"])).is_err());
        assert!(parse(&args(&["-c", "a", "-c", "b"])).is_err());
    }

    #[test]
    fn unknown_arguments_are_refused() {
        assert!(parse(&args(&["-c", "x", "--foreground"])).unwrap_err().contains("'--foreground'"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
        assert_eq!(parse(&args(&["-V"])), Ok(Command::Version));
    }
}
