//! One SCIM request in, one reply out: the Users resource over the [`Store`] and a [`Backend`], and the
//! discovery endpoints. No sockets here (the daemon's `scim` listener is a thin layer over this), so
//! every rule is a unit test with a manual clock.
//!
//! Writes are serialised by one lock and follow one order, so that a crash at any point is repaired by
//! the next start ([`Service::reconcile`]): the store first (the user as the identity provider now
//! wants it, `applied` still what the files held), then the backend, then `applied`. A deleted user
//! stays in the store, marked, until its account is gone from the files.

use super::address::mail_address;
use super::backend::{Account, Backend, BackendError, Dms, Plain};
use super::discovery;
use super::error::ScimError;
use super::filter::Filter;
use super::patch;
use super::resource::{self, User};
use super::settings::{BackendChoice, ScimSettings};
use super::store::{Entry, Store, StoreError};
use crate::clock::Clock;
use crate::escape::shown_max;
use serde_json::{json, Value};
use std::sync::Mutex;

pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// The most resources one list reply holds (announced as `filter.maxResults`).
pub const MAX_RESULTS: usize = 200;
const DEFAULT_COUNT: usize = 100;
/// The most users one service holds: bounds the store file and every list scan.
pub const MAX_USERS: usize = 100_000;
/// The most aliases one account gets (its other emails).
const MAX_ALIASES: usize = 32;

/// A request, as the listener hands it over: `path` is what follows `/scim/v2`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// `If-Match` (RFC 7644 3.14), for PUT, PATCH and DELETE.
    pub if_match: Option<&'a str>,
    /// The base URL of this service as the client reached it (`https://mail.example.com/scim/v2`).
    pub base: &'a str,
}

/// A reply: the listener adds `Content-Type: application/scim+json`, `Location` and `ETag`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub etag: Option<String>,
    /// What changed in the mail system, for the log (already escaped); or why the request was refused.
    pub note: Option<String>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply { status, body: body.to_string(), location: None, etag: None, note: None }
    }

    fn user(status: u16, user: &User, rep: Value, base: &str) -> Reply {
        Reply {
            status,
            body: rep.to_string(),
            location: Some(format!("{base}/Users/{}", user.id)),
            etag: Some(etag(user)),
            note: None,
        }
    }

    fn noted(mut self, note: String) -> Reply {
        self.note = Some(note);
        self
    }
}

impl From<ScimError> for Reply {
    fn from(e: ScimError) -> Reply {
        let note = format!("refused: {e}");
        Reply { status: e.status, body: e.body(), location: None, etag: None, note: Some(note) }
    }
}

fn etag(user: &User) -> String {
    format!("W/\"{}\"", user.version)
}

/// A list or search query (RFC 7644 3.4.2), from the URL or a SearchRequest body.
struct Query {
    filter: Option<String>,
    start: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    excluded: Option<String>,
}

/// What the service needs of the settings to turn a user into an account.
#[derive(Debug, Clone)]
pub struct Rules {
    pub domains: Vec<String>,
    pub aliases: bool,
    pub quota_attribute: Option<String>,
    pub max_requests_per_minute: u32,
}

impl From<&ScimSettings> for Rules {
    fn from(s: &ScimSettings) -> Rules {
        Rules {
            domains: s.domains.clone(),
            aliases: s.aliases,
            quota_attribute: s.quota_attribute.clone(),
            max_requests_per_minute: s.max_requests_per_minute,
        }
    }
}

impl Rules {
    /// The account a user should have in the files now (`None`: none, while inactive).
    pub fn desired(&self, user: &User) -> Result<Option<Account>, ScimError> {
        let account = self.account(user)?;
        Ok(user.active().then_some(account))
    }

    /// The account of a user, active or not: checked even while inactive, so that an address is
    /// reserved for its user and a later `active: true` cannot fail on it.
    ///
    /// Its address is the primary email of a served domain, else the user name if it is an address,
    /// else the first email of a served domain (Authentik and Keycloak send a plain `userName` and the
    /// address in `emails`; Entra ID's userName is the UPN). Other emails of served domains become
    /// aliases; emails of other domains are kept in the resource and not delivered here.
    pub fn account(&self, user: &User) -> Result<Account, ScimError> {
        let domains = &self.domains;
        let served =
            |v: &str| v.rsplit_once('@').is_some_and(|(_, d)| domains.iter().any(|s| s.eq_ignore_ascii_case(d)));
        let emails = user.emails();
        let name = user.user_name();
        let chosen = emails
            .iter()
            .find(|(v, primary)| *primary && served(v))
            .map(|(v, _)| v.as_str())
            .or_else(|| name.contains('@').then_some(name))
            .or_else(|| emails.iter().find(|(v, _)| served(v)).map(|(v, _)| v.as_str()))
            .ok_or_else(|| {
                ScimError::invalid_value(format!(
                    "userName '{}' is not a mail address, and no email is of a domain this server serves ({})",
                    shown_max(name, 254),
                    domains.join(", ")
                ))
            })?;
        let address = mail_address(chosen, domains)?;
        let mut aliases: Vec<String> = Vec::new();
        if self.aliases {
            for (v, _) in emails.iter().filter(|(v, _)| served(v)) {
                let a = mail_address(v, domains)?;
                if a != address && !aliases.contains(&a) {
                    aliases.push(a);
                }
            }
            if aliases.len() > MAX_ALIASES {
                return Err(ScimError::too_many(format!("more than {MAX_ALIASES} addresses for one user")));
            }
        }
        let quota = match &self.quota_attribute {
            Some(attr) => user.attribute(attr).map(quota_value).transpose()?.flatten(),
            None => None,
        };
        Ok(Account { address, aliases, quota })
    }
}

/// Requests of the last minute, for `scim_max_requests_per_minute` (the identity provider is one
/// client; a runaway sync loop must not keep the lock forever).
struct Window {
    start: u64,
    count: u32,
}

