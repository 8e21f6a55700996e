//! The Lua binding: `require "dovecot_oauth2"` returns `{ new = function(settings_path), version }`;
//! `validator:verify(req, token)` returns what `auth_password_verify` must return.
//!
//! Loading does nothing but build this table: Dovecot loads the script in the main auth process (as
//! dovecot) and in every worker (as root), so settings are read, and the runtime, client and cache
//! built, on a worker's first login. This file is the one place where verdicts become Dovecot's
//! PASSDB_RESULT_* codes. What it logs is built escaped by the engine (outcome lines and warnings,
//! error messages); only the settings warnings are escaped here.
//!
//! Log levels: Dovecot drops a request's info lines unless `auth_verbose = yes` (Debian's default is
//! no), so a refusal newly decided is a warning, which every verbosity shows; a refusal answered from
//! the negative cache (the same token, already reported) and those over the warning budget are info.

use crate::cache::Source;
use crate::engine::Engine;
use crate::errors::{Unavailable, Verdict};
use crate::escape::shown_reason;
use crate::lookup::Outcome;
use crate::password::PasswordOutcome;
use mlua::prelude::*;
use mlua::ObjectLike;
use once_cell::sync::OnceCell;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Validator {
    path: PathBuf,
    /// Built on first use; a failed build is not kept, so a fixed settings file takes effect.
    engine: OnceCell<Engine>,
    /// Dovecot's result codes, read once (they do not change within a Lua state).
    codes: OnceCell<Codes>,
    warnings: RefCell<WarningBudget>,
}

/// Refusal warnings per auth-worker: a burst of `WARNING_BURST`, then one every `WARNING_REFILL` (20 a
/// minute), so a password-guessing run with made-up tokens cannot flood a log that Dovecot keeps quiet
/// at its default verbosity. Refusals over the budget are still logged at info level.
struct WarningBudget {
    available: u32,
    refilled_at: Instant,
    /// Refusals logged at info level only since the last warning.
    held_back: u64,
}

const WARNING_BURST: u32 = 20;
const WARNING_REFILL: Duration = Duration::from_secs(3);

impl WarningBudget {
    fn new(now: Instant) -> WarningBudget {
        WarningBudget { available: WARNING_BURST, refilled_at: now, held_back: 0 }
    }

