"""Shared helpers for the kernel-interface lab tests (not a test module): namespaces, veth pairs, ESP-shaped payloads.

Namespaces are named ``eo`` + 6 random hex digits + a suffix, so parallel runs never collide;
``namespaces()`` deletes them on exit, also when the test fails. ``Netns.entered()`` moves the
calling thread into the namespace (setns) and back: sockets and TUN devices created inside stay
in that namespace after we leave it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import struct
import subprocess
import time

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str, check: bool = True) -> str:
        return ip(*args, netns=self.name, check=check)

    def run(self, *cmd: str, timeout: float = 10, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def popen(self, *cmd: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)

    @contextlib.contextmanager
    def entered(self):
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            yield self
        finally:
            _setns(home)
            os.close(home)
            os.close(target)


@contextlib.contextmanager
def namespaces(*suffixes: str):
    """Create one namespace per suffix (loopback up) and delete them all afterwards."""
    prefix = "eo" + secrets.token_hex(3)
    created = []
    try:
        for suffix in suffixes:
            name = f"{prefix}{suffix}"
            ip("netns", "add", name)
            created.append(Netns(name))
            ip("link", "set", "lo", "up", netns=name)
        yield created
    finally:
        for ns in created:
            ip("netns", "del", ns.name, check=False)


def veth(a: Netns, b: Netns, addrs_a: list[str], addrs_b: list[str], mtu: int = 1500) -> tuple[str, str]:
    """A veth pair between two namespaces, addressed and up (IPv6 without DAD); returns the names."""
    name_a, name_b = f"{a.name[:8]}va", f"{b.name[:8]}vb"
    ip("link", "add", name_a, "mtu", str(mtu), "type", "veth", "peer", "name", name_b, "mtu", str(mtu), "netns",
       b.name, netns=a.name)
    for ns, name, addrs in ((a, name_a, addrs_a), (b, name_b, addrs_b)):
        for addr in addrs:
            ns.ip("addr", "add", addr, "dev", name, *(["nodad"] if ":" in addr else []))
        ns.ip("link", "set", name, "up")
    return name_a, name_b


A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "fd00:e5::1", "fd00:e5::2"


def esp(spi: int, seq: int, size: int = 64) -> bytes:
    return struct.pack("!II", spi, seq) + os.urandom(size - 8)


def gather(read, want: int, timeout: float = 3.0) -> list:
    """Call a batch reader until ``want`` items came (or the time is up)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += read()
        if len(got) < want:
            time.sleep(0.01)
    return got
