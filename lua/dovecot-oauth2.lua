-- dovecot-oauth2: Dovecot 2.3 Lua passdb that validates OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER).
--
--   passdb {
--     driver = lua
--     mechanisms = xoauth2 oauthbearer
--     args = file=/etc/dovecot/lua/dovecot-oauth2.lua blocking=yes
--   }
--
-- Settings: the file named by DOVECOT_OAUTH2_CONFIG (pass it with import_environment), default
-- /etc/dovecot/dovecot-oauth2.conf.ext, the same file Dovecot's own oauth2 passdb reads.
--
-- The entry point is auth_password_verify, not auth_passdb_lookup: a lookup that answers
-- "nopassword=y" would let Dovecot's auth cache accept any later token for the user; a verify
-- answer makes Dovecot cache a hash of this token only, so a different token is checked again.

local oauth2 = require "dovecot_oauth2"

local validator = oauth2.new(os.getenv("DOVECOT_OAUTH2_CONFIG") or "/etc/dovecot/dovecot-oauth2.conf.ext")

function script_init()
  return 0
end

function script_deinit()
end

function auth_password_verify(req, token)
  return validator:verify(req, token)
end

function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "dovecot-oauth2 verifies tokens only (use mechanisms = xoauth2 oauthbearer)"
end
