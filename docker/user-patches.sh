#!/bin/bash
# dovecot-oauth2 for docker-mailserver (DMS): v14/v15 (Dovecot 2.3) and edge (Dovecot 2.4).
#
# DMS runs /tmp/docker-mailserver/user-patches.sh as root, with bash, right before the daemons start, on
# every fresh container. With ENABLE_OAUTH2=1 this script looks at the Dovecot version and:
#
# Dovecot 2.3 (DMS v14/v15): switches DMS's ENABLE_OAUTH2 passdb (Dovecot's built-in `driver = oauth2`)
# to the dovecot-oauth2 Lua passdb:
#   1. finds the module: dovecot_oauth2.so next to this script in the config volume (installed to
#      /usr/local/lib/lua/5.4/), else the one the dovecot-oauth2 image already has there,
#   2. finds the Lua script: dovecot-oauth2.lua in the config volume, else the image's copy in
#      /usr/local/share/dovecot-oauth2/; installs it to /etc/dovecot/lua/dovecot-oauth2.lua,
#   3. applies every OAUTH2_<KEY> variable as `<key> = <value>` to /etc/dovecot/dovecot-oauth2.conf.ext
#      (DMS already set the keys its file has; this adds the others, e.g. OAUTH2_CACHE_TTL_SECS),
#      refusing keys the module does not know,
#   4. replaces the passdb in /etc/dovecot/conf.d/auth-oauth2.conf.ext by the Lua passdb, keeping
#      DMS's originals as *.dms-orig next to them,
#   5. with OAUTH2_USE_GRANT_PASSWORD=yes (or OAUTH2_ACCEPT_TOKEN_AS_PASSWORD=yes): lets the Lua passdb
#      check PLAIN/LOGIN passwords too, after DMS's passwd-file passdb (local accounts first), and
#      makes that passdb quiet about its own mismatches (auth_verbose = no in auth-passwdfile.inc,
#      auth_verbose_passwords = no in conf.d/99-dovecot-oauth2.conf) so that Fail2Ban counts one
#      failure per refused login and none for an accepted app password,
#   6. checks the result with `doveconf -n`,
#   7. with any OAUTH2_SCIM_* variable set: runs dovecot-oauth2d beside the module for SCIM
#      provisioning (the daemon found as for Dovecot 2.4, below), with its own settings file
#      /etc/dovecot/dovecot-oauth2d.conf.ext (mode 0600: the module's settings + the OAUTH2_SCIM_*
#      keys + a loopback listener with a random credential that nothing uses), as a supervisord
#      program run as root (it writes DMS's account files). The OAUTH2_SCIM_* keys stay out of the
#      module's file. A problem with this step only turns SCIM off (and says why): the switched
#      passdb stays.
#
# Dovecot 2.4 (DMS edge): Dovecot checks XOAUTH2/OAUTHBEARER tokens itself with its `oauth2 {}` settings
# and no passdb sees them, so the daemon dovecot-oauth2d answers Dovecot's RFC 7662 requests instead:
#   1. finds the daemon: dovecot-oauth2d next to this script in the config volume (installed to
#      /usr/local/bin/), else the image's /usr/local/bin/dovecot-oauth2d,
#   2. writes the daemon's settings /etc/dovecot/dovecot-oauth2.conf.ext from the same OAUTH2_<KEY>
#      variables as on v15 (DMS edge itself only applies OAUTH2_INTROSPECTION_URL), with a random
#      credential for Dovecot (kept in /etc/dovecot/dovecot-oauth2d.secret, made once per container),
#      after the daemon's own check of them (`dovecot-oauth2d -t`),
#   3. replaces /etc/dovecot/conf.d/auth-oauth2.conf.ext by one whose `oauth2 {}` block asks the daemon
#      (introspection_mode = post on 127.0.0.1), keeping DMS's original as *.dms-orig,
#   4. checks the result with `doveconf -n -P` (-n alone hides the URL's password),
#   5. adds the daemon to DMS's supervisord (/etc/supervisor/conf.d/dovecot-oauth2d.conf, user dovecot,
#      log /var/log/mail/dovecot-oauth2d.log, started with supervisord on later container starts) and
#      starts it when supervisord is running; a daemon that does not start undoes the switch.
#
# On any problem it puts DMS's original files back, says why (lines prefixed [dovecot-oauth2]) and
# leaves DMS's own oauth2 configuration running; with DOVECOT_OAUTH2_STRICT=1 it then exits 1 as well.
# Running it again gives the same files. With ENABLE_OAUTH2 unset or not 1 it changes nothing.
#
# DMS_ROOT (default empty) prefixes every path this script reads or writes, for testing against a
# scratch copy of the image's file tree; the paths written into Dovecot's configuration stay absolute.
#
# If you already have a user-patches.sh, save this file as dovecot-oauth2-patches.sh next to it and
# add the line `bash /tmp/docker-mailserver/dovecot-oauth2-patches.sh` to yours.

set -uo pipefail

DMS_ROOT="${DMS_ROOT:-}"
DMS_ROOT="${DMS_ROOT%/}"

# Where things are at run time (written into Dovecot's configuration).
RT_LUA_SCRIPT='/etc/dovecot/lua/dovecot-oauth2.lua'

# Where this script reads and writes.
CONFIG_VOLUME="${DMS_ROOT}/tmp/docker-mailserver"
IMAGE_SHARE="${DMS_ROOT}/usr/local/share/dovecot-oauth2"
LUA_CPATH_DIR="${DMS_ROOT}/usr/local/lib/lua/5.4"
MODULE="${LUA_CPATH_DIR}/dovecot_oauth2.so"
DOVECOT_DIR="${DMS_ROOT}/etc/dovecot"
DOVECOT_CONF="${DOVECOT_DIR}/dovecot.conf"
LUA_SCRIPT="${DMS_ROOT}${RT_LUA_SCRIPT}"
SETTINGS="${DOVECOT_DIR}/dovecot-oauth2.conf.ext"
PASSDB_CONF="${DOVECOT_DIR}/conf.d/auth-oauth2.conf.ext"
PASSWDFILE_CONF="${DOVECOT_DIR}/conf.d/auth-passwdfile.inc"
# Read after conf.d/10-logging.conf (DMS's auth_verbose_passwords = sha1:6): only with passwords on.
DROPIN_CONF="${DOVECOT_DIR}/conf.d/99-dovecot-oauth2.conf"
LUA_PASSDB_MODULE="${DMS_ROOT}/usr/lib/dovecot/modules/auth/libauthdb_lua.so"
ORIG_SUFFIX='.dms-orig'

