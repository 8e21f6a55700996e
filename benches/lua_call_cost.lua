-- The Lua-side cost of one passdb call, outside Dovecot: what db-lua.c does per login (a fresh
-- request table, a protected call of auth_password_verify, a full garbage collection), in a loop.
--
--   lua5.4 benches/lua_call_cost.lua SCRIPT USER TOKEN [CALLS]
--
-- SCRIPT is lua/dovecot-oauth2.lua (with LUA_CPATH pointing at the built module and
-- DOVECOT_OAUTH2_CONFIG at a settings file whose provider accepts TOKEN for USER) or a ceiling script
-- such as `function auth_password_verify(req, t) return dovecot.auth.PASSDB_RESULT_OK, "" end`.
-- One token, so after the first call every call is a cache hit: the figure is the warm path.

dovecot = {
  auth = {
    PASSDB_RESULT_OK = 1, PASSDB_RESULT_PASSWORD_MISMATCH = 2, PASSDB_RESULT_INTERNAL_FAILURE = -1,
    PASSDB_RESULT_USER_UNKNOWN = 3, PASSDB_RESULT_NEXT = 4,
  },
}
local script, user, token, calls = arg[1], arg[2], arg[3], tonumber(arg[4] or "200000")
assert(script and user and token, "usage: lua5.4 lua_call_cost.lua SCRIPT USER TOKEN [CALLS]")
dofile(script)

local methods = {}
function methods.log_info(_, msg) io.stderr:write(msg, "\n") end
methods.log_warning = methods.log_info
methods.log_error = methods.log_info
function methods.var_expand(_, tpl) return tpl end
local meta = { __index = methods }

-- The fields Dovecot 2.3 sets on the request table it passes.
local function request()
  return setmetatable({
    user = user, original_user = user, auth_user = user, username = user, domain = user:match("@(.*)"),
    service = "imap", mech = "OAUTHBEARER", session = "bench", local_ip = "127.0.0.1", remote_ip = "127.0.0.2",
    local_port = 143, remote_port = 40000, real_local_ip = "127.0.0.1", real_remote_ip = "127.0.0.2",
    real_local_port = 143, real_remote_port = 40000, secured = true, skip_password_check = false,
    passdbs_seen_user_unknown = false, passdbs_seen_internal_failure = false,
    userdbs_seen_internal_failure = false,
  }, meta)
end

local function once()
  local ok, code, fields = pcall(auth_password_verify, request(), token)
  assert(ok and code == dovecot.auth.PASSDB_RESULT_OK, "not accepted: " .. tostring(code) .. " " .. tostring(fields))
  collectgarbage("collect")
end

for _ = 1, 1000 do once() end
local started = os.clock()
for _ = 1, calls do once() end
print(string.format("%s: %.2f us of CPU per call, Lua heap %.1f KiB", script, (os.clock() - started) / calls * 1e6,
  collectgarbage("count")))
