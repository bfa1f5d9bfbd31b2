"""A cached Debian 13 (trixie) root filesystem with strongSwan 6, for the "6.0" reference peer.

Debian 12 ships strongSwan 5.9.8, whose userspace ESP (kernel-libipsec) always wraps ESP in
UDP. strongSwan 6 can send raw IP protocol 50, so the lab runs trixie's packages in a chroot.
The tree is about 220 MB and takes ~20 s to build, so it is cached between runs; it is built
into a temporary directory and renamed, under a file lock, so concurrent test processes never
see or build a half-made tree.
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
    """Return the path of a complete trixie root filesystem, building it first if needed."""
    base = cache or cache_dir()
    root = base / "trixie-root"
    if (root / _READY_MARKER).exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "trixie-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if (root / _READY_MARKER).exists():
            return root
        if shutil.which("debootstrap") is None:
            raise RootfsError("debootstrap is not installed (scripts/bootstrap.sh system)")
        build = Path(tempfile.mkdtemp(prefix="trixie-root.build-", dir=base))
        logfile = base / "debootstrap.log"
        log.info("lab.rootfs.build", path=str(root), mirror=debian_mirror())
        try:
            with open(logfile, "w") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", "--include=" + ",".join(TRIXIE_PACKAGES),
                     "trixie", str(build), debian_mirror()],
                    stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            if done.returncode != 0 or not (build / _READY_MARKER).exists():
                tail = logfile.read_text(errors="replace").splitlines()[-15:]
                raise RootfsError("debootstrap failed:\n" + "\n".join(tail))
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