pub struct Service {
    rules: Rules,
    store: Mutex<Store>,
    backend: Box<dyn Backend>,
    clock: Clock,
    window: Mutex<Window>,
}

/// Records what the files now hold for user `id`.
fn record_applied(store: &mut Store, id: &str, applied: Option<Account>) -> Result<(), StoreError> {
    store.commit(|s| {
        if let Some(e) = s.entries.get_mut(id) {
            e.applied = applied;
        }
    })
}

/// The backend the settings name.
pub fn backend_for(choice: &BackendChoice) -> Box<dyn Backend> {
    match choice {
        BackendChoice::Dms(c) => Box::new(Dms::new(c.clone())),
        BackendChoice::Plain(c) => Box::new(Plain::new(c.clone())),
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> ScimError {
        ScimError::internal(format!("the SCIM state could not be saved: {e}"))
    }
}

impl From<BackendError> for ScimError {
    fn from(e: BackendError) -> ScimError {
        match e {
            BackendError::Taken(a) => ScimError::uniqueness(format!(
                "{} is already an account or alias on this server, or its kept mailbox holds mail",
                shown_max(&a, 254)
            )),
            BackendError::Busy(why) => ScimError::unavailable(why),
            BackendError::Io(why) => ScimError::internal(why),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock left the store as committed (commit swaps whole states).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh random id: 128 bits as 32 hex characters.
fn new_id() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random number generator failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn query_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).take(32).collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn parse_body(body: &[u8]) -> Result<Value, ScimError> {
    serde_json::from_slice::<Value>(body).map_err(|e| ScimError::invalid_syntax(format!("the body is not JSON: {e}")))
}

/// A quota as DMS's `setup quota set` writes it: digits with an optional unit (B, K, M, G, T).
fn quota_value(v: &Value) -> Result<Option<String>, ScimError> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => s.trim().to_ascii_uppercase(),
        Value::Number(n) if n.as_u64().is_some() => format!("{}B", n.as_u64().unwrap_or(0)),
        _ => return Err(ScimError::invalid_value("the quota must be a string such as 10M or 1G")),
    };
    let digits = s.trim_end_matches(['B', 'K', 'M', 'G', 'T']);
    let unit_len = s.len() - digits.len();
    if digits.is_empty() || digits.len() > 12 || unit_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScimError::invalid_value(format!(
            "the quota '{}' is not a size such as 10M or 1G (0 for none)",
            shown_max(&s, 40)
        )));
    }
    Ok(Some(s))
}

impl Service {
    /// Opens the store and reconciles the files with it (a crash or another writer may have left
    /// them behind). Problems with single users are logged by the caller from the returned notes.
    pub fn open(settings: &ScimSettings, clock: Clock) -> Result<(Service, Vec<String>), StartError> {
        let store = Store::open(&settings.state_file).map_err(|e| StartError(e.to_string()))?;
        Service::with_store(Rules::from(settings), store, backend_for(&settings.backend), clock)
    }

