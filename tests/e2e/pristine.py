"""Debian 12's pristine Dovecot and Postfix configuration, for the private instances of the tests.

The tests never copy the machine's live /etc/dovecot or /etc/postfix: an admin's changes there would
change the results. Instead they lay out what a fresh install of the installed packages leaves in
/etc, from the packages' own files:

  * the files are read where the package put them (/usr/share/dovecot, /usr/share/postfix,
    /etc/postfix's conffiles) and checked against dpkg's checksums of this very package version;
  * if one was changed (or is missing), the package's .deb of the installed version is fetched with
    `apt-get download` into a cache directory and the file is taken from it (`dpkg-deb -x`).

    pristine_dovecot_etc(dest)   # dest becomes /etc/dovecot as dovecot-core's postinst writes it
    pristine_postfix_etc(dest)   # dest becomes /etc/postfix as postfix's postinst writes it
                                 # for "No configuration" (no main.cf; master.cf from master.cf.dist)
"""

from __future__ import annotations

import functools
import grp
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

DOVECOT_PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-pop3d", "dovecot-submissiond")
CACHE_DIR = os.path.join(tempfile.gettempdir(), "dovecot-oauth2-pristine-debs")


class PristineError(RuntimeError):
    pass


def _query(pkg: str, field: str) -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${" + field + "}", pkg], capture_output=True, text=True)
    if p.returncode != 0:
        raise PristineError(f"package {pkg} is not installed: {p.stderr.strip()}")
    return p.stdout


def installed(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg], capture_output=True, text=True)
    return p.returncode == 0 and "install ok installed" in p.stdout


@functools.lru_cache(maxsize=None)
def _checksums(pkg: str) -> dict[str, str]:
    """/path -> md5 of every file of pkg as dpkg installed it (its md5sums and its conffiles)."""
    sums: dict[str, str] = {}
    try:
        with open(f"/var/lib/dpkg/info/{pkg}.md5sums") as f:
            for line in f:
                md5, path = line.rstrip("\n").split(None, 1)
                sums["/" + path] = md5
    except FileNotFoundError:
        pass
    for line in _query(pkg, "Conffiles").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            sums[parts[0]] = parts[1]
    return sums


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@functools.lru_cache(maxsize=None)
def _extracted(pkg: str) -> str:
    """The root of pkg's .deb (installed version) unpacked in the cache directory."""
    version = _query(pkg, "Version")
    arch = _query(pkg, "Architecture")
    root = os.path.join(CACHE_DIR, f"{pkg}_{version.replace(':', '%3a')}_{arch}")
    if not os.path.isdir(root):
        os.makedirs(CACHE_DIR, exist_ok=True)
        work = tempfile.mkdtemp(prefix=pkg + "-", dir=CACHE_DIR)
        p = subprocess.run(["apt-get", "download", "-q", f"{pkg}:{arch}={version}"], cwd=work,
                           capture_output=True, text=True, timeout=300)
        debs = [n for n in os.listdir(work) if n.endswith(".deb")]
        if p.returncode != 0 or len(debs) != 1:
            raise PristineError(f"apt-get download {pkg}={version} failed: {p.stdout}{p.stderr}")
        subprocess.run(["dpkg-deb", "-x", os.path.join(work, debs[0]), os.path.join(work, "root")],
                       check=True, capture_output=True)
        os.rename(os.path.join(work, "root"), root)
        shutil.rmtree(work, ignore_errors=True)
    return root


def package_file(pkg: str, path: str, *, force_download: bool = False) -> str:
    """Where the pristine content of pkg's file `path` (absolute, as installed) can be read."""
    want = _checksums(pkg).get(path)
    if want is None:
        raise PristineError(f"{path} is not a file of {pkg}")
    if not force_download and os.path.isfile(path) and _md5(path) == want:
        return path
    copy = _extracted(pkg) + path
    if _md5(copy) != want:
        raise PristineError(f"{copy} from the {pkg} package does not match dpkg's checksum")
    return copy


