//! The `scim_*` keys of the daemon's settings file. [`ScimKeys`] holds each key as read (the settings
//! parser hands every `scim_*` line here, with Dovecot's `<file` already resolved); [`ScimKeys::resolve`]
//! checks them together once, at start, into the small parts the service is built from.

use super::backend::{DmsConfig, PlainConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The shortest bearer token accepted: an identity provider stores it like a password, so a short
/// one is guessable over a network.
pub const MIN_TOKEN_CHARS: usize = 32;

/// A secret that never shows in `{:?}` (the settings are debug-printed in tests and errors).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Dms,
    PasswdFile,
}

/// The keys as read, before the cross-key checks. Comparable, so a reload can tell they changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScimKeys {
    listen: Option<String>,
    token: Option<Secret>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    domains: Vec<String>,
    backend: Option<BackendKind>,
    state_file: Option<PathBuf>,
    dms_config_dir: Option<PathBuf>,
    mail_root: Option<PathBuf>,
    delete_mailbox: bool,
    aliases: Option<bool>,
    quota_attribute: Option<String>,
    passwd_file: Option<PathBuf>,
    mailbox_map: Option<PathBuf>,
    alias_map: Option<PathBuf>,
    uid: Option<u32>,
    gid: Option<u32>,
    after_change: Vec<String>,
    max_requests_per_minute: Option<u32>,
    public_url: Option<String>,
}

/// Which mail system the accounts go to, with its own settings.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    Dms(DmsConfig),
    Plain(PlainConfig),
}

/// The SCIM service's settings, checked.
#[derive(Debug, Clone)]
pub struct ScimSettings {
    pub listen: SocketAddr,
    pub token: Secret,
    /// PEM certificate chain and private key; `None`: plain HTTP (behind a TLS reverse proxy).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The domains whose addresses may be provisioned (lowercase).
    pub domains: Vec<String>,
    pub state_file: PathBuf,
    pub backend: BackendChoice,
    /// Whether a user's other `emails` of a served domain become aliases of the account.
    pub aliases: bool,
    /// The attribute (`attr` or `URN:attr`) whose value is the account's quota; `None`: no quotas.
    pub quota_attribute: Option<String>,
    pub max_requests_per_minute: u32,
    /// `scim_public_url`: the service's URL as clients reach it (behind a reverse proxy), for the
    /// `location` of resources; by default it is made from the `Host` header and the listener's scheme.
    pub public_url: Option<String>,
}

/// DMS's config folder inside the container (the volume that holds postfix-accounts.cf).
pub const DMS_CONFIG_DIR: &str = "/tmp/docker-mailserver";
pub const STATE_FILE_NAME: &str = "dovecot-oauth2-scim.json";

fn path(v: &str) -> Result<Option<PathBuf>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let p = PathBuf::from(v);
    if !p.is_absolute() {
        return Err("must be an absolute path".into());
    }
    Ok(Some(p))
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "1" => Ok(true),
        "no" | "n" | "false" | "0" => Ok(false),
        _ => Err("is not yes or no".into()),
    }
}

fn id_number(v: &str) -> Result<Option<u32>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u32>().map(Some).map_err(|_| "is not a whole number".into())
}

impl ScimKeys {
    /// Whether `key` is one of ours (the settings parser asks before handing it over).
    pub fn knows(key: &str) -> bool {
        KEYS.contains(&key)
    }