    pub fn with_store(
        rules: Rules,
        store: Store,
        backend: Box<dyn Backend>,
        clock: Clock,
    ) -> Result<(Service, Vec<String>), StartError> {
        let start = clock.unix();
        let service =
            Service { rules, store: Mutex::new(store), backend, clock, window: Mutex::new(Window { start, count: 0 }) };
        let notes = service.reconcile().map_err(|e| StartError(e.detail))?;
        Ok((service, notes))
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Finishes every change a crash or a failed write interrupted (the store is ahead of the files),
    /// and removals still marked. Returns a note per user it changed or could not.
    pub fn reconcile(&self) -> Result<Vec<String>, ScimError> {
        let mut store = lock(&self.store);
        let ids: Vec<String> = store.state().entries.keys().cloned().collect();
        let mut notes = Vec::new();
        for id in ids {
            let Some(entry) = store.state().entries.get(&id).cloned() else { continue };
            let desired = if entry.deleted { Ok(None) } else { self.rules.desired(&entry.user) };
            let desired = match desired {
                Ok(d) => d,
                Err(e) => {
                    notes.push(format!(
                        "user {} ({}): left as it is: {}",
                        id,
                        shown_max(entry.user.user_name(), 254),
                        e.detail
                    ));
                    continue;
                }
            };
            // Only interrupted changes are finished here: checking every account against the files
            // would make a start cost users x file size. `--scim-status` shows entries others lost.
            if entry.applied == desired && !entry.deleted {
                continue;
            }
            let name = shown_max(entry.user.user_name(), 254);
            if entry.deleted {
                match self.backend.apply(entry.applied.as_ref(), None) {
                    Ok(()) => {
                        store.commit(|s| {
                            s.entries.remove(&id);
                        })?;
                        notes.push(format!("user {id}: removal finished"));
                    }
                    Err(e) => notes.push(format!("user {id} ({name}): removal not finished: {e}")),
                }
                continue;
            }
            match self.bring_up_to_date(entry.applied.as_ref(), desired.as_ref()) {
                Ok(()) => {
                    record_applied(&mut store, &id, desired)?;
                    notes.push(format!("user {id} ({name}): files brought up to date"));
                }
                Err(e) => notes.push(format!("user {id} ({name}): files not brought up to date: {e}")),
            }
        }
        Ok(notes)
    }

    /// Makes the files hold `desired` for an entry whose files lag it. What the files may hold is
    /// `applied`, or, for a create a crash or failure interrupted (nothing applied), part of the
    /// account itself: its own lines are repaired, not a conflict. The caller records `desired`.
    fn bring_up_to_date(&self, applied: Option<&Account>, desired: Option<&Account>) -> Result<(), BackendError> {
        self.backend.apply(applied.or(desired), desired)
    }

    /// Refuses a user name or address another user holds (its account, aliases, also while inactive).
    fn check_unique(&self, store: &Store, id: Option<&str>, user: &User, account: &Account) -> Result<(), ScimError> {
        for (other_id, e) in &store.state().entries {
            if Some(other_id.as_str()) == id {
                continue;
            }
            if !e.deleted && e.user.user_name().eq_ignore_ascii_case(user.user_name()) {
                return Err(ScimError::uniqueness(format!(
                    "userName '{}' already exists",
                    shown_max(user.user_name(), 254)
                )));
            }
            let theirs = self.rules.account(&e.user).ok();
            let held: Vec<&str> = theirs.iter().chain(e.applied.iter()).flat_map(|a| a.addresses()).collect();
            if let Some(a) = account.addresses().find(|a| held.contains(a)) {
                return Err(ScimError::uniqueness(format!("{} belongs to another user", shown_max(a, 254))));
            }
        }
        Ok(())
    }

    fn rate_limited(&self) -> Option<ScimError> {
        let now = self.clock.unix();
        let mut w = lock(&self.window);
        if now >= w.start + 60 {
            *w = Window { start: now, count: 0 };
        }
        w.count += 1;
        (w.count > self.rules.max_requests_per_minute).then(|| {
            ScimError::new(
                429,
                None,
                format!("more than {} requests in a minute; retry later", self.rules.max_requests_per_minute),
            )
        })
    }

    /// Answers one request.
    pub fn handle(&self, req: &Request) -> Reply {
        if let Some(e) = self.rate_limited() {
            return e.into();
        }
        match self.route(req) {
            Ok(r) => r,
            Err(e) => e.into(),
        }
    }

    fn route(&self, req: &Request) -> Result<Reply, ScimError> {
        let path = req.path.trim_end_matches('/');
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (first, rest) = (parts.next().unwrap_or(""), parts.next());
        let method = req.method;
        let not_allowed =
            |allowed: &str| ScimError::new(405, None, format!("{method} is not supported here (allowed: {allowed})"));
        match (first, rest) {
            (".search", None) | ("Users", Some(".search")) => match method {
                "POST" => self.search_request(req),
                _ => Err(not_allowed("POST")),
            },
            ("Users", None) => match method {
                "GET" => self.list(req),
                "POST" => self.create(req),
                _ => Err(not_allowed("GET, POST")),
            },
            ("Users", Some(id)) => match method {
                "GET" => self.get(req, id),
                "PUT" => self.replace(req, id),
                "PATCH" => self.patch(req, id),
                "DELETE" => self.delete(req, id),
                _ => Err(not_allowed("GET, PUT, PATCH, DELETE")),
            },
            ("ServiceProviderConfig", None) if method == "GET" => {
                Ok(Reply::json(200, discovery::service_provider_config(req.base)))
            }
            ("ResourceTypes", None) if method == "GET" => Ok(list_of(discovery::resource_types(req.base))),
            ("ResourceTypes", Some(name)) if method == "GET" => discovery::resource_types(req.base)
                .into_iter()
                .find(|r| r["id"].as_str().is_some_and(|i| i == name) || r["name"].as_str().is_some_and(|n| n == name))
                .map(|r| Reply::json(200, r))
                .ok_or_else(|| ScimError::not_found(format!("no resource type '{}'", shown_max(name, 80)))),
            ("Schemas", None) if method == "GET" => Ok(list_of(discovery::schemas(req.base))),
            ("Schemas", Some(urn)) if method == "GET" => discovery::schemas(req.base)
                .into_iter()
                .find(|s| s["id"].as_str() == Some(urn))
                .map(|s| Reply::json(200, s))
                .ok_or_else(|| ScimError::not_found(format!("no schema '{}'", shown_max(urn, 120)))),
            ("ServiceProviderConfig" | "ResourceTypes" | "Schemas", _) => Err(not_allowed("GET")),
            ("Groups", _) => Err(ScimError::not_found(
                "Groups are not provisioned by this service: mail accounts are Users; group membership does not change mail delivery",
            )),
            _ => Err(ScimError::not_found(format!("no SCIM endpoint {}", shown_max(path, 120)))),
        }
    }

    fn entry<'s>(store: &'s Store, id: &str) -> Result<&'s Entry, ScimError> {
        store
            .state()
            .entries
            .get(id)
            .filter(|e| !e.deleted)
            .ok_or_else(|| ScimError::not_found(format!("no user with id '{}'", shown_max(id, 80))))
    }

    fn check_version(user: &User, if_match: Option<&str>) -> Result<(), ScimError> {
        match if_match {
            Some(m) if m.trim() != "*" && m.split(',').map(str::trim).all(|t| t != etag(user)) => {
                Err(ScimError::precondition_failed(format!("the user is at version {}", etag(user))))
            }
            _ => Ok(()),
        }
    }

    fn get(&self, req: &Request, id: &str) -> Result<Reply, ScimError> {
        let params = query_params(req.query);
        let store = lock(&self.store);
        let entry = Self::entry(&store, id)?;
        let rep = resource::select(
            entry.user.to_json(req.base),
            param(&params, "attributes"),
            param(&params, "excludedAttributes"),
        );
        Ok(Reply::user(200, &entry.user, rep, req.base))
    }

    /// GET /Users with query parameters.
    fn list(&self, req: &Request) -> Result<Reply, ScimError> {
        let params = query_params(req.query);
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            match param(&params, name) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| ScimError::invalid_value(format!("{name} must be a whole number"))),
            }
        };
        let q = Query {
            filter: param(&params, "filter").map(str::to_string),
            start: number("startIndex")?,
            count: number("count")?,
            attributes: param(&params, "attributes").map(str::to_string),
            excluded: param(&params, "excludedAttributes").map(str::to_string),
        };
        self.search(req.base, &q)
    }

    /// POST /.search and /Users/.search (RFC 7644 3.4.3): the query in a SearchRequest body.
    fn search_request(&self, req: &Request) -> Result<Reply, ScimError> {
        let body = parse_body(req.body)?;
        let schemas = body.get("schemas").and_then(Value::as_array);
        if !schemas.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(SEARCH_SCHEMA))) {
            return Err(ScimError::invalid_syntax(format!("a search request must have the schema {SEARCH_SCHEMA}")));
        }
        let text = |name: &str| -> Result<Option<String>, ScimError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    Ok(Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")))
                }
                Some(_) => Err(ScimError::invalid_value(format!("{name} must be a string or a list of strings"))),
            }
        };
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| ScimError::invalid_value(format!("{name} must be a whole number"))),
            }
        };
        let q = Query {
            filter: text("filter")?,
            start: number("startIndex")?,
            count: number("count")?,
            attributes: text("attributes")?,
            excluded: text("excludedAttributes")?,
        };
        self.search(req.base, &q)
    }

    /// A page of the users the filter matches; `sortBy` is ignored (announced as unsupported, which
    /// RFC 7644 3.4.2.3 allows).
    fn search(&self, base: &str, q: &Query) -> Result<Reply, ScimError> {
        let filter = q.filter.as_deref().map(Filter::parse).transpose()?;
        let start = q.start.unwrap_or(1).max(1) as usize;
        let count = q.count.unwrap_or(DEFAULT_COUNT as i64).clamp(0, MAX_RESULTS as i64) as usize;
        let store = lock(&self.store);
        let mut total = 0usize;
        let mut page = Vec::new();
        for e in store.state().entries.values().filter(|e| !e.deleted) {
            let rep = e.user.to_json(base);
            if filter.as_ref().is_some_and(|f| !f.matches(&rep)) {
                continue;
            }
            total += 1;
            if total >= start && page.len() < count {
                page.push(resource::select(rep, q.attributes.as_deref(), q.excluded.as_deref()));
            }
        }
        Ok(Reply::json(
            200,
            json!({
                "schemas": [LIST_SCHEMA],
                "totalResults": total,
                "startIndex": start,
                "itemsPerPage": page.len(),
                "Resources": page,
            }),
        ))
    }

    fn create(&self, req: &Request) -> Result<Reply, ScimError> {
        let doc = resource::checked(&parse_body(req.body)?)?;
        let now = self.clock.unix();
        let mut user = User { id: new_id(), doc, created: now, modified: now, version: 1 };
        let account = self.rules.account(&user)?;
        let desired = user.active().then(|| account.clone());
        let mut store = lock(&self.store);
        // A create that failed part way (answered 500) and could not be undone stays as a pending
        // entry: the identity provider's retry of the same POST finishes it instead of a conflict.
        let pending = store
            .state()
            .entries
            .iter()
            .find(|(_, e)| {
                !e.deleted
                    && e.applied.is_none()
                    && e.user.active()
                    && e.user.user_name().eq_ignore_ascii_case(user.user_name())
            })
            .map(|(id, e)| (id.clone(), e.user.clone()));
        // What the files may already hold of it: its own lines are repaired, not a conflict.
        let mut partial = None;
        if let Some((id, old)) = &pending {
            user.id = id.clone();
            user.created = old.created;
            user.version = old.version + 1;
            partial = self.rules.desired(old).ok().flatten();
        } else if store.state().entries.len() >= MAX_USERS {
            return Err(ScimError::too_many(format!("this service holds {MAX_USERS} users at most")));
        }
        self.check_unique(&store, pending.as_ref().map(|(id, _)| id.as_str()), &user, &account)?;
        let id = user.id.clone();
        let entry = Entry { user: user.clone(), deleted: false, applied: None };
        store.commit(|s| {
            s.entries.insert(id.clone(), entry);
        })?;
        if let Err(e) = self.backend.apply(partial.as_ref(), desired.as_ref()) {
            // Nothing of this user stays if that can be made so: a Taken address was not written at
            // all; after another failure, what may have been written is removed (it can only be ours).
            let undone = match &e {
                BackendError::Taken(_) => partial.is_none(),
                _ => self.backend.apply(desired.as_ref(), None).is_ok(),
            };
            if undone {
                store.commit(|s| {
                    s.entries.remove(&id);
                })?;
            }
            return Err(e.into());
        }
        record_applied(&mut store, &id, desired.clone())?;
        let rep = user.to_json(req.base);
        let what = match &desired {
            Some(a) => format!("created account {}{}", a.address, describe_extras(a)),
            None => format!("recorded inactive user for {} (no account while inactive)", account.address),
        };
        Ok(Reply::user(201, &user, rep, req.base).noted(format!("user {id}: {what}")))
    }

    fn replace(&self, req: &Request, id: &str) -> Result<Reply, ScimError> {
        let doc = resource::checked(&parse_body(req.body)?)?;
        self.update(req, id, |_| Ok(doc))
    }

    fn patch(&self, req: &Request, id: &str) -> Result<Reply, ScimError> {
        let body = parse_body(req.body)?;
        let base = req.base.to_string();
        self.update(req, id, move |old| resource::checked(&patch::apply(&old.to_json(&base), &body)?))
    }

    /// PUT and PATCH: the new document, checked, then the same write order as a create.
    fn update(
        &self,
        req: &Request,
        id: &str,
        new_doc: impl FnOnce(&User) -> Result<serde_json::Map<String, Value>, ScimError>,
    ) -> Result<Reply, ScimError> {
        let mut store = lock(&self.store);
        let entry = Self::entry(&store, id)?.clone();
        Self::check_version(&entry.user, req.if_match)?;
        let doc = new_doc(&entry.user)?;
        if doc == entry.user.doc {
            // Identity providers resend unchanged users on every sync: the moment to put back an
            // entry another writer of the files lost (or finish a change a failure interrupted).
            let desired = self.rules.desired(&entry.user)?;
            let repaired = match (&entry.applied, &desired) {
                (Some(a), Some(d)) if a == d && self.backend.holds(a)? => None,
                (None, None) => None,
                _ => {
                    self.bring_up_to_date(entry.applied.as_ref(), desired.as_ref())?;
                    record_applied(&mut store, id, desired)?;
                    Some(format!("user {id}: unchanged; its files were brought up to date"))
                }
            };
            let rep = resource::select(entry.user.to_json(req.base), None, None);
            let reply = Reply::user(200, &entry.user, rep, req.base);
            return Ok(match repaired {
                Some(note) => reply.noted(note),
                None => reply,
            });
        }
        let user = User { doc, modified: self.clock.unix(), version: entry.user.version + 1, ..entry.user.clone() };
        let account = self.rules.account(&user)?;
        self.check_unique(&store, Some(id), &user, &account)?;
        let desired = user.active().then(|| account.clone());
        let new_user = user.clone();
        store.commit(|s| {
            if let Some(e) = s.entries.get_mut(id) {
                e.user = new_user;
            }
        })?;
        if let Err(e) = self.backend.apply(entry.applied.as_ref(), desired.as_ref()) {
            if let BackendError::Taken(_) = e {
                // Nothing was written: the user stays as it was.
                let old = entry.user.clone();
                store.commit(|s| {
                    if let Some(e) = s.entries.get_mut(id) {
                        e.user = old;
                    }
                })?;
            }
            // Otherwise the store keeps the new user with `applied` as before: the next write of
            // this user, or the next start, finishes the change.
            return Err(e.into());
        }
        record_applied(&mut store, id, desired.clone())?;
        let note = describe_change(entry.applied.as_ref(), desired.as_ref());
        let rep = user.to_json(req.base);
        Ok(Reply::user(200, &user, rep, req.base).noted(format!("user {id}: {note}")))
    }

    fn delete(&self, req: &Request, id: &str) -> Result<Reply, ScimError> {
        let mut store = lock(&self.store);
        let entry = Self::entry(&store, id)?.clone();
        Self::check_version(&entry.user, req.if_match)?;
        store.commit(|s| {
            if let Some(e) = s.entries.get_mut(id) {
                e.deleted = true;
            }
        })?;
        // A failure here leaves the entry marked: it is gone for SCIM clients (404), and the next
        // start removes the account.
        self.backend.apply(entry.applied.as_ref(), None)?;
        store.commit(|s| {
            s.entries.remove(id);
        })?;
        let what = match &entry.applied {
            Some(a) => format!("removed account {}", a.address),
            None => "removed (it had no account)".to_string(),
        };
        Ok(Reply {
            status: 204,
            body: String::new(),
            location: None,
            etag: None,
            note: Some(format!("user {id}: {what}")),
        })
    }

    /// What `--scim-status` and the health of provisioning show: one line per user.
    pub fn status(&self) -> Vec<StatusLine> {
        let store = lock(&self.store);
        status_lines(store.state(), &self.rules, self.backend.as_ref())
    }
}

