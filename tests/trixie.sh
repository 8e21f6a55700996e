#!/usr/bin/env bash
# Makes a Debian 13 (trixie) chroot with Dovecot 2.4 from Debian's own packages, for the tests that run a
# real Dovecot 2.4.1 on this Debian 12 machine (tests/e2e/dovecot24.py). Idempotent and quick once done:
# safe to call on every test setup. Run as root.
#
#   DOVECOT24_CHROOT  where the chroot lives (default /var/cache/dovecot-oauth2-tests/trixie, outside the repo)
#   DOVECOT24_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#
# The chroot is built in a temporary directory next to its final place, checked (dovecot --version must be
# 2.4.x), stamped, and only then renamed into place: an interrupted run never leaves a directory that looks
# done. debootstrap runs in a private mount namespace (unshare -m), so the /proc and /sys it mounts inside
# the target vanish with it, even after a crash. Nothing here touches the host's services or /etc/dovecot.
set -euo pipefail

DIR=${DOVECOT24_CHROOT:-/var/cache/dovecot-oauth2-tests/trixie}
MIRROR=${DOVECOT24_MIRROR:-http://deb.debian.org/debian}
PACKAGES=dovecot-core,dovecot-imapd,dovecot-pop3d,dovecot-submissiond,dovecot-auth-lua,ca-certificates
STAMP=.dovecot-oauth2-tests-ready   # written last, inside the chroot's top directory
DIR=${DIR%/}

say() { echo "trixie: $*"; }
die() { echo "trixie: $*" >&2; exit 1; }

# Prints the Dovecot version inside chroot $1, or fails.
dovecot_version() { chroot "$1" /usr/sbin/dovecot --version 2>/dev/null; }

is_ready() {
  [ -f "$DIR/$STAMP" ] || return 1
  local v
  v=$(dovecot_version "$DIR") || return 1
  [[ $v == 2.4.* ]]
}

# Refuses to delete a tree that still has something mounted under it (a bind-mounted /dev or /proc left by
# someone else): rm -rf would then reach into the host's /dev.
safe_rm() {
  local path=$1
  [ -e "$path" ] || return 0
  if awk -v p="$path" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    die "refusing to remove $path: something is mounted under it (see: grep '$path' /proc/self/mounts)"
  fi
  rm -rf --one-file-system -- "$path"
}

if is_ready; then
  say "ok, $(dovecot_version "$DIR") in $DIR"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
parent=$(dirname "$DIR")
mkdir -p "$parent"

# One builder at a time; a second caller waits and then finds the stamp.
exec 9>"$DIR.lock"
flock 9
if is_ready; then
  say "ok, $(dovecot_version "$DIR") in $DIR (built by a concurrent run)"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# Leftovers of interrupted runs (never marked ready).
for old in "$DIR".tmp.*; do
  [ -e "$old" ] || continue
  say "removing unfinished build $old"
  safe_rm "$old"
done

tmp="$DIR.tmp.$$"
say "debootstrap trixie (minbase + Dovecot 2.4 packages) into $tmp; takes a few minutes"
start=$SECONDS
# --variant=minbase has no /sbin/init, so the packages' maintainer scripts cannot start a Dovecot
# (invoke-rc.d: "No init system and policy-rc.d missing! Defaulting to block").
# Its own process group, so that an interrupted run stops all of debootstrap (a signal to this script
# alone would leave it running).
setsid unshare -m debootstrap --variant=minbase --include="$PACKAGES" trixie "$tmp" "$MIRROR" \
  > >(sed -u 's/^/trixie: | /') 2>&1 &
bpid=$!
trap 'kill -TERM -- -$bpid 2>/dev/null; echo "trixie: interrupted; $tmp is removed by the next run" >&2; exit 130' INT TERM HUP
rc=0
wait "$bpid" || rc=$?
trap - INT TERM HUP
if [ "$rc" != 0 ]; then
  [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
  die "debootstrap failed ($rc; the unfinished tree $tmp is removed by the next run)"
fi
say "debootstrap took $((SECONDS - start)) s"

# Nothing may keep running from the new tree (a package's daemon started despite the above).
for p in /proc/[0-9]*; do
  root=$(readlink "$p/root" 2>/dev/null) || continue
  if [ "$root" = "$tmp" ] || [[ $root == "$tmp/"* ]]; then
    die "process ${p#/proc/} is running inside $tmp after debootstrap; not using this tree"
  fi
done

version=$(dovecot_version "$tmp") || die "chroot $tmp dovecot --version failed"
[[ $version == 2.4.* ]] || die "expected Dovecot 2.4.x in the trixie chroot, got: $version"
[ -f "$tmp/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ] || die "dovecot-auth-lua's passdb is missing"

# Apt's downloaded .debs are not needed any more (about 40 MB).
rm -f "$tmp"/var/cache/apt/archives/*.deb
echo "$version" > "$tmp/$STAMP"
sync -f "$tmp/$STAMP" 2>/dev/null || true

if [ -e "$DIR" ]; then
  say "replacing $DIR (it was not marked ready)"
  aside="$DIR.tmp.old.$$"
  mv -- "$DIR" "$aside"
  safe_rm "$aside"
fi
mv -- "$tmp" "$DIR"
is_ready || die "$DIR is not usable after the build"
say "ok, $version in $DIR"