    /// Takes one `key = value` line. Reasons never quote the value (it may be the token).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "scim_listen" => self.listen = (!value.is_empty()).then(|| value.to_string()),
            "scim_token" => self.token = (!value.is_empty()).then(|| Secret(value.to_string())),
            "scim_tls_cert" => self.tls_cert = path(value)?,
            "scim_tls_key" => self.tls_key = path(value)?,
            "scim_domains" => {
                self.domains = value.split_whitespace().map(str::to_ascii_lowercase).collect();
                for d in &self.domains {
                    let label_ok = |l: &str| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    };
                    if d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
                        return Err(format!(
                            "'{}' is not a domain name (ASCII labels of letters, digits and '-'; an IDN in its xn-- form)",
                            crate::escape::shown_max(d, 80)
                        ));
                    }
                }
            }
            "scim_backend" => {
                self.backend = match value {
                    "" => None,
                    "dms" => Some(BackendKind::Dms),
                    "passwd-file" => Some(BackendKind::PasswdFile),
                    _ => return Err("is not dms or passwd-file".into()),
                }
            }
            "scim_state_file" => self.state_file = path(value)?,
            "scim_dms_config_dir" => self.dms_config_dir = path(value)?,
            "scim_mail_root" => self.mail_root = path(value)?,
            "scim_delete_mailbox" => self.delete_mailbox = !value.is_empty() && yes_no(value)?,
            "scim_aliases" => self.aliases = if value.is_empty() { None } else { Some(yes_no(value)?) },
            "scim_quota_attribute" => {
                if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err("must be one attribute name (attr or URN:attr)".into());
                }
                self.quota_attribute = (!value.is_empty()).then(|| value.to_string())
            }
            "scim_passwd_file" => self.passwd_file = path(value)?,
            "scim_mailbox_map" => self.mailbox_map = path(value)?,
            "scim_alias_map" => self.alias_map = path(value)?,
            "scim_uid" => self.uid = id_number(value)?,
            "scim_gid" => self.gid = id_number(value)?,
            "scim_after_change" => {
                self.after_change = value.split_whitespace().map(str::to_string).collect();
                if self.after_change.first().is_some_and(|c| !Path::new(c).is_absolute()) {
                    return Err("the command must be an absolute path (no shell, no PATH search)".into());
                }
            }
            "scim_public_url" => {
                let v = value.trim_end_matches('/');
                if !v.is_empty() {
                    let u = url::Url::parse(v).map_err(|_| "is not a URL".to_string())?;
                    if !matches!(u.scheme(), "http" | "https")
                        || !u.username().is_empty()
                        || u.password().is_some()
                        || u.query().is_some()
                        || u.fragment().is_some()
                    {
                        return Err("must be an http(s) URL without credentials, query or fragment".into());
                    }
                }
                self.public_url = (!v.is_empty()).then(|| v.to_string());
            }
            "scim_max_requests_per_minute" if value.is_empty() => self.max_requests_per_minute = None,
            "scim_max_requests_per_minute" => {
                let n = value.parse::<u32>().map_err(|_| "is not a whole number".to_string())?;
                if n == 0 {
                    return Err("must be at least 1".into());
                }
                self.max_requests_per_minute = Some(n);
            }
            _ => return Err("is not a SCIM key".into()),
        }
        Ok(())
    }

    /// Whether the SCIM service is asked for at all.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    /// The checked settings, `None` when `scim_listen` is not set (then every other `scim_*` key
    /// set is an error: a half-configured service that silently does nothing is worse).
    /// Errors are `(key, reason)`.
    pub fn resolve(&self) -> Result<Option<ScimSettings>, (&'static str, String)> {
        let Some(listen) = &self.listen else {
            if *self != ScimKeys::default() {
                return Err(("scim_listen", "is required when other scim_* keys are set".into()));
            }
            return Ok(None);
        };
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ("scim_listen", "must be IP:PORT (0.0.0.0:PORT for every interface)".to_string()))?;
        let token = self.token.clone().ok_or((
            "scim_token",
            "is required with scim_listen: the bearer token the identity provider sends (<file reads it from a file)"
                .to_string(),
        ))?;
        if token.0.chars().count() < MIN_TOKEN_CHARS {
            return Err(("scim_token", format!("must be at least {MIN_TOKEN_CHARS} characters")));
        }
        if token.0.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(("scim_token", "must be printable ASCII without spaces (it is sent in an HTTP header)".into()));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(("scim_tls_key", "is required with scim_tls_cert".into())),
            (None, Some(_)) => return Err(("scim_tls_cert", "is required with scim_tls_key".into())),
        };
        if self.domains.is_empty() {
            return Err(("scim_domains", "is required: the mail domains whose accounts may be provisioned".into()));
        }
        let mail_root = self.mail_root.clone().unwrap_or_else(|| PathBuf::from("/var/mail"));
        let kind = self.backend.unwrap_or(BackendKind::Dms);
        let plain_keys = [
            ("scim_passwd_file", self.passwd_file.is_some()),
            ("scim_mailbox_map", self.mailbox_map.is_some()),
            ("scim_alias_map", self.alias_map.is_some()),
            ("scim_uid", self.uid.is_some()),
            ("scim_gid", self.gid.is_some()),
            ("scim_after_change", !self.after_change.is_empty()),
        ];
        let (backend, default_state) = match kind {
            BackendKind::Dms => {
                if let Some((key, _)) = plain_keys.iter().find(|(_, set)| *set) {
                    return Err((key, "is for scim_backend = passwd-file".into()));
                }
                let dir = self.dms_config_dir.clone().unwrap_or_else(|| PathBuf::from(DMS_CONFIG_DIR));
                let state = dir.join(STATE_FILE_NAME);
                (BackendChoice::Dms(DmsConfig { dir, mail_root, delete_mailbox: self.delete_mailbox }), Some(state))
            }
            BackendKind::PasswdFile => {
                if self.dms_config_dir.is_some() {
                    return Err(("scim_dms_config_dir", "is for scim_backend = dms".into()));
                }
                let need = |v: &Option<PathBuf>, key: &'static str| {
                    v.clone().ok_or((key, "is required with scim_backend = passwd-file".to_string()))
                };
                let passwd_file = need(&self.passwd_file, "scim_passwd_file")?;
                let mailbox_map = need(&self.mailbox_map, "scim_mailbox_map")?;
                let alias_map = need(&self.alias_map, "scim_alias_map")?;
                let uid = self.uid.ok_or(("scim_uid", "is required with scim_backend = passwd-file".to_string()))?;
                let gid = self.gid.ok_or(("scim_gid", "is required with scim_backend = passwd-file".to_string()))?;
                let plain = PlainConfig {
                    passwd_file,
                    mailbox_map,
                    alias_map,
                    uid,
                    gid,
                    mail_root,
                    delete_mailbox: self.delete_mailbox,
                    after_change: self.after_change.clone(),
                };
                (BackendChoice::Plain(plain), None)
            }
        };
        let state_file = match (&self.state_file, default_state) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(("scim_state_file", "is required with scim_backend = passwd-file".into()));
            }
        };
        Ok(Some(ScimSettings {
            listen,
            token,
            tls,
            domains: self.domains.clone(),
            state_file,
            backend,
            aliases: self.aliases.unwrap_or(true),
            quota_attribute: self.quota_attribute.clone(),
            max_requests_per_minute: self.max_requests_per_minute.unwrap_or(600),
            public_url: self.public_url.clone(),
        }))
    }
}

