"""Lab helpers that only make sense on a real kernel (inside the guest): strongSwan on kernel ESP,
netem on a link, the kernel's XFRM states, and cheap in-process traffic.

Every Python program started under emulation spends seconds importing, so traffic here comes
from sockets this process opens *inside* a namespace (``setns`` on the calling thread only:
a socket stays in the namespace it was made in) instead of from helper processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dpkt

from tunnel.lab.netns import Gateway, Host, Lab, LabError
from tunnel.lab.strongswan import StrongSwan

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# netem on the public link, both directions (each gateway's egress): the impairment
NETEM = ("delay", "50ms", "20ms", "loss", "10%", "reorder", "5%", "duplicate", "1%")


class KernelStrongSwan(StrongSwan):
    """strongSwan on its default backend, kernel-netlink: the SAs live in the kernel's XFRM.

    ``retransmit`` = (timeout, base, tries) shortens charon's IKE retransmission schedule.
    """

    def __init__(self, *args, retransmit: tuple[float, float, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retransmit = retransmit

    def strongswan_conf(self) -> str:
        text = super().strongswan_conf().replace("kernel-libipsec kernel-netlink", "kernel-netlink")
        if self.retransmit:
            timeout, base, tries = self.retransmit
            text = text.replace("\ncharon {\n", f"\ncharon {{\n    retransmit_timeout = {timeout}\n"
                                f"    retransmit_base = {base}\n    retransmit_tries = {tries}\n", 1)
        return text


# --- namespaces from this process ------------------------------------------------------------------
@contextlib.contextmanager
def netns_of(node: str | Host | Gateway) -> Iterator[None]:
    """Run the block (this thread only) in the node's network namespace."""
    name = node if isinstance(node, str) else node.ns
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise LabError(f"setns into {name}: {os.strerror(ctypes.get_errno())}")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def socket_in(node, family: int, kind: int) -> socket.socket:
    with netns_of(node):
        return socket.socket(family, kind)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class TcpStream:
    """TCP client -> server (dst = the server's address): ``size`` bytes, or ``seconds`` of data
    paced at ``rate`` bytes/s. ``start()``; ``result()`` -> (sent, received), each 'BYTES SHA256'."""

    def __init__(self, client, server, dst: str, *, size: int | None = None, seconds: float | None = None,
                 rate: int = 64 << 10, port: int = 5001, seed: int = 1, timeout: float = 240):
        if (size is None) == (seconds is None):
            raise ValueError("give size or seconds")
        self.client, self.server, self.dst, self.port = client, server, dst, port
        self.size, self.seconds, self.rate, self.seed, self.timeout = size, seconds, rate, seed, timeout
        self.sent = self.received = ""
        self.errors: list[str] = []
        self.elapsed: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TcpStream:
        family = _family(self.dst)
        listener = socket_in(self.server, family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", self.port))
        listener.listen(1)
        listener.settimeout(self.timeout)
        self._threads = [threading.Thread(target=self._guard, args=(self._sink, listener), daemon=True),
                         threading.Thread(target=self._guard, args=(self._source, family), daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _guard(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as exc:  # reported by result()
            self.errors.append(f"{fn.__name__}: {exc!r}")

    def _sink(self, listener: socket.socket) -> None:
        with listener:
            conn, _ = listener.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            conn.settimeout(self.timeout)
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
        self.received = f"{total} {digest.hexdigest()}"

    def _source(self, family: int) -> None:
        conn = socket_in(self.client, family, socket.SOCK_STREAM)
        digest, total, started = hashlib.sha256(), 0, time.monotonic()
        rng = random.Random(self.seed)
        with conn:
            conn.settimeout(self.timeout)
            conn.connect((self.dst, self.port))
            while True:
                elapsed = time.monotonic() - started
                if self.size is not None and total >= self.size:
                    break
                if self.seconds is not None:
                    if elapsed >= self.seconds or self._stop.is_set():
                        break
                    if total > self.rate * elapsed:
                        time.sleep(0.01)
                        continue
                block = rng.randbytes(min(16384, self.size - total) if self.size is not None else 4096)
                conn.sendall(block)
                digest.update(block)
                total += len(block)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # the sink closes once it has read everything
        self.elapsed = round(time.monotonic() - started, 2)
        self.sent = f"{total} {digest.hexdigest()}"

    def stop(self) -> None:
        """End a timed stream early (it still closes cleanly, and result() checks it)."""
        self._stop.set()

    def result(self) -> tuple[str, str]:
        for thread in self._threads:
            thread.join(self.timeout + 10)
        if self.errors:
            raise LabError(f"TCP {self.dst}:{self.port}: {'; '.join(self.errors)}")
        return self.sent, self.received


def tcp_transfer(client, server, dst: str, size: int, *, port: int = 5001, seed: int = 1,
                 timeout: float = 240) -> tuple[str, str, float | None]:
    """Send ``size`` pseudo-random bytes; (sent, received, seconds)."""
    stream = TcpStream(client, server, dst, size=size, port=port, seed=seed, timeout=timeout).start()
    sent, received = stream.result()
    return sent, received, stream.elapsed


def one_way_udp(src, dst: Host, seconds: float, *, interval: float = 0.05, port: int = 5003) -> None:
    """Datagrams src -> dst that nothing answers (the socket is bound, so no ICMP comes back
    either): only the receiving side's gateway sees inbound ESP."""
    sink = socket_in(dst, socket.AF_INET, socket.SOCK_DGRAM)
    source = socket_in(src, socket.AF_INET, socket.SOCK_DGRAM)
    with sink, source:
        sink.bind(("0.0.0.0", port))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            source.sendto(b"x" * 32, (dst.addr4, port))
            time.sleep(interval)


class PingStream:
    """``ping`` in the background (the C program, cheap); ``stop()`` -> figures."""

    def __init__(self, lab: Lab, src, dst: str, interval: float = 0.1):
        self.lab = lab
        self.proc = lab.spawn(src, "ping", "-n", "-i", interval, "-W", "2", dst, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

    def stop(self) -> dict:
        self.proc.send_signal(2)  # SIGINT: ping prints its summary
        output, _ = self.proc.communicate(timeout=15)
        self.lab.stop(self.proc)
        seqs = sorted({int(n) for n in re.findall(r"icmp_seq=(\d+)", output)})
        sent = re.search(r"(\d+) packets transmitted", output)
        lost = [n for n in range(1, seqs[-1]) if n not in set(seqs)] if seqs else []
        runs, run = [], 0
        for n in range(1, (seqs[-1] if seqs else 0) + 1):
            run = run + 1 if n in lost else 0
            runs.append(run)
        replies = len(seqs)
        # echoes still in flight at SIGINT are not losses: count the holes before the last reply
        return {"sent": int(sent.group(1)) if sent else 0, "answered": replies, "lost": len(lost),
                "loss_percent": round(100 * len(lost) / max(1, replies + len(lost)), 1),
                "longest_loss_run": max(runs, default=0)}


# --- netem and the kernel's SAs ------------------------------------------------------------------
def set_netem(lab: Lab, gw: Gateway, *params: str) -> None:
    """netem on the gateway's public interface (its egress); no params removes it."""
    lab.run(gw, "tc", "qdisc", "del", "dev", gw.wan_iface, "root", check=False)
    if params:
        lab.run(gw, "tc", "qdisc", "add", "dev", gw.wan_iface, "root", "netem", "limit", "10000", *params)


@contextlib.contextmanager
def ike_blocked(lab: Lab, gw: Gateway) -> Iterator[None]:
    """Drop every IKE datagram the gateway sends to port 500 while the block runs."""
    table = "inet espgw_vmlab"
    lab.run(gw, "nft", "-f", "-", input=f"add table {table}\n"
            f"add chain {table} out {{ type filter hook output priority 0; }}\n"
            f'add rule {table} out oifname "{gw.wan_iface}" udp dport 500 counter drop\n')
    try:
        yield
    finally:
        lab.run(gw, "nft", "delete", "table", *table.split(), check=False)


def netem_stats(lab: Lab, gw: Gateway) -> str:
    return lab.run(gw, "tc", "-s", "qdisc", "show", "dev", gw.wan_iface).stdout


def xfrm_states(lab: Lab, gw: Gateway) -> list[dict]:
    """The kernel's ESP SAs in the namespace: spi, encap, algorithm names and counters."""
    text = lab.run(gw, "ip", "-s", "xfrm", "state").stdout
    states = []
    for block in re.split(r"\n(?=src )", text.strip()):
        spi = re.search(r"proto esp spi (0x[0-9a-f]+)", block)
        if not spi:
            continue
        stats = re.search(r"replay-window (\d+) replay (\d+) failed (\d+)", block)
        lifetime = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", block)
        states.append({"spi": int(spi.group(1), 16),
                       "encap": "espinudp" if "encap type espinudp" in block else None,
                       "algs": re.findall(r"^\s+(?:aead|enc|auth-trunc|auth) (\S+)", block, re.M),
                       "replay_drops": int(stats.group(2)) if stats else 0,
                       "integrity_failed": int(stats.group(3)) if stats else 0,
                       "packets": int(lifetime.group(2)) if lifetime else 0})
    return states


def have_rfc7539esp() -> bool:
    """Whether the kernel can do chacha20poly1305 for ESP: XFRM asks the crypto API for the
    rfc7539esp(chacha20,poly1305) template, which the chacha20poly1305 module provides."""
    done = subprocess.run(["modprobe", "chacha20poly1305"], capture_output=True, timeout=30)
    return done.returncode == 0


# --- what crossed a link ---------------------------------------------------------------------------
def capture_esp_in(lab: Lab, gw: Gateway, path: Path):
    """tcpdump of the ESP (raw and in UDP 4500) arriving on the gateway's public interface."""
    return lab.capture(gw, gw.wan_iface, path, bpf="inbound and (esp or udp port 4500)", startup_timeout=60)


def esp_arrivals(pcap_path: Path) -> dict[int, Counter]:
    """Per SPI, how often each sequence number arrived (raw ESP and ESP-in-UDP)."""
    seen: dict[int, Counter] = {}
    with open(pcap_path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            payload = bytes(ip.data)
            if ip.p == 17:
                if len(payload) < 16 or payload[8:12] == bytes(4):
                    continue  # IKE behind the non-ESP marker, or a keepalive
                payload = payload[8:]
            elif ip.p != 50 or len(payload) < 8:
                continue
            spi, seq = struct.unpack("!II", payload[:8])
            seen.setdefault(spi, Counter())[seq] += 1
    return seen


def duplicates(arrivals: dict[int, Counter], spis: set[int] | None = None) -> int:
    """Arrivals of an (SPI, sequence number) already seen: the true duplicates."""
    return sum(n - 1 for spi, seqs in arrivals.items() if spis is None or spi in spis for n in seqs.values())