/// One provisioned user, as `--scim-status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub id: String,
    pub user_name: String,
    pub active: bool,
    pub account: Option<Account>,
    /// `in files`, `pending` (the files lag the store: a change a crash or failure interrupted),
    /// `missing` (the files lost an entry), `deleting`.
    pub state: &'static str,
}

/// The status of every user in `state` (also used by `--scim-status` on a stopped or running daemon,
/// which reads the state file without taking its lock).
pub fn status_lines(state: &super::store::State, rules: &Rules, backend: &dyn Backend) -> Vec<StatusLine> {
    state
        .entries
        .iter()
        .map(|(id, e)| {
            let want = if e.deleted { None } else { rules.desired(&e.user).ok().flatten() };
            let state = if e.deleted {
                "deleting"
            } else if e.applied != want {
                "pending"
            } else {
                match &e.applied {
                    Some(a) if backend.holds(a).unwrap_or(false) => "in files",
                    Some(_) => "missing",
                    None => "inactive",
                }
            };
            StatusLine {
                id: id.clone(),
                user_name: e.user.user_name().to_string(),
                active: e.user.active(),
                account: e.applied.clone().or(want),
                state,
            }
        })
        .collect()
}

/// The `--scim-status` text: a header naming the files, then one line per user (values escaped);
/// and whether every user is as the store says.
pub fn status_table(lines: &[StatusLine], state_file: &std::path::Path, backend: &dyn Backend) -> (String, bool) {
    let mut out =
        format!("SCIM state {} ({} users); mail system: {}\n", state_file.display(), lines.len(), backend.describe());
    out.push_str(
        "STATE     ACTIVE  ACCOUNT                                  ALIASES / QUOTA            USERNAME  ID\n",
    );
    for l in lines {
        let (account, extras) = match &l.account {
            Some(a) => (shown_max(&a.address, 254), describe_extras(a).trim_start_matches(", ").to_string()),
            None => ("-".to_string(), String::new()),
        };
        out.push_str(&format!(
            "{:<9} {:<7} {:<40} {:<26} {}  {}\n",
            l.state,
            if l.active { "yes" } else { "no" },
            account,
            if extras.is_empty() { "-".to_string() } else { extras },
            shown_max(&l.user_name, 254),
            l.id
        ));
    }
    let ok = lines.iter().all(|l| matches!(l.state, "in files" | "inactive"));
    (out, ok)
}

