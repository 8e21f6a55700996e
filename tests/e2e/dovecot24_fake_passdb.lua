-- Throwaway Lua passdb used only to prove the Dovecot 2.4 harness (tests/e2e/dovecot24.py,
-- tests/e2e/test_dovecot24_harness.py); fake_passdb.lua is its Dovecot 2.3 sibling.
-- Dovecot 2.4.1's Lua passdb API as this script relies on it:
--   auth_password_verify(req, password): PLAIN/LOGIN. Success returns a table of extra fields; a
--     failure returns a string (2.4.1 does not accept a table there).
--   auth_passdb_lookup(req): the passdb lookup Dovecot runs AFTER its own oauth2 {} check accepted an
--     XOAUTH2/OAUTHBEARER token (when the passdb's mechanisms_filter includes them).
-- Passwords: "<local part>-luapw" is accepted, "temp-fail" is a temporary failure, anything else is
-- refused. Lookups: dave@example.test is refused (disabled), every other user passes.

function script_init()
  return 0
end

function auth_passdb_lookup(req)
  if req.user == "dave@example.test" then
    req:log_info("fake_passdb24: lookup refused for " .. req.user)
    return dovecot.auth.PASSDB_RESULT_USER_DISABLED, "disabled by the fake passdb"
  end
  req:log_info("fake_passdb24: lookup ok for " .. req.user)
  return dovecot.auth.PASSDB_RESULT_OK, {}
end

function auth_password_verify(req, password)
  local expected = string.match(req.user, "^[^@]*") .. "-luapw"
  if password == expected then
    req:log_info("fake_passdb24: password accepted for " .. req.user)
    return dovecot.auth.PASSDB_RESULT_OK, {}
  elseif password == "temp-fail" then
    req:log_warning("fake_passdb24: simulated temporary failure")
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "simulated temporary failure"
  end
  req:log_info("fake_passdb24: password refused")
  return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "wrong password"
end
