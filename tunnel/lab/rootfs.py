"""Cached Debian root filesystems with newer strongSwans than the host's, run in a chroot.

Debian 12 ships strongSwan 5.9.8, whose userspace ESP (kernel-libipsec) always wraps ESP in
UDP. strongSwan 6 can send raw IP protocol 50, so the lab runs Debian 13 (trixie)'s 6.0 in a
chroot ("6.0"); Debian unstable (sid)'s 6.1 ("6.1") adds ML-KEM (RFC 9370 multiple key
exchanges), with OpenSSL 3.5 behind its openssl plugin. A tree is about 220 MB and takes
~20 s to build, so it is cached between runs; it is built into a temporary directory and
renamed, under a file lock, so concurrent test processes never see or build a half-made tree.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_CACHE = Path("/var/cache/espgw")
TRIXIE_PACKAGES = (
    "charon-systemd",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libstrongswan-standard-plugins",
)
# sid: the same, plus the extra plugins (6.1's own "ml" ML-KEM plugin, a fallback to openssl's)
SID_PACKAGES = TRIXIE_PACKAGES + ("libstrongswan-extra-plugins",)
# present only in a complete tree: debootstrap installs it last of what we need
_READY_MARKER = "usr/sbin/charon-systemd"


class RootfsError(RuntimeError):
    """The strongSwan 6 root filesystem could not be built."""


def cache_dir() -> Path:
    return Path(os.environ.get("ESPGW_LAB_CACHE", DEFAULT_CACHE))


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d"),
                  sources_list: Path = Path("/etc/apt/sources.list")) -> str:
    """The Debian mirror this machine's apt already uses (deb822 or one-line format)."""
    for path in sorted(sources_dir.glob("*.sources")):
        for match in re.finditer(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    candidates = sorted(sources_dir.glob("*.list"))
    if sources_list.exists():
        candidates.insert(0, sources_list)
    for path in candidates:
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "deb" and "security" not in line:
                # skip "[arch=...]" option blocks
                urls = [f for f in fields[1:] if "://" in f]
                if urls:
                    return urls[0]
    raise RootfsError("cannot find the Debian mirror in the apt sources")


def ensure_trixie_rootfs(cache: Path | None = None, timeout: float = 900) -> Path:
    """Return the path of a complete trixie root filesystem (strongSwan 6.0), building it if needed."""
    return ensure_rootfs("trixie", TRIXIE_PACKAGES, cache, timeout)


def ensure_sid_rootfs(cache: Path | None = None, timeout: float = 900) -> Path:
    """Return the path of a complete sid root filesystem (strongSwan 6.1), building it if needed."""
    return ensure_rootfs("sid", SID_PACKAGES, cache, timeout)


def ensure_rootfs(suite: str, packages: tuple[str, ...], cache: Path | None = None,
                  timeout: float = 900) -> Path:
    """Return ``<cache>/<suite>-root``, a minbase tree of ``suite`` with ``packages``."""
    base = cache or cache_dir()
    root = base / f"{suite}-root"
    if (root / _READY_MARKER).exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{suite}-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if (root / _READY_MARKER).exists():
            return root
        if shutil.which("debootstrap") is None:
            raise RootfsError("debootstrap is not installed (scripts/bootstrap.sh system)")
        build = Path(tempfile.mkdtemp(prefix=f"{suite}-root.build-", dir=base))
        logfile = base / f"debootstrap-{suite}.log"
        log.info("lab.rootfs.build", path=str(root), mirror=debian_mirror())
        try:
            with open(logfile, "w") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages),
                     suite, str(build), debian_mirror()],
                    stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            if done.returncode != 0 or not (build / _READY_MARKER).exists():
                tail = logfile.read_text(errors="replace").splitlines()[-15:]
                raise RootfsError(f"debootstrap {suite} failed:\n" + "\n".join(tail))
            if root.exists():  # an incomplete leftover from an older, non-atomic build
                shutil.rmtree(root)
            build.rename(root)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        log.info("lab.rootfs.ready", path=str(root))
        return root


def rootfs_strongswan_version(root: Path) -> str:
    """The libstrongswan package version inside the tree, e.g. '6.0.1-6'."""
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    match = re.search(r"^Package: libstrongswan\n(?:.+\n)*?Version: (\S+)", status, re.MULTILINE)
    return match.group(1) if match else "unknown"