fn list_of(resources: Vec<Value>) -> Reply {
    Reply::json(
        200,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": resources.len(),
            "startIndex": 1,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

fn describe_extras(a: &Account) -> String {
    let mut s = String::new();
    if !a.aliases.is_empty() {
        s.push_str(&format!(", aliases {}", a.aliases.join(" ")));
    }
    if let Some(q) = &a.quota {
        s.push_str(&format!(", quota {q}"));
    }
    s
}

fn describe_change(prev: Option<&Account>, next: Option<&Account>) -> String {
    match (prev, next) {
        (None, None) => "updated (inactive, no account)".into(),
        (None, Some(n)) => format!("account {} enabled{}", n.address, describe_extras(n)),
        (Some(p), None) => format!("account {} disabled (mailbox kept)", p.address),
        (Some(p), Some(n)) if p.address != n.address => {
            format!("account {} renamed to {} (mailbox moved){}", p.address, n.address, describe_extras(n))
        }
        (Some(_), Some(n)) => format!("account {} updated{}", n.address, describe_extras(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::store::Store;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// The mail system as a map, to test the service's rules alone (the real backends have their
    /// own tests, and the end-to-end tests run DMS's scripts on what they write).
    #[derive(Default)]
    struct Files {
        /// address -> the account holding it (its own address or an alias)
        held: BTreeMap<String, Account>,
        /// addresses the admin made
        admin: Vec<String>,
        fail: bool,
        writes: usize,
    }

    #[derive(Clone, Default)]
    struct FakeBackend(Arc<Mutex<Files>>);

    impl Backend for FakeBackend {
        fn apply(&self, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
            let mut f = lock(&self.0);
            if f.fail {
                return Err(BackendError::Io("disk full".into()));
            }
            if let Some(n) = next {
                let ours: Vec<&str> = prev.map(|p| p.addresses().collect()).unwrap_or_default();
                for a in n.addresses().filter(|a| !ours.contains(a)) {
                    if f.admin.iter().any(|x| x == a) || f.held.get(a).is_some_and(|h| h != n) {
                        return Err(BackendError::Taken(a.to_string()));
                    }
                }
            }
            if let Some(p) = prev {
                for a in p.addresses() {
                    f.held.remove(a);
                }
            }
            if let Some(n) = next {
                for a in n.addresses() {
                    f.held.insert(a.to_string(), n.clone());
                }
            }
            f.writes += 1;
            Ok(())
        }
        fn holds(&self, account: &Account) -> Result<bool, BackendError> {
            let f = lock(&self.0);
            Ok(account.addresses().all(|a| f.held.get(a) == Some(account)))
        }
        fn describe(&self) -> String {
            "test files".into()
        }
    }

    /// Removes the scratch folder when the last fixture using it is gone.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Dir {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    struct Fixture {
        dir: Dir,
        files: FakeBackend,
        clock: Clock,
        service: Service,
    }

    const BASE: &str = "https://mail.example.com/scim/v2";

    fn rules() -> Rules {
        Rules {
            domains: vec!["example.com".into(), "example.org".into()],
            aliases: true,
            quota_attribute: Some(format!("{}:mailQuota", resource::MAIL_SCHEMA)),
            max_requests_per_minute: 1000,
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("o2-scim-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = FakeBackend::default();
        let clock = Clock::manual();
        let store = Store::open(&dir.join("scim.json")).unwrap();
        let (service, _) = Service::with_store(rules(), store, Box::new(files.clone()), clock.clone()).unwrap();
        Fixture { dir: Dir(dir), files, clock, service }
    }

    impl Fixture {
        fn call(&self, method: &str, path: &str, body: Value) -> Reply {
            let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            self.service.handle(&Request { method, path, query, body: &body, if_match: None, base: BASE })
        }
        fn create(&self, body: Value) -> (Reply, String) {
            let r = self.call("POST", "/Users", body);
            let id = serde_json::from_str::<Value>(&r.body).ok().and_then(|v| v["id"].as_str().map(str::to_string));
            (r, id.unwrap_or_default())
        }
        fn held(&self, address: &str) -> Option<Account> {
            lock(&self.files.0).held.get(address).cloned()
        }
        /// The service as the next start sees it: the same state file and files.
        fn restart(self) -> Fixture {
            let Fixture { dir, files, clock, service } = self;
            drop(service);
            let store = Store::open(&dir.join("scim.json")).unwrap();
            let (service, _) = Service::with_store(rules(), store, Box::new(files.clone()), clock.clone()).unwrap();
            Fixture { dir, files, clock, service }
        }
    }

    fn user(name: &str, emails: &[(&str, bool)]) -> Value {
        let emails: Vec<Value> =
            emails.iter().map(|(v, p)| json!({"value": v, "type": "work", "primary": p})).collect();
        json!({"schemas": [resource::USER_SCHEMA], "userName": name, "emails": emails, "active": true})
    }

    fn scim_type(r: &Reply) -> Option<String> {
        serde_json::from_str::<Value>(&r.body).ok()?["scimType"].as_str().map(str::to_string)
    }

    #[test]
    fn a_created_user_gets_an_account_named_by_its_primary_email_and_aliases_for_the_others() {
        let f = fixture("create");
        let (r, id) = f.create(user("alice", &[("Alice.Smith@Example.com", true), ("alice@example.org", false)]));
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.location.as_deref(), Some(format!("{BASE}/Users/{id}").as_str()));
        assert_eq!(r.etag.as_deref(), Some("W/\"1\""));
        let a = f.held("alice.smith@example.com").expect("account written");
        assert_eq!(a.aliases, vec!["alice@example.org"]);
    }

    #[test]
    fn a_user_name_that_is_an_address_names_the_account_when_no_email_is_primary() {
        let f = fixture("username");
        let (r, _) = f.create(user("bob@example.com", &[]));
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(f.held("bob@example.com").is_some());
    }

    #[test]
    fn emails_of_domains_not_served_are_kept_but_not_delivered() {
        let f = fixture("foreign");
        let (r, _) = f.create(user("carol@example.com", &[("carol@gmail.com", false)]));
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body.contains("carol@gmail.com"));
        assert_eq!(f.held("carol@example.com").unwrap().aliases, Vec::<String>::new());
        assert!(f.held("carol@gmail.com").is_none());
    }

    #[test]
    fn a_user_name_that_is_not_an_address_of_a_served_domain_is_refused_and_nothing_is_written() {
        let f = fixture("unserved");
        for name in ["mallory@evil.com", "plainname"] {
            let (r, _) = f.create(user(name, &[]));
            assert_eq!(r.status, 400, "{name}: {}", r.body);
            assert_eq!(scim_type(&r).as_deref(), Some("invalidValue"));
        }
        assert_eq!(lock(&f.files.0).writes, 0);
        let list = f.call("GET", "/Users", Value::Null);
        assert!(list.body.contains("\"totalResults\":0"), "{}", list.body);
    }

    #[test]
    fn a_second_user_with_the_same_user_name_in_other_case_is_a_conflict() {
        let f = fixture("dup");
        assert_eq!(f.create(user("dave@example.com", &[])).0.status, 201);
        let (r, _) = f.create(user("DAVE@example.com", &[]));
        assert_eq!(r.status, 409);
        assert_eq!(scim_type(&r).as_deref(), Some("uniqueness"));
    }

    #[test]
    fn an_address_another_user_holds_as_an_alias_is_a_conflict() {
        let f = fixture("alias-conflict");
        assert_eq!(f.create(user("erin@example.com", &[("sales@example.com", false)])).0.status, 201);
        let (r, _) = f.create(user("frank", &[("sales@example.com", true)]));
        assert_eq!(r.status, 409, "{}", r.body);
    }

    #[test]
    fn an_inactive_users_address_stays_reserved_for_it() {
        let f = fixture("reserved");
        let mut u = user("gina@example.com", &[]);
        u["active"] = json!(false);
        assert_eq!(f.create(u).0.status, 201);
        assert!(f.held("gina@example.com").is_none());
        assert_eq!(f.create(user("gina2", &[("gina@example.com", true)])).0.status, 409);
    }

    #[test]
    fn an_address_the_admin_made_is_a_conflict_and_the_user_is_not_kept() {
        let f = fixture("admin");
        lock(&f.files.0).admin.push("henry@example.com".into());
        let (r, _) = f.create(user("henry@example.com", &[]));
        assert_eq!(r.status, 409, "{}", r.body);
        let list = f.call("GET", "/Users?filter=userName%20eq%20%22henry@example.com%22", Value::Null);
        assert!(list.body.contains("\"totalResults\":0"), "{}", list.body);
    }

    #[test]
    fn a_failed_write_on_create_answers_500_and_keeps_no_user() {
        let f = fixture("fail");
        lock(&f.files.0).fail = true;
        let (r, _) = f.create(user("ivy@example.com", &[]));
        assert_eq!(r.status, 500);
        lock(&f.files.0).fail = false;
        assert_eq!(f.create(user("ivy@example.com", &[])).0.status, 201, "a retry must not be a conflict");
    }

    #[test]
    fn deactivating_removes_the_account_and_reactivating_brings_it_back() {
        let f = fixture("active");
        let (_, id) = f.create(user("jack@example.com", &[]));
        let off =
            json!({"schemas": [patch_schema()], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
        let r = f.call("PATCH", &format!("/Users/{id}"), off);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(f.held("jack@example.com").is_none());
        let on = json!({"schemas": [patch_schema()], "Operations": [{"op": "replace", "value": {"active": true}}]});
        assert_eq!(f.call("PATCH", &format!("/Users/{id}"), on).status, 200);
        assert!(f.held("jack@example.com").is_some());
    }

    fn patch_schema() -> &'static str {
        "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    }

    #[test]
    fn a_new_primary_email_renames_the_account() {
        let f = fixture("rename");
        let (_, id) = f.create(user("kim", &[("kim@example.com", true)]));
        let r = f.call("PUT", &format!("/Users/{id}"), user("kim", &[("kim.lee@example.com", true)]));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.etag.as_deref(), Some("W/\"2\""));
        assert!(f.held("kim@example.com").is_none());
        assert!(f.held("kim.lee@example.com").is_some());
        assert!(r.note.unwrap().contains("renamed"));
    }

    #[test]
    fn an_unchanged_user_sent_again_puts_back_an_account_the_files_lost() {
        let f = fixture("repair");
        let body = user("sam@example.com", &[("sam@example.org", false)]);
        let (_, id) = f.create(body.clone());
        lock(&f.files.0).held.clear(); // another writer of the files dropped it
        let r = f.call("PUT", &format!("/Users/{id}"), body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.etag.as_deref(), Some("W/\"1\""), "the user itself did not change");
        assert!(f.held("sam@example.com").is_some());
        assert!(f.held("sam@example.org").is_some());
        assert!(r.note.unwrap().contains("brought up to date"));
    }

    #[test]
    fn an_unchanged_user_whose_files_are_in_place_writes_nothing() {
        let f = fixture("norepair");
        let body = user("tom@example.com", &[]);
        let (_, id) = f.create(body.clone());
        let writes = lock(&f.files.0).writes;
        assert_eq!(f.call("PUT", &format!("/Users/{id}"), body).status, 200);
        assert_eq!(lock(&f.files.0).writes, writes);
    }

    #[test]
    fn delete_removes_the_account_and_the_user_is_gone() {
        let f = fixture("delete");
        let (_, id) = f.create(user("lee@example.com", &[]));
        let r = f.call("DELETE", &format!("/Users/{id}"), Value::Null);
        assert_eq!(r.status, 204);
        assert!(f.held("lee@example.com").is_none());
        assert_eq!(f.call("GET", &format!("/Users/{id}"), Value::Null).status, 404);
        assert_eq!(f.call("DELETE", &format!("/Users/{id}"), Value::Null).status, 404);
    }

    #[test]
    fn an_unknown_id_is_404_with_a_scim_error() {
        let f = fixture("404");
        let r = f.call("GET", "/Users/0123", Value::Null);
        assert_eq!(r.status, 404);
        assert!(r.body.contains(crate::scim::error::ERROR_SCHEMA));
    }

    #[test]
    fn a_list_is_filtered_and_paginated() {
        let f = fixture("list");
        for n in ["m1", "m2", "m3"] {
            assert_eq!(f.create(user(&format!("{n}@example.com"), &[])).0.status, 201);
        }
        let v: Value = serde_json::from_str(&f.call("GET", "/Users?startIndex=2&count=1", Value::Null).body).unwrap();
        assert_eq!(
            (v["totalResults"].as_u64(), v["startIndex"].as_u64(), v["itemsPerPage"].as_u64()),
            (Some(3), Some(2), Some(1))
        );
        let q = "/Users?filter=userName%20eq%20%22M2@example.com%22";
        let v: Value = serde_json::from_str(&f.call("GET", q, Value::Null).body).unwrap();
        assert_eq!(v["totalResults"], 1);
        assert_eq!(v["Resources"][0]["userName"], "m2@example.com");
    }

    #[test]
    fn a_bad_filter_is_400_invalid_filter() {
        let f = fixture("badfilter");
        let r = f.call("GET", "/Users?filter=userName%20eq", Value::Null);
        assert_eq!((r.status, scim_type(&r).as_deref()), (400, Some("invalidFilter")));
    }

    #[test]
    fn a_body_that_is_not_json_is_400_invalid_syntax() {
        let f = fixture("syntax");
        let r = f.service.handle(&Request {
            method: "POST",
            path: "/Users",
            query: "",
            body: b"{not json",
            if_match: None,
            base: BASE,
        });
        assert_eq!((r.status, scim_type(&r).as_deref()), (400, Some("invalidSyntax")));
    }

    #[test]
    fn a_stale_if_match_is_412_and_changes_nothing() {
        let f = fixture("etag");
        let (_, id) = f.create(user("nina@example.com", &[]));
        let body = user("nina@example.com", &[("nina@example.org", false)]).to_string().into_bytes();
        let path = format!("/Users/{id}");
        let r = f.service.handle(&Request {
            method: "PUT",
            path: &path,
            query: "",
            body: &body,
            if_match: Some("W/\"7\""),
            base: BASE,
        });
        assert_eq!(r.status, 412);
        assert!(f.held("nina@example.org").is_none());
    }

    #[test]
    fn the_quota_attribute_becomes_the_accounts_quota_and_a_bad_one_is_refused() {
        let f = fixture("quota");
        let mut u = user("olga@example.com", &[]);
        u["schemas"] = json!([resource::USER_SCHEMA, resource::MAIL_SCHEMA]);
        u[resource::MAIL_SCHEMA] = json!({"mailQuota": "2g"});
        assert_eq!(f.create(u.clone()).0.status, 201);
        assert_eq!(f.held("olga@example.com").unwrap().quota.as_deref(), Some("2G"));
        u["userName"] = json!("olga2@example.com");
        u[resource::MAIL_SCHEMA] = json!({"mailQuota": "2 GB; rm -rf"});
        assert_eq!(f.create(u).0.status, 400);
    }

    #[test]
    fn a_change_interrupted_after_the_store_was_written_is_finished_at_the_next_start() {
        let f = fixture("crash");
        let (_, id) = f.create(user("paul@example.com", &[]));
        // The store says renamed; the files still hold the old account (the crash came first).
        lock(&f.service.store)
            .commit(|s| {
                let e = s.entries.get_mut(&id).unwrap();
                e.user.doc.insert("userName".into(), json!("paul.new@example.com"));
            })
            .unwrap();
        let f = f.restart();
        assert!(f.held("paul@example.com").is_none());
        assert!(f.held("paul.new@example.com").is_some());
        let status = f.service.status();
        assert_eq!(status[0].state, "in files");
    }

    #[test]
    fn a_delete_interrupted_before_the_files_changed_is_finished_at_the_next_start() {
        let f = fixture("crash-delete");
        let (_, id) = f.create(user("quinn@example.com", &[]));
        lock(&f.service.store).commit(|s| s.entries.get_mut(&id).unwrap().deleted = true).unwrap();
        let f = f.restart();
        assert!(f.held("quinn@example.com").is_none());
        assert!(f.service.status().is_empty());
    }

    #[test]
    fn more_requests_than_the_limit_in_a_minute_are_429_until_the_minute_is_over() {
        let f = fixture("rate");
        let mut r = rules();
        r.max_requests_per_minute = 2;
        let store = Store::open(&f.dir.join("rate.json")).unwrap();
        let (s, _) = Service::with_store(r, store, Box::new(f.files.clone()), f.clock.clone()).unwrap();
        let get = |s: &Service| {
            s.handle(&Request { method: "GET", path: "/Users", query: "", body: b"", if_match: None, base: BASE })
                .status
        };
        assert_eq!((get(&s), get(&s), get(&s)), (200, 200, 429));
        f.clock.advance(std::time::Duration::from_secs(60));
        assert_eq!(get(&s), 200);
    }

    #[test]
    fn groups_are_not_served() {
        let f = fixture("groups");
        assert_eq!(f.call("GET", "/Groups", Value::Null).status, 404);
    }

    #[test]
    fn discovery_endpoints_answer_and_a_write_to_them_is_405() {
        let f = fixture("discovery");
        for p in ["/ServiceProviderConfig", "/ResourceTypes", "/ResourceTypes/User", "/Schemas"] {
            assert_eq!(f.call("GET", p, Value::Null).status, 200, "{p}");
        }
        let schema = format!("/Schemas/{}", resource::USER_SCHEMA);
        assert_eq!(f.call("GET", &schema, Value::Null).status, 200);
        assert_eq!(f.call("POST", "/Schemas", json!({})).status, 405);
    }

    #[test]
    fn the_status_table_shows_each_user_and_whether_the_files_hold_it() {
        let f = fixture("status");
        f.create(user("rita@example.com", &[("rita@example.org", false)]));
        lock(&f.files.0).held.clear();
        let lines = f.service.status();
        let (table, ok) = status_table(&lines, std::path::Path::new("/x/scim.json"), f.service.backend());
        assert!(!ok);
        assert!(table.contains("missing"), "{table}");
        assert!(table.contains("rita@example.com"));
        assert!(table.contains("aliases rita@example.org"));
    }
}