# Dovecot 2.4: the daemon, its secret, its supervisord program.
RT_DAEMON='/usr/local/bin/dovecot-oauth2d'
RT_SETTINGS='/etc/dovecot/dovecot-oauth2.conf.ext'
RT_SECRET='/etc/dovecot/dovecot-oauth2d.secret'
DAEMON="${DMS_ROOT}${RT_DAEMON}"
SECRET="${DMS_ROOT}${RT_SECRET}"
# Dovecot 2.3 with SCIM: the daemon's own settings (Dovecot's auth processes read RT_SETTINGS and must
# not see the SCIM token), and the listener's client id (the secret is RT_SECRET, as on 2.4).
# DAEMON_CONF is the daemon's settings file for the program and messages: RT_SETTINGS unless set.
RT_SCIM_SETTINGS='/etc/dovecot/dovecot-oauth2d.conf.ext'
RT_CLIENT_ID='/etc/dovecot/dovecot-oauth2d.client-id'
SCIM_SETTINGS="${DMS_ROOT}${RT_SCIM_SETTINGS}"
CLIENT_ID="${DMS_ROOT}${RT_CLIENT_ID}"
SUPERVISOR_PROGRAM="${DMS_ROOT}/etc/supervisor/conf.d/dovecot-oauth2d.conf"
DEFAULT_LISTEN='127.0.0.1:7662'

# The settings keys the module accepts: Dovecot 2.3's oauth2 keys plus this module's own. Derived from
# src/config.rs (the `match key.as_str()` arms of Settings::parse and IGNORED_DOVECOT_KEYS); an unknown
# key makes every login fail temporarily, so none gets past this script. tests/e2e/test_dms.py checks
# this list against src/config.rs and src/scim/settings.rs (KEYS).
KNOWN_KEYS='
  tokeninfo_url introspection_url introspection_mode force_introspection
  username_attribute username_format active_attribute active_value
  scope audience issuers openid_configuration_url jwks_url
  jwks_refetch_min_interval_secs jwks_max_age_secs
  client_id client_secret pass_attrs
  timeout_msecs connect_timeout_msecs max_idle_time_msecs max_parallel_connections
  tls_ca_cert_file tls_ca_cert_dir tls_cert_file tls_key_file tls_allow_invalid_cert
  debug use_grant_password local_validation_key_dict
  cache_ttl_secs cache_negative_ttl_secs cache_max_entries leeway_secs
  max_token_bytes max_response_bytes
  stale_if_error_secs circuit_breaker_failures circuit_breaker_backoff_secs stats_log_interval_secs
  grant_url grant_type grant_client_auth grant_scope grant_username_format
  password_cache_ttl_secs password_cache_negative_ttl_secs password_max_requests_per_minute
  accept_token_as_password
  max_pipelined_requests rawlog_dir tls_cipher_suite send_auth_headers
  http_proxy listen listen_client_id listen_client_secret metrics_listen
  scim_listen scim_token scim_tls_cert scim_tls_key scim_domains scim_backend scim_state_file
  scim_dms_config_dir scim_mail_root scim_delete_mailbox scim_aliases scim_quota_attribute
  scim_passwd_file scim_mailbox_map scim_alias_map scim_uid scim_gid scim_after_change
  scim_max_requests_per_minute scim_public_url
'

MARKER='# dovecot-oauth2: written by user-patches.sh'

log() { printf '[dovecot-oauth2] %s\n' "$*"; }
err() { printf '[dovecot-oauth2] ERROR: %s\n' "$*" >&2; }

STAGE=''
cleanup() { [[ -n ${STAGE} ]] && rm -rf "${STAGE}"; }
trap cleanup EXIT

# Put DMS's original files back (kept as *.dms-orig when the passdb was switched).
restore_originals() {
  local f
  for f in "${PASSDB_CONF}" "${SETTINGS}" "${PASSWDFILE_CONF}"; do
    if [[ -f ${f}${ORIG_SUFFIX} ]]; then
      cp -p "${f}${ORIG_SUFFIX}" "${f}" && rm -f "${f}${ORIG_SUFFIX}"
    fi
  done
  # Dovecot 2.4: DMS has no settings file of its own; the daemon's program goes with the switch.
  [[ -f ${SETTINGS} && ! -f ${SETTINGS}${ORIG_SUFFIX} ]] && grep -qF "${MARKER}" "${SETTINGS}" && rm -f "${SETTINGS}"
  # Dovecot 2.3: the SCIM daemon goes with the switch too (its program just below)
  [[ -f ${SCIM_SETTINGS} ]] && grep -qF "${MARKER}" "${SCIM_SETTINGS}" && rm -f "${SCIM_SETTINGS}"
  if [[ -f ${SUPERVISOR_PROGRAM} ]]; then
    rm -f "${SUPERVISOR_PROGRAM}"
    stop_daemon
  fi
  rm -f "${DROPIN_CONF}"
  local out
  if out=$(doveconf -c "${DOVECOT_CONF}" -n 2>&1 >/dev/null); then
    log "restored docker-mailserver's original ${PASSDB_CONF#"${DMS_ROOT}"} and ${SETTINGS#"${DMS_ROOT}"} (doveconf: ok)"
  else
    err "restored docker-mailserver's original files, but doveconf still fails: ${out}"
  fi
}

# Give up: keep (or put back) DMS's own oauth2 passdb.
give_up() {
  local why
  for why in "$@"; do err "${why}"; done
  # this run (or an earlier one) switched the passdb: put DMS's originals back
  [[ -f ${PASSDB_CONF} ]] && grep -qF "${MARKER}" "${PASSDB_CONF}" && restore_originals
  err "not switched: docker-mailserver's own ${DMS_OAUTH2:-oauth2 passdb (driver = oauth2)} stays in place"
  [[ ${DOVECOT_OAUTH2_STRICT:-0} == 1 ]] && exit 1
  exit 0
}

# install_file SRC DST MODE: copy only when the content differs (replacing DST atomically, so a
# running process never sees a half-written file), then set owner root and MODE.
install_file() {
  local src=$1 dst=$2 mode=$3 group=${4:-root}
  mkdir -p "$(dirname "${dst}")" || return 1
  if ! cmp -s "${src}" "${dst}"; then
    cp "${src}" "${dst}.tmp.$$" && mv -f "${dst}.tmp.$$" "${dst}" || { rm -f "${dst}.tmp.$$"; return 1; }
  fi
  chown "root:${group}" "${dst}" && chmod "${mode}" "${dst}"
}