    /// Some(refusals held back before this one) when this refusal may be a warning.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let gained = now.saturating_duration_since(self.refilled_at).as_secs() / WARNING_REFILL.as_secs();
        if gained > 0 {
            self.available = WARNING_BURST.min(self.available.saturating_add(gained.min(u32::MAX as u64) as u32));
            self.refilled_at =
                if self.available == WARNING_BURST { now } else { self.refilled_at + WARNING_REFILL * gained as u32 };
        }
        if self.available == 0 {
            self.held_back += 1;
            return None;
        }
        self.available -= 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Dovecot's result codes, read from the `dovecot.auth` table it gives the script.
#[derive(Clone, Copy)]
struct Codes {
    ok: i64,
    mismatch: i64,
    internal: i64,
}

impl Codes {
    fn read(lua: &Lua) -> LuaResult<Codes> {
        let auth: LuaTable = lua.globals().get::<LuaTable>("dovecot")?.get("auth")?;
        Ok(Codes {
            ok: auth.get("PASSDB_RESULT_OK")?,
            mismatch: auth.get("PASSDB_RESULT_PASSWORD_MISMATCH")?,
            internal: auth.get("PASSDB_RESULT_INTERNAL_FAILURE")?,
        })
    }
}

fn req_log(req: &LuaValue, level: &str, msg: &str) -> LuaResult<()> {
    match req {
        LuaValue::Table(t) => t.call_method(level, msg),
        LuaValue::UserData(u) => u.call_method(level, msg),
        _ => Ok(()),
    }
}

fn req_get_string(req: &LuaValue, field: &str) -> LuaResult<String> {
    let v: Option<String> = match req {
        // Dovecot 2.3 hands a plain table with the fields set (no metamethods to honour).
        LuaValue::Table(t) => match t.raw_get(field)? {
            Some(v) => Some(v),
            None => t.get(field)?,
        },
        LuaValue::UserData(u) => u.get(field)?,
        _ => None,
    };
    Ok(v.unwrap_or_default())
}

fn req_var_expand(req: &LuaValue, template: &str) -> LuaResult<String> {
    match req {
        LuaValue::Table(t) => t.call_method("var_expand", template),
        LuaValue::UserData(u) => u.call_method("var_expand", template),
        _ => Ok(template.to_string()),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Validator {
    fn engine(&self, req: &LuaValue) -> Result<&Engine, Unavailable> {
        if let Some(e) = self.engine.get() {
            return Ok(e);
        }
        let built = catch_unwind(AssertUnwindSafe(|| Engine::load(&self.path)))
            .map_err(|p| Unavailable::Internal(format!("panic while loading settings: {}", panic_text(p))))??;
        // Settings warnings name paths and keys from the file: escaped like every outside string.
        for w in &built.settings().warnings {
            let _ = req_log(req, "log_warning", &format!("dovecot-oauth2: {}", shown_reason(w)));
        }
        Ok(self.engine.get_or_init(|| built))
    }

    fn verify(&self, lua: &Lua, req: LuaValue, token: LuaString) -> LuaResult<(i64, LuaValue)> {
        let codes = *self.codes.get_or_try_init(|| Codes::read(lua))?;
        let user = req_get_string(&req, "user")?;
        let token = token.as_bytes();
        let outcome = self.run(&req, |engine| engine.verify(&user, &token));
        self.answer(lua, &req, codes, &user, outcome, Shape::Token)
    }

    /// A PLAIN/LOGIN password (issue 12), answered in the shape Dovecot 2.3 and 2.4 both accept.
    fn verify_password(&self, lua: &Lua, req: LuaValue, password: LuaString) -> LuaResult<(i64, LuaValue)> {
        let codes = *self.codes.get_or_try_init(|| Codes::read(lua))?;
        let user = req_get_string(&req, "user")?;
        // Borrowed from Lua's string: the module keeps no copy beyond the provider request.
        let password = password.as_bytes();
        let outcome = self.run(&req, |engine| engine.verify_password(&user, &password));
        self.answer(lua, &req, codes, &user, outcome, Shape::Password)
    }

    /// One login on the engine (built on first use); a panic is a temporary failure, never Dovecot's.
    fn run<O>(&self, req: &LuaValue, login: impl FnOnce(&Engine) -> O) -> Result<O, Unavailable> {
        let engine = self.engine(req)?;
        catch_unwind(AssertUnwindSafe(|| login(engine)))
            .map_err(|p| Unavailable::Internal(format!("panic: {}", panic_text(p))))
    }

    /// The one place where an outcome becomes what `auth_password_verify` returns, and its log lines.
    fn answer(
        &self,
        lua: &Lua,
        req: &LuaValue,
        codes: Codes,
        user: &str,
        outcome: Result<impl Answered, Unavailable>,
        shape: Shape,
    ) -> LuaResult<(i64, LuaValue)> {
        let outcome = match outcome {
            Ok(o) => o,
            Err(u) => {
                let msg = format!("dovecot-oauth2: temporary failure: {u}");
                return Ok((codes.internal, LuaValue::String(lua.create_string(&msg)?)));
            }
        };
        for w in outcome.warnings() {
            req_log(req, "log_warning", &format!("dovecot-oauth2: {w}"))?;
        }
        if let Some(line) = self.engine.get().and_then(|e| e.authenticator().stats_due_line()) {
            // About the process, not this login: Dovecot's process-level info line, which auth_verbose
            // does not filter (the request's log_info where the script API lacks it).
            match lua.globals().get::<LuaTable>("dovecot")?.get::<Option<LuaFunction>>("i_info")? {
                Some(i_info) => i_info.call::<()>(line)?,
                None => req_log(req, "log_info", &line)?,
            }
        }
        let debug = self.engine.get().is_some_and(|e| e.settings().debug);
        match outcome.verdict() {
            Verdict::Accept(fields) => {
                if debug {
                    req_log(req, "log_info", &outcome.accept_line(user))?;
                }
                // Nothing to export: a string is what Dovecot reads fastest, and makes no table. Dovecot
                // 2.4 refuses a string on success, and passwords reach this module there too.
                if fields.is_empty() && shape == Shape::Token {
                    return Ok((codes.ok, LuaValue::String(lua.create_string("")?)));
                }
                let t = lua.create_table_with_capacity(0, fields.len())?;
                for (k, v) in fields {
                    let v = if v.contains('%') { req_var_expand(req, v)? } else { v.clone() };
                    t.set(k.as_str(), v)?;
                }
                Ok((codes.ok, LuaValue::Table(t)))
            }
            Verdict::Reject(_) => {
                let line = outcome.log_line().unwrap_or_default();
                let cached = matches!(outcome.source(), Some(Source::Cache));
                match if cached { None } else { self.warnings.borrow_mut().take(Instant::now()) } {
                    Some(held_back) => {
                        if held_back > 0 {
                            let note = format!(
                                "dovecot-oauth2: {held_back} refusals before this one were logged at info level only \
                                 (more than {WARNING_BURST} a minute; auth_verbose = yes shows them)"
                            );
                            req_log(req, "log_warning", &note)?;
                        }
                        req_log(req, "log_warning", &line)?;
                    }
                    None => req_log(req, "log_info", &line)?,
                }
                let refused = if shape == Shape::Token { "invalid token" } else { "invalid credentials" };
                Ok((codes.mismatch, LuaValue::String(lua.create_string(refused)?)))
            }
            Verdict::TempFail(_) => {
                // Dovecot logs an INTERNAL_FAILURE's message itself ("passdb-lua: ..."): logged once.
                let line = outcome.log_line().unwrap_or_default();
                Ok((codes.internal, LuaValue::String(lua.create_string(&line)?)))
            }
        }
    }
}

/// What the answer needs of a token login's or a password login's outcome.
trait Answered {
    fn verdict(&self) -> &Verdict;
    fn source(&self) -> Option<Source>;
    fn warnings(&self) -> &[String];
    fn log_line(&self) -> Option<String>;
    fn accept_line(&self, user: &str) -> String;
}

macro_rules! answered {
    ($t:ty) => {
        impl Answered for $t {
            fn verdict(&self) -> &Verdict {
                &self.verdict
            }
            fn source(&self) -> Option<Source> {
                self.source
            }
            fn warnings(&self) -> &[String] {
                &self.warnings
            }
            fn log_line(&self) -> Option<String> {
                <$t>::log_line(self)
            }
            fn accept_line(&self, user: &str) -> String {
                <$t>::accept_line(self, user)
            }
        }
    };
}
answered!(Outcome);
answered!(PasswordOutcome);

/// What was checked: a bearer token (XOAUTH2/OAUTHBEARER) or a PLAIN/LOGIN password.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Token,
    Password,
}

impl LuaUserData for Validator {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("verify", |lua, this, (req, token): (LuaValue, LuaString)| this.verify(lua, req, token));
        methods.add_method("verify_password", |lua, this, (req, password): (LuaValue, LuaString)| {
            this.verify_password(lua, req, password)
        });
        methods.add_method("settings_path", |_, this, ()| Ok(this.path.display().to_string()));
        // Counters of this process (nil before its first login): accepted, rejected, rejected_<kind>,
        // tempfail, cache_hits, cache_misses, stale_used, provider_requests, provider_failures,
        // provider_msecs_total, provider_msecs_max.
        methods.add_method("stats", |lua, this, ()| {
            let Some(engine) = this.engine.get() else { return Ok(LuaValue::Nil) };
            let s = engine.authenticator().stats();
            let t = lua.create_table()?;
            t.set("accepted", s.accepted)?;
            t.set("rejected", s.rejected)?;
            for (k, v) in &s.rejected_by {
                t.set(format!("rejected_{k}"), *v)?;
            }
            t.set("tempfail", s.tempfail)?;
            t.set("cache_hits", s.cache_hits)?;
            t.set("cache_misses", s.cache_misses)?;
            t.set("stale_used", s.stale_used)?;
            t.set("provider_requests", s.provider_requests)?;
            t.set("provider_failures", s.provider_failures)?;
            t.set("provider_msecs_total", s.provider_msecs_total)?;
            t.set("provider_msecs_max", s.provider_msecs_max)?;
            Ok(LuaValue::Table(t))
        });
    }
}

#[mlua::lua_module(name = "dovecot_oauth2")]
fn dovecot_oauth2(lua: &Lua) -> LuaResult<LuaTable> {
    let module = lua.create_table()?;
    module.set(
        "new",
        lua.create_function(|_, path: String| {
            Ok(Validator {
                path: PathBuf::from(path),
                engine: OnceCell::new(),
                codes: OnceCell::new(),
                warnings: RefCell::new(WarningBudget::new(Instant::now())),
            })
        })?,
    )?;
    module.set("version", env!("CARGO_PKG_VERSION"))?;
    Ok(module)
}
