-- Throwaway passdb used only to prove the e2e harness (tests/e2e/mailstack.py).
-- "good-token" is accepted for any user, "temp-token" is a temporary failure,
-- anything else is rejected.

function script_init()
  return 0
end

function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, ""
end

function auth_password_verify(req, password)
  if password == "good-token" then
    req:log_info("fake_passdb: accepted token for " .. tostring(req.user) .. " mech=" .. tostring(req.mech))
    return dovecot.auth.PASSDB_RESULT_OK, ""
  elseif password == "temp-token" then
    req:log_warning("fake_passdb: simulated temporary failure")
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, ""
  end
  req:log_info("fake_passdb: rejected token")
  return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, ""
end