# check_module FILE: an ELF shared object (or a position-independent executable, which has the same ELF
# type) for this machine's architecture, whose libraries (glibc version included) resolve.
check_module() {
  local so=$1 hdr machine want
  [[ -r ${so} ]] || { echo "${so} is not readable"; return 1; }
  hdr=$(od -An -tx1 -N20 "${so}" 2>/dev/null | tr -d ' \n')
  [[ ${hdr:0:8} == 7f454c46 ]] || { echo "${so} is not an ELF file"; return 1; }
  [[ ${hdr:32:4} == 0300 ]] || { echo "${so} is not a shared object (ELF type ${hdr:32:4})"; return 1; }
  machine=${hdr:36:4}
  case "$(uname -m)" in
    x86_64) want=3e00 ;;
    aarch64 | arm64) want=b700 ;;
    armv7l | armv6l) want=2800 ;;
    *) want='' ;;
  esac
  if [[ -n ${want} && ${machine} != "${want}" ]]; then
    echo "${so} is built for another CPU architecture (ELF machine ${machine}, this is $(uname -m))"
    return 1
  fi
  if command -v ldd >/dev/null 2>&1; then
    local out
    out=$(ldd "${so}" 2>&1 | grep -E 'not found|not a dynamic') && {
      echo "${so} does not load here (build it on Debian 12): ${out//$'\n'/; }"
      return 1
    }
  fi
  return 0
}

# check_daemon FILE: an ELF executable (position-independent or not) for this machine's architecture,
# whose libraries (glibc version included) resolve; a static one has none to resolve.
check_daemon() {
  local bin=$1 hdr want
  [[ -r ${bin} ]] || { echo "${bin} is not readable"; return 1; }
  hdr=$(od -An -tx1 -N20 "${bin}" 2>/dev/null | tr -d ' \n')
  [[ ${hdr:0:8} == 7f454c46 ]] || { echo "${bin} is not an ELF file"; return 1; }
  [[ ${hdr:32:4} == 0200 || ${hdr:32:4} == 0300 ]] || { echo "${bin} is not an executable (ELF type ${hdr:32:4})"; return 1; }
  case "$(uname -m)" in
    x86_64) want=3e00 ;;
    aarch64 | arm64) want=b700 ;;
    armv7l | armv6l) want=2800 ;;
    *) want='' ;;
  esac
  if [[ -n ${want} && ${hdr:36:4} != "${want}" ]]; then
    echo "${bin} is built for another CPU architecture (ELF machine ${hdr:36:4}, this is $(uname -m))"
    return 1
  fi
  if command -v ldd >/dev/null 2>&1; then
    local out
    out=$(ldd "${bin}" 2>&1 | grep -E 'not found') && {
      echo "${bin} does not run here (build it on Debian 12 or 13): ${out//$'\n'/; }"
      return 1
    }
  fi
  return 0
}

# mask_secret SECRET: copies stdin to stdout with SECRET replaced (for messages that quote Dovecot's output).
mask_secret() {
  local secret=$1 text
  text=$(cat)
  [[ -n ${secret} ]] && text=${text//"${secret}"/<secret>}
  printf '%s' "${text}"
}

# is_known_key KEY
is_known_key() {
  [[ $1 =~ ^[a-z0-9_]+$ ]] && [[ " ${KNOWN_KEYS//$'\n'/ } " == *" $1 "* ]]
}

# set_key FILE KEY VALUE: replace every `KEY = ...` line, or append one.
set_key() {
  local file=$1 key=$2 value=$3
  KEY="${key}" VALUE="${value}" awk '
    BEGIN { k = ENVIRON["KEY"]; v = ENVIRON["VALUE"]; done = 0 }
    {
      line = $0; sub(/^[ \t]+/, "", line)
      if (substr(line, 1, 1) != "#" && index(line, "=") > 0) {
        name = substr(line, 1, index(line, "=") - 1); sub(/[ \t]+$/, "", name)
        if (name == k) { print k " = " v; done = 1; next }
      }
      print
    }
    END { if (!done) print k " = " v }
  ' "${file}" > "${file}.new" && mv -f "${file}.new" "${file}"
}

# check_settings FILE: every key known, and a way to check tokens given. Prints the problems.
check_settings() {
  local file=$1 problems=0 lineno=0 raw line key value
  local introspection_url='' tokeninfo_url='' mode='' discovery='' jwks=''
  while IFS= read -r raw || [[ -n ${raw} ]]; do
    lineno=$((lineno + 1))
    line="${raw#"${raw%%[![:space:]]*}"}"
    [[ -z ${line} || ${line} == '#'* ]] && continue
    if [[ ${line} != *=* ]]; then
      echo "${file#"${DMS_ROOT}"} line ${lineno}: expected 'key = value'"; problems=1; continue
    fi
    key="${line%%=*}"; key="${key%"${key##*[![:space:]]}"}"
    value="${line#*=}"; value="${value#"${value%%[![:space:]]*}"}"; value="${value%%#*}"
    value="${value%"${value##*[![:space:]]}"}"; value="${value#\"}"; value="${value%\"}"
    if ! is_known_key "${key}"; then
      echo "${file#"${DMS_ROOT}"} line ${lineno}: unknown key '${key}'"; problems=1; continue
    fi
    case "${key}" in
      introspection_url) introspection_url=${value} ;;
      tokeninfo_url) tokeninfo_url=${value} ;;
      introspection_mode) mode=${value} ;;
      openid_configuration_url) discovery=${value} ;;
      jwks_url) jwks=${value} ;;
    esac
  done < "${file}"
  if [[ ${mode} == local ]]; then
    if [[ -z ${discovery} && -z ${jwks} ]]; then
      echo "introspection_mode = local needs OAUTH2_OPENID_CONFIGURATION_URL or OAUTH2_JWKS_URL"; problems=1
    fi
  elif [[ -z ${introspection_url} && -z ${tokeninfo_url} ]]; then
    echo "introspection_url is empty: set OAUTH2_INTROSPECTION_URL (the provider's userinfo or introspection URL)"
    problems=1
  fi
  return "${problems}"
}

