-- dovecot-oauth2: Lua passdb for Dovecot 2.3 and 2.4 that checks OAuth2 bearer tokens (XOAUTH2,
-- OAUTHBEARER; Dovecot 2.3) and PLAIN/LOGIN passwords at the identity provider (IdP app passwords,
-- resource-owner password grant; Dovecot 2.3 and 2.4).
--
-- Dovecot 2.3, tokens:
--   passdb {
--     driver = lua
--     mechanisms = xoauth2 oauthbearer
--     args = file=/etc/dovecot/lua/dovecot-oauth2.lua blocking=yes
--   }
-- Dovecot 2.3, passwords too (after the passwd-file passdb; see the README's "Clients without OAuth"):
--     mechanisms = plain login xoauth2 oauthbearer
-- Dovecot 2.4 (checks XOAUTH2/OAUTHBEARER itself with its oauth2 {} settings; passwords come here):
--   passdb dovecot-oauth2 {
--     driver = lua
--     lua_file = /etc/dovecot/lua/dovecot-oauth2.lua
--     mechanisms_filter = plain login
--   }
--
-- Settings: the file named by DOVECOT_OAUTH2_CONFIG (pass it with import_environment), or on 2.4 by
-- `lua_settings { config = /path }`, default /etc/dovecot/dovecot-oauth2.conf.ext, the file Dovecot's
-- own oauth2 passdb reads.
--
-- The entry point is auth_password_verify, not auth_passdb_lookup: a lookup that answers
-- "nopassword=y" would let Dovecot's auth cache accept any later token for the user; a verify
-- answer makes Dovecot cache a hash of this credential only, so a different one is checked again.

local oauth2 = require "dovecot_oauth2"

local validator = oauth2.new(os.getenv("DOVECOT_OAUTH2_CONFIG") or "/etc/dovecot/dovecot-oauth2.conf.ext")

-- Dovecot 2.3 calls it without arguments; 2.4 passes the passdb's lua_settings as a table.
function script_init(args)
  if type(args) == "table" and args.config ~= nil and args.config ~= "" then
    validator = oauth2.new(args.config)
  end
  return 0
end

function script_deinit()
end

-- The SASL mechanisms whose "password" is a bearer token (Dovecot 2.3 hands it here). On 2.4 req.mech
-- is nil and only PLAIN/LOGIN passwords arrive.
local TOKEN_MECHANISMS = { XOAUTH2 = true, OAUTHBEARER = true }

function auth_password_verify(req, password)
  if TOKEN_MECHANISMS[req.mech] then
    return validator:verify(req, password)
  end
  return validator:verify_password(req, password)
end

-- Dovecot 2.4 runs the passdb chain as a lookup after its own XOAUTH2/OAUTHBEARER check, and fails
-- the login when a Lua passdb has no auth_passdb_lookup: it must exist. This passdb verifies
-- credentials only, so a lookup finds no one (mechanisms_filter = plain login keeps it out of the way).
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "dovecot-oauth2 verifies credentials only (no lookups)"
end
