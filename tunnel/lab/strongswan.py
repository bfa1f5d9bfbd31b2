"""A strongSwan reference gateway inside a Lab namespace.

Two versions, both with userspace ESP (kernel-libipsec + a TUN named ipsec0, routes in table
220), because this kernel has XFRM but no ESP:

* "5.9": Debian 12's strongSwan 5.9.8 from the host; libipsec always wraps ESP in UDP 4500
  (it fakes a NAT, so IKE moves to 4500 too).
* "6.0": Debian 13's strongSwan 6.0 in a cached debootstrap tree (``ensure_trixie_rootfs``),
  run with chroot inside the namespace and ``kernel-libipsec.raw_esp = yes``: IP protocol 50.
* "6.1": Debian unstable's strongSwan 6.1 the same way (``ensure_sid_rootfs``); its openssl
  plugin (OpenSSL 3.5+) adds ML-KEM-512/768/1024 (RFC 9370 additional key exchanges).

Each instance has a private strongswan.conf (selected by STRONGSWAN_CONF), its own vici socket
and a filelog in its work directory; the PSK lives only in swanctl.conf (mode 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from pathlib import Path
from collections.abc import Callable, Sequence

import structlog

from ike.config import ConnectionConfig
from tunnel.lab.netns import WORK_BASE, CommandFailed, Gateway, Lab, LabError
from tunnel.lab.rootfs import ensure_sid_rootfs, ensure_trixie_rootfs, rootfs_strongswan_version
from tunnel.lab.sas import ListSasParseError, parse_list_sas
from tunnel.lab.lab_pki import write_swanctl_files
from tunnel.lab.swanctl_conf import render_swanctl_conf

log = structlog.get_logger(__name__)

VERSIONS = ("5.9", "6.0", "6.1")
CHARON = "/usr/sbin/charon-systemd"  # writes no pid file, unlike /usr/lib/ipsec/charon
# Explicit plugin lists: deterministic, and without error-notify/lookip, whose fixed sockets
# collide between daemons. kernel-libipsec must precede kernel-netlink (first ipsec backend wins).
_COMMON_PLUGINS = "pem pkcs1 pkcs8 x509 pubkey revocation constraints " \
                  "kernel-libipsec kernel-netlink socket-default vici"
PLUGINS = {
    "5.9": "random nonce openssl aes sha1 sha2 hmac gcm gmp kdf " + _COMMON_PLUGINS,
    "6.0": "random nonce openssl gcm " + _COMMON_PLUGINS,  # 6.x: openssl does aes/sha*/hmac/kdf
    "6.1": "random nonce openssl gcm " + _COMMON_PLUGINS,  # openssl also does ML-KEM
}
_ROOTFS = {"6.0": ensure_trixie_rootfs, "6.1": ensure_sid_rootfs}
_SWANCTL_SUBDIRS = ("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey",
                    "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12")
# chroot for 6.0: ip netns exec gives each call its own mount namespace, so these mounts are
# private and vanish with the process; every step exec()s, so the Popen PID is the program's.
_CHROOT_SH = ('R=$1 L=$2; shift 2; mount --bind /dev "$R/dev" && mount -t proc proc "$R/proc" '
              '&& mkdir -p "$R$L" && mount --bind "$L" "$R$L" && exec chroot "$R" "$@"')


class StrongSwanError(LabError):
    """charon did not start, or a swanctl command failed."""


class StrongSwan:
    """One charon in ``gateway``'s namespace. Use as a context manager, or start()/stop().

    ``log_keys=True`` logs IKE at level 4, which includes the SK_* keys (fixtures only).
    ``rmem_default`` raises the global net.core.rmem_default while charon opens its sockets
    (6.0's raw ESP socket drops under load with the default), then restores it.
    """

    def __init__(self, lab: Lab, gateway: Gateway, version: str = "5.9",
                 connections: Sequence[ConnectionConfig] = (), *, log_keys: bool = False,
                 ike_log_level: int | None = None, rmem_default: int | None = None):
        if version not in VERSIONS:
            raise StrongSwanError(f"strongSwan version must be one of {VERSIONS}, not {version!r}")
        self.lab, self.gateway, self.version = lab, gateway, version
        self.connections = list(connections)
        self.pools: list = []  # ike.pools.AddressPool: swanctl.conf's pools section
        self.ike_log_level = ike_log_level if ike_log_level is not None else (4 if log_keys else 2)
        self.chd_log_level = 4 if log_keys else 1  # 4 dumps the CHILD SA key derivation inputs
        self.rmem_default = rmem_default
        self.dir = lab.workdir / f"strongswan-{gateway.role}"
        self.conf_path = self.dir / "strongswan.conf"
        self.swanctl_conf_path = self.dir / "swanctl" / "swanctl.conf"
        self.log_path = self.dir / "charon.log"
        self.vici_path = self.dir / "charon.vici"
        self.rootfs: Path | None = None
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"StrongSwan({self.gateway.role}, version={self.version!r}, running={self.running})"

    # -- files -------------------------------------------------------------------------------

    def strongswan_conf(self) -> str:
        raw = "no" if self.version == "5.9" else "yes"  # the option only exists from 5.9.11
        return f"""# {self.gateway.role}: private strongswan.conf, selected with STRONGSWAN_CONF
# charon-systemd reads section charon-systemd, which falls back to charon
charon-systemd {{
    journal {{
        default = -1
    }}
}}
charon {{
    load = {PLUGINS[self.version]}
    install_routes = yes
    filelog {{
        lab {{
            path = {self.log_path}
            time_format = %H:%M:%S
            append = no
            flush_line = yes
            default = 1
            ike = {self.ike_log_level}
            chd = {self.chd_log_level}
            knl = 1
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{self.vici_path}
        }}
        kernel-libipsec {{
            raw_esp = {raw}
        }}
    }}
}}
swanctl {{
    load = pem pkcs1 pkcs8 x509 pubkey revocation constraints random openssl
    socket = unix://{self.vici_path}
}}
"""

    def write_config(self) -> None:
        """(Re)write strongswan.conf and swanctl.conf from self.connections."""
        for sub in _SWANCTL_SUBDIRS:  # swanctl --load-all complains about each missing one
            (self.dir / "swanctl" / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.strongswan_conf())
        swanctl_dir = self.dir / "swanctl"
        for sub in ("x509", "x509ca", "x509crl", "private"):  # the previous case's credentials go
            for stale in (swanctl_dir / sub).iterdir():
                stale.unlink()
        for conn in self.connections:
            write_swanctl_files(swanctl_dir, conn.name, conn.local.credential if conn.local.auth == "pubkey" else None,
                                conn.remote.trust if conn.remote.auth == "pubkey" else None)
        fd = os.open(self.swanctl_conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(render_swanctl_conf(self.connections, self.pools))

    # -- process -----------------------------------------------------------------------------

    def _argv(self, *argv) -> list[str]:
        """Command line (run via the lab in the gateway namespace) for a strongSwan program."""
        env = ["env", f"STRONGSWAN_CONF={self.conf_path}", *map(str, argv)]
        if self.version == "5.9":
            return env
        return ["sh", "-c", _CHROOT_SH, "sh", str(self.rootfs), str(self.lab.workdir), *env]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 15) -> StrongSwan:
        """Write the configs, start charon, wait for its vici socket, load the connections."""
        if self.running:
            return self
        if self.version in _ROOTFS:
            self.rootfs = _ROOTFS[self.version]()
        self.write_config()
        self.vici_path.unlink(missing_ok=True)
        with _raised_rmem(self.rmem_default), open(self.dir / "charon.stdout", "wb") as stdout:
            self._proc = self.lab.spawn(self.gateway, *self._argv(CHARON), stdout=stdout,
                                        stderr=subprocess.STDOUT)
            self.lab.on_close(self.stop)
            deadline = time.monotonic() + timeout
            while not self.vici_path.is_socket():
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_tail() or (self.dir / "charon.stdout").read_text(errors="replace")
                    self.stop()
                    raise StrongSwanError(f"{self.gateway.role}: charon {self.version} did not come up:\n{tail}")
                time.sleep(0.05)
        log.info("lab.strongswan.started", gw=self.gateway.role, version=self.version, pid=self._proc.pid)
        if self.connections:
            self.load_all()
        return self

    def stop(self, timeout: float = 6) -> None:
        """Stop charon by its PID (SIGTERM, then SIGKILL) and check that it is gone."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        self.lab.stop(proc, timeout=timeout)
        if os.path.exists(f"/proc/{proc.pid}") and _comm(proc.pid) == "charon-systemd":
            raise StrongSwanError(f"{self.gateway.role}: charon pid {proc.pid} survived SIGKILL")
        self.vici_path.unlink(missing_ok=True)
        if self.rootfs is not None:  # the mount point the chroot wrapper made in the cached tree
            for made in (self.lab.workdir, self.lab.workdir.parent):
                with contextlib.suppress(OSError):
                    os.rmdir(str(self.rootfs) + str(made))
        log.info("lab.strongswan.stopped", gw=self.gateway.role, returncode=proc.returncode)

    def __enter__(self) -> StrongSwan:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- swanctl -----------------------------------------------------------------------------

    def swanctl(self, command: str, *args, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``swanctl --COMMAND --uri <our socket> ARGS`` (--uri must follow the command)."""
        argv = self._argv("swanctl", f"--{command}", "--uri", f"unix://{self.vici_path}", *args)
        try:
            return self.lab.run(self.gateway, *argv, check=check, timeout=timeout)
        except CommandFailed as exc:
            raise StrongSwanError(f"{self.gateway.role}: swanctl --{command} failed "
                                  f"({exc.returncode}): {(exc.stdout + exc.stderr).strip()[-1500:]}") from None

    def load_all(self, connections: Sequence[ConnectionConfig] | None = None) -> str:
        """Write swanctl.conf (optionally with new connections) and load it; idempotent."""
        if connections is not None:
            self.connections = list(connections)
        self.write_config()
        return self.swanctl("load-all", "--file", self.swanctl_conf_path).stdout

    def initiate(self, child: str | None = None, ike: str | None = None, timeout: float = 20) -> str:
        """Bring up a CHILD SA (and its IKE SA); raises StrongSwanError if it fails."""
        args = (["--child", child] if child else []) + (["--ike", ike] if ike else [])
        return self.swanctl("initiate", *args, "--timeout", int(timeout), timeout=timeout + 10).stdout

    def terminate(self, ike: str | None = None, child: str | None = None, timeout: float = 10,
                  check: bool = True) -> str:
        args = (["--ike", ike] if ike else []) + (["--child", child] if child else [])
        return self.swanctl("terminate", *args, "--timeout", int(timeout), timeout=timeout + 10,
                            check=check).stdout

    def rekey(self, child: str | None = None, ike: str | None = None) -> str:
        """Ask charon to rekey; it returns at once, see wait_for() to await the new SA."""
        if bool(child) == bool(ike):
            raise StrongSwanError("rekey needs exactly one of child= or ike=")
        return self.swanctl("rekey", *(["--child", child] if child else ["--ike", ike])).stdout

    def list_sas(self) -> list[dict]:
        """IKE SAs as dicts (vici's list-sa fields, e.g. 'name', 'state', 'child-sas')."""
        try:
            return parse_list_sas(self.swanctl("list-sas", "--pretty").stdout)
        except ListSasParseError as exc:
            raise StrongSwanError(f"{self.gateway.role}: unexpected swanctl --list-sas output: {exc}") from None

    def child_sas(self, child: str | None = None, state: str | None = "INSTALLED") -> list[dict]:
        """All CHILD SAs (flattened, each with 'ike' and 'ike-state' added), filtered."""
        out = []
        for sa in self.list_sas():
            for entry in sa.get("child-sas", {}).values():
                if (child is None or entry.get("name") == child) and (state is None or entry.get("state") == state):
                    out.append({**entry, "ike": sa.get("name"), "ike-state": sa.get("state")})
        return out

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 15,
                 what: str = "condition") -> list[dict]:
        """Poll list_sas() until predicate(sas) holds; returns those SAs."""
        deadline = time.monotonic() + timeout
        while True:
            sas = self.list_sas()
            if predicate(sas):
                return sas
            if time.monotonic() > deadline:
                raise StrongSwanError(f"{self.gateway.role}: timed out waiting for {what}: {sas}")
            time.sleep(0.2)

    # -- logs --------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def keys_from_log(self) -> list[dict[str, str]]:
        """SK_* keys per IKE SA from an ike-level-4 log, in order: [{'Sk_d': hex, ...}, ...]."""
        return parse_logged_keys(self.log_text())

    def version_string(self) -> str:
        if self.version in _ROOTFS:
            return rootfs_strongswan_version(self.rootfs or _ROOTFS[self.version]())
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libstrongswan"],
                              capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or "unknown"


_KEY_HEADER = re.compile(r"(\d+)\[IKE\] (Sk_(?:d|ai|ar|ei|er|pi|pr)) secret => (\d+) bytes")
_HEX_DUMP = re.compile(r"(\d+)\[IKE\]\s+(\d+): ((?:[0-9A-F]{2} )*[0-9A-F]{2})")


def parse_logged_keys(text: str) -> list[dict[str, str]]:
    """Keys from charon's ike-level-4 log: [{'Sk_d': hex, 'Sk_ei': hex, ...}, ...], in order.

    charon logs 'Sk_xx secret => N bytes @ 0x..' and then hexdump lines from the same thread
    (other threads' lines may interleave). A new dict starts at each Sk_d, which comes first
    for every IKE SA, also after an IKE rekey.
    """
    sets: list[dict[str, str]] = []
    pending: dict[str, tuple[str, int, bytearray]] = {}  # thread -> (name, size, data)
    for line in text.splitlines():
        header = _KEY_HEADER.search(line)
        if header:
            thread, name, size = header.group(1), header.group(2), int(header.group(3))
            pending[thread] = (name, size, bytearray())
            if name == "Sk_d" or not sets:
                sets.append({})
            sets[-1][name] = ""
            continue
        dump = _HEX_DUMP.search(line)
        if dump and dump.group(1) in pending:
            name, size, data = pending[dump.group(1)]
            if int(dump.group(2)) == len(data):
                data += bytes.fromhex(dump.group(3))
            if len(data) >= size:
                del pending[dump.group(1)]
                for keys in reversed(sets):
                    if keys.get(name) == "":
                        keys[name] = bytes(data[:size]).hex()
                        break
    return sets


_DUMP_HEADER = re.compile(r"(\d+)\[(IKE|CHD)\] (\S.*?) => (\d+) bytes @ ")
_ANY_HEX_DUMP = re.compile(r"(\d+)\[(?:IKE|CHD)\]\s+(\d+): ((?:[0-9A-F]{2} )*[0-9A-F]{2})")


def parse_logged_dumps(text: str) -> list[dict[str, str]]:
    """Every value charon's ike/chd-level-4 log dumps, in the order of their header lines:
    [{'name': 'SKEYSEED', 'group': 'IKE', 'thread': '15', 'hex': ...}, ...] (secrets, shared
    secrets, nonces, IntAuth inputs, AUTH octets, CHILD SA keys). Hexdump lines are matched to
    their header by thread."""
    dumps: list[dict[str, str]] = []
    pending: dict[str, tuple[dict[str, str], int, bytearray]] = {}  # thread -> (entry, size, data)
    for line in text.splitlines():
        header = _DUMP_HEADER.search(line)
        if header:
            thread, size = header.group(1), int(header.group(4))
            entry = {"name": header.group(3), "group": header.group(2), "thread": thread, "hex": ""}
            dumps.append(entry)
            if size:
                pending[thread] = (entry, size, bytearray())
            else:
                pending.pop(thread, None)
            continue
        dump = _ANY_HEX_DUMP.search(line)
        if dump and dump.group(1) in pending:
            entry, size, data = pending[dump.group(1)]
            if int(dump.group(2)) == len(data):
                data += bytes.fromhex(dump.group(3))
            if len(data) >= size:
                del pending[dump.group(1)]
                entry["hex"] = bytes(data[:size]).hex()
    return dumps


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def _raised_rmem(value: int | None):
    """Raise the global net.core.rmem_default for the block, under a lock across processes."""
    if not value:
        yield
        return
    path = Path("/proc/sys/net/core/rmem_default")
    WORK_BASE.mkdir(parents=True, exist_ok=True)
    with open(WORK_BASE / "rmem.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = path.read_text().strip()
        path.write_text(str(max(value, int(original))))
        try:
            yield
        finally:
            path.write_text(original)