# passwords_on FILE: the settings switch PLAIN/LOGIN passwords on (the last assignment counts).
passwords_on() {
  awk '
    { line = $0; sub(/^[ \t]+/, "", line) }
    line ~ /^(use_grant_password|accept_token_as_password)[ \t]*=/ {
      key = line; sub(/[ \t]*=.*/, "", key)
      value = line; sub(/^[^=]*=[ \t]*/, "", value); sub(/[ \t]*(#.*)?$/, "", value); gsub(/"/, "", value)
      on[key] = (tolower(value) ~ /^(yes|y|true|1)$/)
    }
    END { exit !(on["use_grant_password"] || on["accept_token_as_password"]) }
  ' "$1"
}

# quiet_passwdfile SRC DST: DMS's passwd-file passdb with `auth_verbose = no` (its mismatch is not a
# failure yet: the Lua passdb after it decides and logs the one failure). Fails without such a passdb.
quiet_passwdfile() {
  awk -v marker="${MARKER}" '
    /^[ \t]*passdb([ \t]+[^ \t{]+)?[ \t]*\{/ { inpass = 1 }
    { print }
    inpass && /^[ \t]*driver[ \t]*=[ \t]*passwd-file[ \t]*$/ && !done {
      print "  auth_verbose = no  " marker " (the next passdb, dovecot-oauth2, logs the one failure)"
      done = 1
    }
    inpass && /^[ \t]*}/ { inpass = 0 }
    END { exit !done }
  ' "$1" > "$2"
}

dropin_conf_text() {
  cat << EOF
${MARKER}: PLAIN/LOGIN passwords go to the passwd-file passdb, then to dovecot-oauth2.
# With any other value Dovecot logs the passwd-file passdb's mismatch despite its auth_verbose = no,
# and Fail2Ban would count an accepted IdP app password as a failed login.
auth_verbose_passwords = no
EOF
}

passdb_conf_text() {
  local mechanisms=$1 what
  if [[ ${mechanisms} == *plain* ]]; then
    what='Bearer tokens (XOAUTH2, OAUTHBEARER) and, after the passwd-file passdb, PLAIN/LOGIN passwords
# (IdP app passwords, use_grant_password)'
  else
    what='Bearer tokens (XOAUTH2, OAUTHBEARER only: a token never reaches the passwd-file passdb, so a token
# login never logs "Password mismatch")'
  fi
  cat << EOF
${MARKER}; DMS's original: auth-oauth2.conf.ext${ORIG_SUFFIX}
# Allow clients to use these additional mechanisms:
auth_mechanisms = \$auth_mechanisms oauthbearer xoauth2

# ${what} are checked by the dovecot-oauth2 module, configured by
# /etc/dovecot/dovecot-oauth2.conf.ext. cache_key gives each credential its own auth-cache entry.
passdb {
  driver = lua
  mechanisms = ${mechanisms}
  args = file=${RT_LUA_SCRIPT} blocking=yes cache_key=%u%{sha256:password}
}
EOF
}

# apply_oauth2_variables FILE: every OAUTH2_<KEY> variable as `<key> = <value>` in FILE; gives up on a
# key the module does not know (an unknown key makes every login fail temporarily) or one this script
# manages itself (EXCLUDED_KEYS). VARS_ONLY / VARS_SKIP (extended regexps of variable names) narrow the
# variables applied: Dovecot 2.3 puts the OAUTH2_SCIM_* ones in the daemon's file only.
apply_oauth2_variables() {
  local file=$1 name key value bad=()
  while IFS= read -r name; do
    key=${name#OAUTH2_}; key=${key,,}
    value=${!name}
    if ! is_known_key "${key}"; then
      bad+=("${name}: '${key}' is not a dovecot-oauth2 setting")
      continue
    fi
    if [[ " ${EXCLUDED_KEYS:-} " == *" ${key} "* ]]; then
      bad+=("${name}: '${key}' is set by this script")
      continue
    fi
    if [[ ${value} == *$'\n'* ]]; then
      bad+=("${name}: the value spans several lines")
      continue
    fi
    [[ ${value} == *'#'* && ${value} != *'"'* ]] && value="\"${value}\""
    set_key "${file}" "${key}" "${value}" || give_up "cannot edit the staged settings file"
  done < <(compgen -e | grep -E '^OAUTH2_' | grep -E "${VARS_ONLY:-^}" | { grep -vE "${VARS_SKIP:-^$}" || :; } | LC_ALL=C sort)
  ((${#bad[@]} == 0)) || give_up "${bad[@]}" "known keys:$(printf ' %s' ${KNOWN_KEYS})"
}

# stage_check_settings FILE: gives up with the problems check_settings finds.
stage_check_settings() {
  local problems lines
  if ! problems=$(check_settings "$1"); then
    mapfile -t lines <<< "${problems}"
    give_up "${lines[@]}"
  fi
}

main_23() {
  [[ -f ${LUA_PASSDB_MODULE} ]] \
    || give_up "${LUA_PASSDB_MODULE#"${DMS_ROOT}"} is missing: Dovecot's Lua passdb (package dovecot-auth-lua) is needed"
  [[ -f ${PASSDB_CONF} ]] || give_up "${PASSDB_CONF#"${DMS_ROOT}"} is missing (not a docker-mailserver image?)"
  [[ -f ${SETTINGS} ]] || give_up "${SETTINGS#"${DMS_ROOT}"} is missing (not a docker-mailserver image?)"

  # --- the module and the script
  local module_src='' why
  if [[ -f ${CONFIG_VOLUME}/dovecot_oauth2.so ]]; then
    module_src="${CONFIG_VOLUME}/dovecot_oauth2.so"
  elif [[ -f ${MODULE} ]]; then
    module_src="${MODULE}"
  else
    give_up "no module: put dovecot_oauth2.so (built on Debian 12) next to user-patches.sh in the config volume, or use the dovecot-oauth2 image"
  fi
  why=$(check_module "${module_src}") || give_up "${why}"

  # The troubleshooting command, when shipped in the config volume (optional; needs no Lua).
  if [[ -f ${CONFIG_VOLUME}/dovecot-oauth2-check ]]; then
    install -D -m 0755 "${CONFIG_VOLUME}/dovecot-oauth2-check" "${DMS_ROOT}/usr/local/bin/dovecot-oauth2-check" \
      || log "could not install dovecot-oauth2-check (the switch goes on without it)"
  fi

  local script_src=''
  if [[ -f ${CONFIG_VOLUME}/dovecot-oauth2.lua ]]; then
    script_src="${CONFIG_VOLUME}/dovecot-oauth2.lua"
  elif [[ -f ${IMAGE_SHARE}/dovecot-oauth2.lua ]]; then
    script_src="${IMAGE_SHARE}/dovecot-oauth2.lua"
  else
    give_up "no dovecot-oauth2.lua: put it next to user-patches.sh in the config volume"
  fi
  grep -q 'require "dovecot_oauth2"' "${script_src}" && grep -q 'function auth_password_verify' "${script_src}" \
    || give_up "${script_src#"${DMS_ROOT}"} is not the dovecot-oauth2 passdb script"

  # --- DMS's originals: the current files, or the copies an earlier run kept
  local orig_passdb="${PASSDB_CONF}" orig_settings="${SETTINGS}"
  if grep -qF "${MARKER}" "${PASSDB_CONF}"; then
    [[ -f ${PASSDB_CONF}${ORIG_SUFFIX} && -f ${SETTINGS}${ORIG_SUFFIX} ]] \
      || give_up "${PASSDB_CONF#"${DMS_ROOT}"} was switched earlier but DMS's originals (*${ORIG_SUFFIX}) are gone; recreate the container"
    orig_passdb="${PASSDB_CONF}${ORIG_SUFFIX}"
    orig_settings="${SETTINGS}${ORIG_SUFFIX}"
  elif ! grep -qE '^[[:space:]]*driver[[:space:]]*=[[:space:]]*oauth2' "${PASSDB_CONF}"; then
    give_up "${PASSDB_CONF#"${DMS_ROOT}"} has no 'driver = oauth2' passdb: not docker-mailserver's file, left alone"
  fi

  # --- the new files, staged
  STAGE=$(mktemp -d) || give_up "mktemp failed"
  cp "${orig_settings}" "${STAGE}/settings" || give_up "cannot read ${orig_settings}"
  [[ -z $(tail -c1 "${STAGE}/settings") ]] || echo >> "${STAGE}/settings"
  VARS_SKIP='^OAUTH2_SCIM_' apply_oauth2_variables "${STAGE}/settings"
  stage_check_settings "${STAGE}/settings"
  local mechanisms='xoauth2 oauthbearer' passwords=0
  local orig_passwdfile="${PASSWDFILE_CONF}"
  [[ -f ${PASSWDFILE_CONF}${ORIG_SUFFIX} ]] && orig_passwdfile="${PASSWDFILE_CONF}${ORIG_SUFFIX}"
  if passwords_on "${STAGE}/settings"; then
    passwords=1
    mechanisms='plain login xoauth2 oauthbearer'
    [[ -f ${orig_passwdfile} ]] || give_up "${PASSWDFILE_CONF#"${DMS_ROOT}"} is missing: passwords need DMS's passwd-file passdb first"
    quiet_passwdfile "${orig_passwdfile}" "${STAGE}/passwdfile" \
      || give_up "${PASSWDFILE_CONF#"${DMS_ROOT}"} has no 'driver = passwd-file' passdb: cannot put the local accounts first"
    dropin_conf_text > "${STAGE}/dropin" || give_up "cannot write the staged logging configuration"
  fi
  passdb_conf_text "${mechanisms}" > "${STAGE}/passdb" || give_up "cannot write the staged passdb configuration"

  # --- install
  if [[ ${module_src} != "${MODULE}" ]]; then
    install_file "${module_src}" "${MODULE}" 0644 || give_up "cannot install ${MODULE#"${DMS_ROOT}"}"
  fi
  install_file "${script_src}" "${LUA_SCRIPT}" 0644 || give_up "cannot install ${RT_LUA_SCRIPT}"
  chmod 0755 "$(dirname "${LUA_SCRIPT}")"
  if [[ ${orig_passdb} == "${PASSDB_CONF}" ]]; then
    cp -p "${PASSDB_CONF}" "${PASSDB_CONF}${ORIG_SUFFIX}" && cp -p "${SETTINGS}" "${SETTINGS}${ORIG_SUFFIX}" \
      || give_up "cannot keep copies of DMS's originals"
  fi
  local group=root
  getent group dovecot > /dev/null 2>&1 && group=dovecot
  install_file "${STAGE}/settings" "${SETTINGS}" 0640 "${group}" || give_up "cannot write ${SETTINGS#"${DMS_ROOT}"}"
  install_file "${STAGE}/passdb" "${PASSDB_CONF}" 0644 || give_up "cannot write ${PASSDB_CONF#"${DMS_ROOT}"}"
  if ((passwords)); then
    if [[ ${orig_passwdfile} == "${PASSWDFILE_CONF}" ]]; then
      cp -p "${PASSWDFILE_CONF}" "${PASSWDFILE_CONF}${ORIG_SUFFIX}" \
        || give_up "cannot keep a copy of DMS's ${PASSWDFILE_CONF#"${DMS_ROOT}"}"
    fi
    install_file "${STAGE}/passwdfile" "${PASSWDFILE_CONF}" 0644 || give_up "cannot write ${PASSWDFILE_CONF#"${DMS_ROOT}"}"
    install_file "${STAGE}/dropin" "${DROPIN_CONF}" 0644 || give_up "cannot write ${DROPIN_CONF#"${DMS_ROOT}"}"
  else
    # passwords off (again): DMS's passwd-file passdb as it was
    if [[ -f ${PASSWDFILE_CONF}${ORIG_SUFFIX} ]]; then
      cp -p "${PASSWDFILE_CONF}${ORIG_SUFFIX}" "${PASSWDFILE_CONF}" && rm -f "${PASSWDFILE_CONF}${ORIG_SUFFIX}"
    fi
    rm -f "${DROPIN_CONF}"
  fi

  # --- check what Dovecot will run
  local out
  out=$(doveconf -c "${DOVECOT_CONF}" -n 2> "${STAGE}/doveconf.err") \
    || give_up "doveconf rejects the configuration: $(tr '\n' ' ' < "${STAGE}/doveconf.err")"
  grep -qE "^ *args = file=${RT_LUA_SCRIPT} " <<< "${out}" && grep -qE '^ *driver = lua$' <<< "${out}" \
    || give_up "the Lua passdb is not in Dovecot's configuration: is '!include auth-oauth2.conf.ext' enabled in conf.d/10-auth.conf (DMS does that for ENABLE_OAUTH2=1)?"
  ! grep -qE '^ *driver = oauth2$' <<< "${out}" \
    || give_up "Dovecot's configuration still has a 'driver = oauth2' passdb"
  if ((passwords)); then
    [[ $(doveconf -c "${DOVECOT_CONF}" -h auth_verbose_passwords 2> /dev/null) == no ]] \
      || give_up "auth_verbose_passwords is not 'no' in Dovecot's configuration: does a file after ${DROPIN_CONF#"${DMS_ROOT}"} set it?"
    grep -qE '^ *mechanisms = plain login xoauth2 oauthbearer$' <<< "${out}" \
      || give_up "the Lua passdb does not take PLAIN/LOGIN passwords in Dovecot's configuration"
    log "PLAIN/LOGIN passwords: the passwd-file passdb first (local accounts), then dovecot-oauth2 (use_grant_password / accept_token_as_password)"
  fi

  log "switched the oauth2 passdb to dovecot-oauth2 (Lua passdb ${RT_LUA_SCRIPT}, module ${MODULE#"${DMS_ROOT}"} from ${module_src#"${DMS_ROOT}"}, settings ${SETTINGS#"${DMS_ROOT}"}); doveconf: ok"
  log "roll back: restore ${PASSDB_CONF#"${DMS_ROOT}"}${ORIG_SUFFIX} and ${SETTINGS#"${DMS_ROOT}"}${ORIG_SUFFIX}, or remove this script and recreate the container"

  # --- SCIM: its own step, in a subshell whose give_up only turns SCIM off (the passdb stays switched)
  if compgen -e | grep -qE '^OAUTH2_SCIM_'; then
    (scim_23) || { [[ ${DOVECOT_OAUTH2_STRICT:-0} == 1 ]] && exit 1; }
  elif [[ -f ${SCIM_SETTINGS} ]]; then
    scim_23_remove
  fi
  return 0
}

# scim_off WHY...: SCIM is off on this container (the earlier run's program and settings go), the
# switched passdb stays. Replaces give_up inside scim_23's subshell: exits that subshell only.
scim_off() {
  local why
  for why in "$@"; do err "SCIM: ${why}"; done
  scim_23_remove
  err "SCIM provisioning is off on this container (the dovecot-oauth2 passdb is switched and works without it)"
  exit 1
}

# scim_23_remove: takes out the SCIM daemon of an earlier run (its program and its settings file).
scim_23_remove() {
  if [[ -f ${SUPERVISOR_PROGRAM} ]] && grep -qF "${MARKER}" "${SUPERVISOR_PROGRAM}"; then
    rm -f "${SUPERVISOR_PROGRAM}"
    stop_daemon
  fi
  [[ -f ${SCIM_SETTINGS} ]] && grep -qF "${MARKER}" "${SCIM_SETTINGS}" && rm -f "${SCIM_SETTINGS}"
  return 0
}

# scim_23: Dovecot 2.3: dovecot-oauth2d beside the module, for SCIM only (run in a subshell, after the
# switch). Its settings are the module's as just installed (the same provider keys: the daemon checks
# them as the module does), a loopback listener nobody asks (its credential random per container) and
# the OAUTH2_SCIM_* keys.
scim_23() {
  give_up() { scim_off "$@"; }
  STAGE="${STAGE}/scim"
  mkdir -m 0700 "${STAGE}" || give_up "cannot make a staging folder"
  local daemon_src why
  daemon_src=$(daemon_source) \
    || give_up "no dovecot-oauth2d (it serves SCIM); put it (built on Debian 12) next to user-patches.sh in the config volume, or use the dovecot-oauth2 image"
  why=$(check_daemon "${daemon_src}") || give_up "${why}"
  local listen=${OAUTH2_LISTEN:-${DEFAULT_LISTEN}}
  loopback_listen "${listen}" \
    || give_up "OAUTH2_LISTEN='${listen}': the daemon's introspection listener (unused on Dovecot 2.3) stays on loopback (e.g. 127.0.0.1:7662)"

  # --- staged: the settings, the secret; the client id inline (the file is root's alone)
  local id secret
  id=$(container_random "${CLIENT_ID}" 12) || give_up "cannot make a random client id"
  secret=$(container_random "${SECRET}" 24) || give_up "cannot make a random secret"
  printf '%s\n' "${id}" > "${STAGE}/client-id" && printf '%s\n' "${secret}" > "${STAGE}/secret" \
    || give_up "cannot stage the listener's credential"
  { printf '%s (read by dovecot-oauth2d for SCIM: Dovecot 2.3; the module reads %s)\n' "${MARKER}" "${RT_SETTINGS}"
    grep -vF "${MARKER}" "${SETTINGS}"; } > "${STAGE}/settings" || give_up "cannot read ${SETTINGS#"${DMS_ROOT}"}"
  set_key "${STAGE}/settings" listen "${listen}" \
    && set_key "${STAGE}/settings" listen_client_id "${id}" \
    && set_key "${STAGE}/settings" listen_client_secret "<${RT_SECRET}" \
    || give_up "cannot edit the staged settings file"
  VARS_ONLY='^OAUTH2_SCIM_' apply_oauth2_variables "${STAGE}/settings"
  DAEMON_CONF=${RT_SCIM_SETTINGS}
  daemon_check "${daemon_src}"
  local scim_listen
  scim_listen=$(sed -n 's/^scim_listen = //p' "${STAGE}/settings" | tail -n1)
  [[ -n ${scim_listen} ]] || give_up "OAUTH2_SCIM_LISTEN is not set: the SCIM service's IP:PORT (e.g. 0.0.0.0:7643)"
  DAEMON_USER=root
  supervisor_program_text > "${STAGE}/program" || give_up "cannot write the staged supervisord program"

  # --- install (root's alone: the SCIM token may be inline), then run it under DMS's supervisord
  if [[ ${daemon_src} != "${DAEMON}" ]]; then
    install_file "${daemon_src}" "${DAEMON}" 0755 || give_up "cannot install ${RT_DAEMON}"
  fi
  install_file "${STAGE}/client-id" "${CLIENT_ID}" 0600 || give_up "cannot write ${RT_CLIENT_ID}"
  install_file "${STAGE}/secret" "${SECRET}" 0600 || give_up "cannot write ${RT_SECRET}"
  install_file "${STAGE}/settings" "${SCIM_SETTINGS}" 0600 || give_up "cannot write ${RT_SCIM_SETTINGS}"
  install_file "${STAGE}/program" "${SUPERVISOR_PROGRAM}" 0644 \
    || give_up "cannot write ${SUPERVISOR_PROGRAM#"${DMS_ROOT}"}"
  mkdir -p "${DMS_ROOT}/var/log/mail"
  why=$(start_daemon) || give_up "${why}"
  [[ -n ${why} ]] && printf '%s\n' "${why}"
  log "SCIM provisioning: dovecot-oauth2d on ${scim_listen} (root, daemon ${RT_DAEMON} from ${daemon_src#"${DMS_ROOT}"}, settings ${RT_SCIM_SETTINGS}, log /var/log/mail/dovecot-oauth2d.log)"
}

# auth-oauth2.conf.ext for Dovecot 2.4: DMS's mechanisms, and an oauth2 {} block that points Dovecot's
# own oauth2 client at the daemon. username_attribute = username: the daemon answers with the identity
# already folded as username_format says, which is what Dovecot 2.4.1 compares (case-sensitively) with
# the login user that DMS lowercases.
oauth2_block_text() {
  local listen=$1 secret=$2
  cat << EOF
${MARKER}; DMS's original: auth-oauth2.conf.ext${ORIG_SUFFIX}
auth_mechanisms {
  oauthbearer = yes
  xoauth2 = yes
}

# Tokens are checked by dovecot-oauth2d (one cache for every auth process; settings in
# ${RT_SETTINGS}, log in /var/log/mail/dovecot-oauth2d.log).
oauth2 {
  introspection_mode = post
  introspection_url = http://dovecot:${secret}@${listen}/introspect
  username_attribute = username
  # 2.4.1 compares the reply's username with the login user case-sensitively; DMS lowercases the
  # login (auth_username_format), so fold the reply too, as Dovecot 2.3 did on both sides.
  username_validation_format = %{user | lower}
  active_attribute = active
  active_value = true
}
EOF
}

# autostart=true: a restarted container (whose files stay switched) has supervisord start the daemon
# itself; Dovecot would otherwise ask a daemon that is not there.
supervisor_program_text() {
  cat << EOF
; ${MARKER}
[program:dovecot-oauth2d]
startsecs=1
stopwaitsecs=30
autostart=true
autorestart=true
user=${DAEMON_USER}
redirect_stderr=true
stdout_logfile=/var/log/mail/%(program_name)s.log
command=${RT_DAEMON} -c ${DAEMON_CONF:-${RT_SETTINGS}}
EOF
}

# The daemon's settings before the OAUTH2_* variables are applied: Dovecot's defaults as DMS v15's file
# had them, and the listener Dovecot is pointed at.
daemon_settings_text() {
  local listen=$1
  cat << EOF
${MARKER} (read by dovecot-oauth2d: Dovecot 2.4)
introspection_url =
introspection_mode = auth
username_attribute = email
listen = ${listen}
listen_client_id = dovecot
listen_client_secret = <${RT_SECRET}
EOF
}

# start_daemon: (re)starts the daemon's supervisord program when supervisord runs (it does in DMS: this
# script is run by start-mailserver.sh, itself a supervisord program).
start_daemon() {
  if ! supervisord_running; then
    log "supervisord is not running: start the daemon with '${RT_DAEMON} -c ${DAEMON_CONF:-${RT_SETTINGS}}'"
    return 0
  fi
  supervisorctl reread > /dev/null 2>&1
  supervisorctl update dovecot-oauth2d > /dev/null 2>&1
  supervisorctl restart dovecot-oauth2d > /dev/null 2>&1
  local _
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if supervisorctl status dovecot-oauth2d 2> /dev/null | grep -q RUNNING; then
      log "dovecot-oauth2d runs under supervisord ('supervisorctl status dovecot-oauth2d')"
      return 0
    fi
    sleep 1
  done
  echo "dovecot-oauth2d did not start under supervisord: see /var/log/mail/dovecot-oauth2d.log"
  return 1
}

supervisord_running() {
  command -v supervisorctl > /dev/null 2>&1 && supervisorctl pid > /dev/null 2>&1
}

# stop_daemon: takes the daemon's program out of a running supervisord (its file is gone or going).
stop_daemon() {
  supervisord_running || return 0
  supervisorctl stop dovecot-oauth2d > /dev/null 2>&1
  supervisorctl remove dovecot-oauth2d > /dev/null 2>&1
  return 0
}

# daemon_check DAEMON: the daemon's own check (-t) of the staged settings, reading the staged secret;
# gives up with its errors, passes its warnings on.
daemon_check() {
  local daemon=$1 line lines=()
  sed "s|^listen_client_secret = <.*|listen_client_secret = <${STAGE}/secret|" "${STAGE}/settings" \
    > "${STAGE}/settings.check" && chmod 0600 "${STAGE}/settings.check" "${STAGE}/secret" \
    || give_up "cannot stage the settings for dovecot-oauth2d's check"
  # run from an executable copy next to where it goes (the config volume's copy may lack +x, and /tmp
  # may be mounted noexec)
  local bin rc=0
  bin="$(dirname "${DAEMON}")/.dovecot-oauth2d.check.$$"
  mkdir -p "$(dirname "${DAEMON}")" && install -m 0700 "${daemon}" "${bin}" \
    || give_up "cannot copy ${daemon#"${DMS_ROOT}"} to run its check"
  "${bin}" -t -c "${STAGE}/settings.check" > "${STAGE}/check.out" 2>&1 || rc=$?
  rm -f "${bin}"
  while IFS= read -r line; do
    line=${line#* dovecot-oauth2d: }
    line=${line//"${STAGE}/settings.check"/${DAEMON_CONF:-${RT_SETTINGS}}}
    case "${line}" in
      error:*) lines+=("dovecot-oauth2d -t: ${line#error: }") ;;
      warning:*) log "dovecot-oauth2d -t: ${line}" ;;
    esac
  done < "${STAGE}/check.out"
  if ((rc != 0)); then
    ((${#lines[@]} > 0)) || lines=("dovecot-oauth2d -t -c ${DAEMON_CONF:-${RT_SETTINGS}} failed (exit ${rc}): $(head -c 500 "${STAGE}/check.out" | tr '\n' ' ')")
    give_up "${lines[@]}"
  fi
}

# daemon_source: prints where the daemon comes from: the config volume's copy, else the image's.
daemon_source() {
  if [[ -f ${CONFIG_VOLUME}/dovecot-oauth2d ]]; then
    printf '%s\n' "${CONFIG_VOLUME}/dovecot-oauth2d"
  elif [[ -f ${DAEMON} ]]; then
    printf '%s\n' "${DAEMON}"
  else
    return 1
  fi
}

# loopback_listen IP:PORT: an address on loopback (only local clients reach the listener).
loopback_listen() {
  [[ $1 =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+$ ]]
}

# container_random FILE BYTES: prints the value FILE keeps (BYTES random bytes in hex, made by an
# earlier run of this container), else a new one: the same on a rerun, new in a new container.
container_random() {
  local file=$1 bytes=$2 value=''
  [[ -s ${file} ]] && value=$(< "${file}")
  if [[ ! ${value} =~ ^[0-9a-f]+$ || ${#value} -ne $((bytes * 2)) ]]; then
    value=$(od -An -tx1 -N"${bytes}" /dev/urandom | tr -d ' \n')
    [[ ${value} =~ ^[0-9a-f]+$ && ${#value} -eq $((bytes * 2)) ]] || return 1
  fi
  printf '%s\n' "${value}"
}

main_24() {
  local version=$1
  DMS_OAUTH2='oauth2 {} settings (Dovecot asks the provider itself)'
  [[ -f ${PASSDB_CONF} ]] || give_up "${PASSDB_CONF#"${DMS_ROOT}"} is missing (not a docker-mailserver image?)"

  # --- the daemon
  local daemon_src='' why
  daemon_src=$(daemon_source) \
    || give_up "Dovecot ${version}: no dovecot-oauth2d; put it (built on Debian 12 or 13) next to user-patches.sh in the config volume, or use the dovecot-oauth2 image"
  why=$(check_daemon "${daemon_src}") || give_up "${why}"

  # --- DMS's original: the current file, or the copy an earlier run kept
  local orig_passdb="${PASSDB_CONF}"
  if grep -qF "${MARKER}" "${PASSDB_CONF}"; then
    [[ -f ${PASSDB_CONF}${ORIG_SUFFIX} ]] \
      || give_up "${PASSDB_CONF#"${DMS_ROOT}"} was switched earlier but DMS's original (*${ORIG_SUFFIX}) is gone; recreate the container"
    orig_passdb="${PASSDB_CONF}${ORIG_SUFFIX}"
  elif ! grep -qE '^[[:space:]]*oauth2[[:space:]]*\{' "${PASSDB_CONF}"; then
    give_up "${PASSDB_CONF#"${DMS_ROOT}"} has no 'oauth2 {' block: not docker-mailserver's file, left alone"
  fi

  local listen=${OAUTH2_LISTEN:-${DEFAULT_LISTEN}}
  loopback_listen "${listen}" \
    || give_up "OAUTH2_LISTEN='${listen}': Dovecot reaches the daemon on loopback (e.g. 127.0.0.1:7662)"

  # --- the new files, staged
  STAGE=$(mktemp -d) || give_up "mktemp failed"
  daemon_settings_text "${listen}" > "${STAGE}/settings" || give_up "cannot write the staged settings"
  EXCLUDED_KEYS='listen_client_id listen_client_secret' apply_oauth2_variables "${STAGE}/settings"
  stage_check_settings "${STAGE}/settings"

  # One random credential per container: only Dovecot (and root) can ask the daemon.
  local secret=''
  secret=$(container_random "${SECRET}" 24) || give_up "cannot make a random secret"
  printf '%s\n' "${secret}" > "${STAGE}/secret" || give_up "cannot stage the secret"
  daemon_check "${daemon_src}"
  oauth2_block_text "${listen}" "${secret}" > "${STAGE}/passdb" || give_up "cannot write the staged oauth2 block"
  DAEMON_USER=root
  # With SCIM the daemon writes DMS's account files (root's); otherwise it needs no privilege.
  [[ -z ${OAUTH2_SCIM_LISTEN:-} ]] && getent passwd dovecot > /dev/null 2>&1 && DAEMON_USER=dovecot
  supervisor_program_text > "${STAGE}/program" || give_up "cannot write the staged supervisord program"

  # --- install
  if [[ ${daemon_src} != "${DAEMON}" ]]; then
    install_file "${daemon_src}" "${DAEMON}" 0755 || give_up "cannot install ${RT_DAEMON}"
  fi
  if [[ ${orig_passdb} == "${PASSDB_CONF}" ]]; then
    cp -p "${PASSDB_CONF}" "${PASSDB_CONF}${ORIG_SUFFIX}" || give_up "cannot keep a copy of DMS's original"
  fi
  local group=root
  getent group dovecot > /dev/null 2>&1 && group=dovecot
  install_file "${STAGE}/secret" "${SECRET}" 0640 "${group}" || give_up "cannot write ${RT_SECRET}"
  install_file "${STAGE}/settings" "${SETTINGS}" 0640 "${group}" || give_up "cannot write ${RT_SETTINGS}"
  # It holds the daemon's credential: readable by Dovecot, not by every local user.
  install_file "${STAGE}/passdb" "${PASSDB_CONF}" 0640 "${group}" \
    || give_up "cannot write ${PASSDB_CONF#"${DMS_ROOT}"}"

  # --- check what Dovecot will run. doveconf -n hides the URL's password (http://#hidden_use-P_to_show#@...):
  # -P shows it; the output stays in this variable, and the secret is masked in what is printed.
  local out
  out=$(doveconf -c "${DOVECOT_CONF}" -n -P 2> "${STAGE}/doveconf.err") \
    || give_up "doveconf rejects the configuration: $(tr '\n' ' ' < "${STAGE}/doveconf.err" | mask_secret "${secret}")"
  grep -qxF "  introspection_url = http://dovecot:${secret}@${listen}/introspect" <<< "${out}" \
    || give_up "the daemon's oauth2 block is not in Dovecot's configuration: is '!include auth-oauth2.conf.ext' enabled in conf.d/10-auth.conf (DMS does that for ENABLE_OAUTH2=1)?"

  # --- run the daemon under DMS's supervisord
  install_file "${STAGE}/program" "${SUPERVISOR_PROGRAM}" 0644 \
    || give_up "cannot write ${SUPERVISOR_PROGRAM#"${DMS_ROOT}"}"
  mkdir -p "${DMS_ROOT}/var/log/mail"
  why=$(start_daemon) || give_up "${why}"
  [[ -n ${why} ]] && printf '%s\n' "${why}"

  log "switched Dovecot ${version}'s oauth2 client to dovecot-oauth2d on ${listen} (daemon ${RT_DAEMON} from ${daemon_src#"${DMS_ROOT}"}, settings ${RT_SETTINGS}); doveconf: ok"
  log "roll back: restore ${PASSDB_CONF#"${DMS_ROOT}"}${ORIG_SUFFIX}, or remove this script and recreate the container"
}

main() {
  if [[ ${ENABLE_OAUTH2:-0} != 1 ]]; then
    log "ENABLE_OAUTH2 is not 1: nothing to do"
    exit 0
  fi
  local version
  version=$(dovecot --version 2>/dev/null) || give_up "cannot run 'dovecot --version'"
  version=${version%% *}
  case "${version}" in
    2.3.*) main_23 ;;
    2.4.*) main_24 "${version}" ;;
    *) give_up "Dovecot ${version} found; dovecot-oauth2 supports Dovecot 2.3 (DMS v14/v15) and 2.4 (DMS edge)" ;;
  esac
}

main "$@"