def _postinst_conffiles(pkg: str) -> list[str]:
    """The CONFFILES the package's postinst hands to ucf (/usr/share/dovecot/X -> /etc/dovecot/X)."""
    with open(f"/var/lib/dpkg/info/{pkg}.postinst") as f:
        m = re.search(r'^\s*CONFFILES="([^"]*)"', f.read(), re.M)
    if not m:
        raise PristineError(f"no CONFFILES in {pkg}'s postinst")
    return m.group(1).replace("\\\n", " ").split()


def pristine_dovecot_etc(dest: str) -> None:
    """dest = /etc/dovecot as a new install of the installed dovecot packages leaves it: each package's
    postinst copies its CONFFILES from /usr/share/dovecot (ucf); the top-level *.ext files become
    root:dovecot 0640; private/ is root 0700 with links to the ssl-cert snakeoil pair when it exists."""
    os.makedirs(os.path.join(dest, "conf.d"), exist_ok=True)
    os.chmod(dest, 0o755)
    os.chmod(os.path.join(dest, "conf.d"), 0o755)
    dovecot_gid = grp.getgrnam("dovecot").gr_gid
    for pkg in DOVECOT_PACKAGES:
        if not installed(pkg):
            continue
        for conffile in _postinst_conffiles(pkg):
            target = os.path.join(dest, conffile)
            shutil.copyfile(package_file(pkg, "/usr/share/dovecot/" + conffile), target)
            if conffile != "dovecot.conf" and not conffile.startswith("conf.d/"):
                os.chown(target, 0, dovecot_gid)
                os.chmod(target, 0o640)
            else:
                os.chmod(target, 0o644)
    private = os.path.join(dest, "private")
    os.makedirs(private, exist_ok=True)
    os.chmod(private, 0o700)
    pem, key = "/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key"
    if os.path.exists(pem) and os.path.exists(key):
        os.symlink(pem, os.path.join(private, "dovecot.pem"))
        os.symlink(key, os.path.join(private, "dovecot.key"))


def pristine_postfix_etc(dest: str) -> None:
    """dest = /etc/postfix as postfix's postinst leaves it with main_mailer_type "No configuration":
    the package's own files (post-install, postfix-files, postfix-script and the empty .d directories),
    dynamicmaps.cf for the map types installed, master.cf and the *.proto copies from the *.dist files,
    makedefs.out linked; no main.cf (the tests write their own)."""
    os.makedirs(dest, exist_ok=True)
    os.chmod(dest, 0o755)
    for name in ("dynamicmaps.cf.d", "postfix-files.d", "sasl"):
        os.makedirs(os.path.join(dest, name), exist_ok=True)
        os.chmod(os.path.join(dest, name), 0o755)
    for name, mode in (("post-install", 0o755), ("postfix-files", 0o644), ("postfix-script", 0o755)):
        shutil.copyfile(package_file("postfix", "/etc/postfix/" + name), os.path.join(dest, name))
        os.chmod(os.path.join(dest, name), mode)
    rows = []
    with open(package_file("postfix", "/usr/share/postfix/dynamicmaps.cf")) as f:
        for row in f:
            dict_type = row.split(None, 1)[0] if row.strip() else ""
            if row.startswith("#") or os.path.exists(f"/usr/lib/postfix/postfix-{dict_type}.so"):
                rows.append(row)
    with open(os.path.join(dest, "dynamicmaps.cf"), "w") as f:
        f.writelines(rows)
    os.chmod(os.path.join(dest, "dynamicmaps.cf"), 0o644)
    for src, name in (("master.cf.dist", "master.cf"), ("main.cf.dist", "main.cf.proto"),
                      ("master.cf.dist", "master.cf.proto")):
        shutil.copyfile(package_file("postfix", "/usr/share/postfix/" + src), os.path.join(dest, name))
        os.chmod(os.path.join(dest, name), 0o644)
    if os.path.exists("/usr/share/postfix/makedefs.out"):
        os.symlink("/usr/share/postfix/makedefs.out", os.path.join(dest, "makedefs.out"))