/// Every `scim_*` key (the README's reference lists the same; docker/user-patches.sh checks against it).
pub const KEYS: &[&str] = &[
    "scim_listen",
    "scim_token",
    "scim_tls_cert",
    "scim_tls_key",
    "scim_domains",
    "scim_backend",
    "scim_state_file",
    "scim_dms_config_dir",
    "scim_mail_root",
    "scim_delete_mailbox",
    "scim_aliases",
    "scim_quota_attribute",
    "scim_passwd_file",
    "scim_mailbox_map",
    "scim_alias_map",
    "scim_uid",
    "scim_gid",
    "scim_after_change",
    "scim_max_requests_per_minute",
    "scim_public_url",
];

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn keys(lines: &[(&str, &str)]) -> Result<ScimKeys, String> {
        let mut k = ScimKeys::default();
        for (key, value) in lines {
            k.set(key, value)?;
        }
        Ok(k)
    }

    fn dms() -> Vec<(&'static str, &'static str)> {
        vec![("scim_listen", "127.0.0.1:7643"), ("scim_token", TOKEN), ("scim_domains", "Example.COM example.org")]
    }

    #[test]
    fn without_scim_listen_there_is_no_scim_service() {
        assert!(ScimKeys::default().resolve().unwrap().is_none());
    }

    #[test]
    fn other_scim_keys_without_scim_listen_are_an_error() {
        let k = keys(&[("scim_domains", "example.com")]).unwrap();
        assert_eq!(k.resolve().unwrap_err().0, "scim_listen");
    }

    #[test]
    fn dms_is_the_default_backend_with_its_config_folder_and_the_state_file_in_it() {
        let s = keys(&dms()).unwrap().resolve().unwrap().unwrap();
        let BackendChoice::Dms(d) = &s.backend else { panic!("not dms") };
        assert_eq!(d.dir, PathBuf::from("/tmp/docker-mailserver"));
        assert_eq!(d.mail_root, PathBuf::from("/var/mail"));
        assert!(!d.delete_mailbox);
        assert_eq!(s.state_file, PathBuf::from("/tmp/docker-mailserver/dovecot-oauth2-scim.json"));
        assert_eq!(s.domains, vec!["example.com", "example.org"]);
        assert!(s.aliases);
        assert!(s.tls.is_none());
        assert_eq!(s.max_requests_per_minute, 600);
    }

    #[test]
    fn the_token_is_required_and_must_be_long() {
        let mut l = dms();
        l.retain(|(k, _)| *k != "scim_token");
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_token");
        l.push(("scim_token", "short"));
        let (key, why) = keys(&l).unwrap().resolve().unwrap_err();
        assert_eq!(key, "scim_token");
        assert!(why.contains("32"));
        assert!(!why.contains("short"), "the reason must not show the token");
    }

    #[test]
    fn a_token_with_a_space_is_refused() {
        let mut l = dms();
        l.push(("scim_token", "0123456789abcdef 0123456789abcdef"));
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_token");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let k = keys(&dms()).unwrap();
        assert!(!format!("{k:?}").contains(TOKEN));
        assert!(!format!("{:?}", k.resolve().unwrap().unwrap()).contains(TOKEN));
    }

    #[test]
    fn a_listen_address_must_be_ip_and_port() {
        let mut l = dms();
        l.push(("scim_listen", "localhost"));
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_listen");
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        let mut l = dms();
        l.push(("scim_tls_cert", "/etc/ssl/scim.pem"));
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_tls_key");
        l.push(("scim_tls_key", "/etc/ssl/scim.key"));
        let s = keys(&l).unwrap().resolve().unwrap().unwrap();
        assert_eq!(s.tls, Some(("/etc/ssl/scim.pem".into(), "/etc/ssl/scim.key".into())));
    }

    #[test]
    fn domains_are_required_and_must_be_domain_names() {
        let mut l = dms();
        l.retain(|(k, _)| *k != "scim_domains");
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_domains");
        for bad in ["localhost", "exa mple.com/x", "a..b", "-a.com", "ex_ample.com", "bücher.de"] {
            let mut k = ScimKeys::default();
            assert!(k.set("scim_domains", &format!("example.com {bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwd_file_needs_its_files_ids_and_a_state_file() {
        let mut l = dms();
        l.push(("scim_backend", "passwd-file"));
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_passwd_file");
        l.extend([
            ("scim_passwd_file", "/etc/dovecot/users"),
            ("scim_mailbox_map", "/etc/postfix/scim-mailboxes"),
            ("scim_alias_map", "/etc/postfix/scim-aliases"),
            ("scim_uid", "5000"),
            ("scim_gid", "5000"),
        ]);
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_state_file");
        l.push(("scim_state_file", "/var/lib/dovecot-oauth2/scim.json"));
        l.push(("scim_after_change", "/usr/sbin/postmap /etc/postfix/scim-mailboxes"));
        let s = keys(&l).unwrap().resolve().unwrap().unwrap();
        let BackendChoice::Plain(p) = &s.backend else { panic!("not plain") };
        assert_eq!((p.uid, p.gid), (5000, 5000));
        assert_eq!(p.after_change, vec!["/usr/sbin/postmap", "/etc/postfix/scim-mailboxes"]);
    }

    #[test]
    fn keys_of_the_other_backend_are_an_error() {
        let mut l = dms();
        l.push(("scim_passwd_file", "/etc/dovecot/users"));
        assert_eq!(keys(&l).unwrap().resolve().unwrap_err().0, "scim_passwd_file");
    }

    #[test]
    fn an_after_change_command_must_be_an_absolute_path() {
        assert!(ScimKeys::default().set("scim_after_change", "postmap /etc/postfix/x").is_err());
    }

    #[test]
    fn paths_must_be_absolute() {
        assert!(ScimKeys::default().set("scim_state_file", "scim.json").is_err());
    }

    #[test]
    fn every_key_in_the_list_is_taken_by_set() {
        for key in KEYS {
            let r = ScimKeys::default().set(key, "");
            assert!(r.is_ok(), "{key}: {r:?}");
        }
        assert!(ScimKeys::default().set("scim_unknown", "x").is_err());
    }
}
