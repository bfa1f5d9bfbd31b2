"""The namespace lab: hostA - gwA - public link - gwB - hostB, one network namespace each.

Either gateway can run espgw or a strongSwan reference peer. The gateways have no route to the
other LAN, so hostA reaches hostB only through a tunnel: plain traffic cannot leak. Everything
the lab creates (namespaces, processes, nftables rules, its work directory) is removed by
``close()``, also after an exception, Ctrl-C or SIGTERM; ``cleanup_stale()`` removes what a
killed process (SIGKILL) left behind.

Links, addresses and routes are made with pyroute2; programs run with ``ip netns exec``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence

import structlog
from pyroute2 import NetNS, netns
from pyroute2.ethtool import Ethtool

log = structlog.get_logger(__name__)

ROLES = ("hostA", "gwA", "gwB", "hostB")
WORK_BASE = Path(os.environ.get("ESPGW_LAB_WORK", "/tmp/espgw-lab"))
_NS_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_]+)-(?P<role>hostA|gwA|gwB|hostB)$")
_MAX_PREFIX = 15 - 1 - len("hostA")  # netns names stay within IFNAMSIZ-like 15 chars
_IFA_F_NODAD = 0x02
_NFT_TABLE = "espgw_lab"


class LabError(RuntimeError):
    """The lab could not be built or a lab operation failed."""


class CommandFailed(LabError):
    def __init__(self, ns: str, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.ns, self.argv, self.returncode = ns, list(argv), returncode
        self.stdout, self.stderr = stdout, stderr
        what = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(f"[{ns}] {' '.join(map(str, argv))} {what}: {(stderr or stdout).strip()[-800:]}")


@dataclass(frozen=True)
class Host:
    """An end host on one LAN; its default routes point at its gateway."""

    role: str  # "hostA" / "hostB"
    ns: str
    iface: str
    ip4: ipaddress.IPv4Interface
    ip6: ipaddress.IPv6Interface | None
    gateway4: ipaddress.IPv4Address
    gateway6: ipaddress.IPv6Address | None

    @property
    def addr4(self) -> str:
        return str(self.ip4.ip)

    @property
    def addr6(self) -> str | None:
        return str(self.ip6.ip) if self.ip6 else None


@dataclass(frozen=True)
class Gateway:
    """A gateway: LAN side towards its host, WAN side on the public link."""

    role: str  # "gwA" / "gwB"
    ns: str
    lan_iface: str
    lan4: ipaddress.IPv4Interface
    lan6: ipaddress.IPv6Interface | None
    wan_iface: str
    wan4: ipaddress.IPv4Interface
    wan6: ipaddress.IPv6Interface | None

    @property
    def lan_net4(self) -> ipaddress.IPv4Network:
        return self.lan4.network

    @property
    def lan_net6(self) -> ipaddress.IPv6Network | None:
        return self.lan6.network if self.lan6 else None

    @property
    def wan_addr4(self) -> str:
        return str(self.wan4.ip)

    @property
    def wan_addr6(self) -> str | None:
        return str(self.wan6.ip) if self.wan6 else None


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    rtt_mdev_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        return self.transmitted > 0 and self.received == self.transmitted

    @property
    def loss_percent(self) -> float:
        return 100.0 * (1 - self.received / self.transmitted) if self.transmitted else 100.0


def parse_ping(output: str) -> PingResult:
    counts = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", output)
    sent, got = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
    low, avg, high, mdev = (float(v) for v in rtt.groups()) if rtt else (None, None, None, None)
    return PingResult(sent, got, low, avg, high, mdev, output=output)


def _ns_name(node: str | Host | Gateway) -> str:
    return node if isinstance(node, str) else node.ns


class Lab:
    """Four namespaces with veths; use as a context manager (or call ``close()``).

    Defaults match the product demo: laptop 10.0.0.7 behind gwA 10.0.0.1, dashboard 10.0.5.9
    behind gwB 10.0.5.1, public link 192.0.2.1 <-> 192.0.2.2 (RFC 5737); IPv6 LANs
    fd00:a::/64 and fd00:b::/64, public 2001:db8::/64 (RFC 3849).
    """

    def __init__(self, prefix: str | None = None, ipv6: bool = True, *,
                 lan_a4: str = "10.0.0.0/24", host_a4: str = "10.0.0.7", gw_a_lan4: str = "10.0.0.1",
                 lan_b4: str = "10.0.5.0/24", host_b4: str = "10.0.5.9", gw_b_lan4: str = "10.0.5.1",
                 wan4: str = "192.0.2.0/24", gw_a_wan4: str = "192.0.2.1", gw_b_wan4: str = "192.0.2.2",
                 lan_a6: str = "fd00:a::/64", host_a6: str = "fd00:a::7", gw_a_lan6: str = "fd00:a::1",
                 lan_b6: str = "fd00:b::/64", host_b6: str = "fd00:b::9", gw_b_lan6: str = "fd00:b::1",
                 wan6: str = "2001:db8::/64", gw_a_wan6: str = "2001:db8::1", gw_b_wan6: str = "2001:db8::2",
                 keep_workdir: bool | None = None):
        self.prefix = prefix or "eg" + secrets.token_hex(3)
        if not re.fullmatch(rf"[A-Za-z0-9_]{{1,{_MAX_PREFIX}}}", self.prefix):
            raise LabError(f"lab prefix must be 1-{_MAX_PREFIX} letters/digits: {self.prefix!r}")
        self.ipv6 = ipv6
        self.keep_workdir = os.environ.get("ESPGW_LAB_KEEP") == "1" if keep_workdir is None else keep_workdir
        self.workdir = WORK_BASE / self.prefix
        self._procs: list[subprocess.Popen] = []
        self._closers: list = []  # callables run (last first) before the processes are stopped
        self._created: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()  # forked helpers (pyroute2 forks) must not tear down

        def iface(net: str, addr: str):
            n = ipaddress.ip_network(net)
            return ipaddress.ip_interface(f"{addr}/{n.prefixlen}")

        six = (lambda net, addr: iface(net, addr)) if ipv6 else (lambda net, addr: None)
        ns = {role: f"{self.prefix}-{role}" for role in ROLES}
        self.gwA = Gateway("gwA", ns["gwA"], "lan0", iface(lan_a4, gw_a_lan4), six(lan_a6, gw_a_lan6),
                           "wan0", iface(wan4, gw_a_wan4), six(wan6, gw_a_wan6))
        self.gwB = Gateway("gwB", ns["gwB"], "lan0", iface(lan_b4, gw_b_lan4), six(lan_b6, gw_b_lan6),
                           "wan0", iface(wan4, gw_b_wan4), six(wan6, gw_b_wan6))
        self.hostA = Host("hostA", ns["hostA"], "eth0", iface(lan_a4, host_a4), six(lan_a6, host_a6),
                          self.gwA.lan4.ip, self.gwA.lan6.ip if self.gwA.lan6 else None)
        self.hostB = Host("hostB", ns["hostB"], "eth0", iface(lan_b4, host_b4), six(lan_b6, host_b6),
                          self.gwB.lan4.ip, self.gwB.lan6.ip if self.gwB.lan6 else None)
        _register(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- topology --------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        return [self.hostA.ns, self.gwA.ns, self.gwB.ns, self.hostB.ns]

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        for name in self.namespaces:
            if name in netns.listnetns():
                raise LabError(f"namespace {name} already exists (another lab with this prefix?)")
            netns.create(name)
            self._created.append(name)
            # before any interface exists, so every new one inherits them
            self._sysctl(name, "net.ipv6.conf.default.accept_dad", 0)
            self._sysctl(name, "net.ipv6.conf.all.accept_dad", 0)
            if not self.ipv6:
                self._sysctl(name, "net.ipv6.conf.default.disable_ipv6", 1)
                self._sysctl(name, "net.ipv6.conf.all.disable_ipv6", 1)
        self._veth(self.hostA.ns, self.hostA.iface, self.gwA.ns, self.gwA.lan_iface)
        self._veth(self.gwA.ns, self.gwA.wan_iface, self.gwB.ns, self.gwB.wan_iface)
        self._veth(self.gwB.ns, self.gwB.lan_iface, self.hostB.ns, self.hostB.iface)
        for host in (self.hostA, self.hostB):
            self._configure(host.ns, host.iface, [host.ip4, host.ip6],
                            defaults=[host.gateway4, host.gateway6])
        for gw in (self.gwA, self.gwB):
            self._configure(gw.ns, gw.lan_iface, [gw.lan4, gw.lan6])
            self._configure(gw.ns, gw.wan_iface, [gw.wan4, gw.wan6])
            self._sysctl(gw.ns, "net.ipv4.ip_forward", 1)
            if self.ipv6:
                self._sysctl(gw.ns, "net.ipv6.conf.all.forwarding", 1)
        log.info("lab.up", prefix=self.prefix, namespaces=self.namespaces, ipv6=self.ipv6)

    def _sysctl(self, ns: str, key: str, value: int) -> None:
        # /proc/sys/net belongs to the namespace of whoever opens it
        self.run(ns, "sysctl", "-qw", f"{key}={value}")

    @staticmethod
    def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        # made inside the namespace, so short fixed names never clash with the root namespace
        with NetNS(ns_a) as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})

    @staticmethod
    def _configure(ns: str, ifname: str, addrs: list, defaults: Sequence = ()) -> None:
        with NetNS(ns) as ipr:
            for lo in ipr.link_lookup(ifname="lo"):
                ipr.link("set", index=lo, state="up")
            index = ipr.link_lookup(ifname=ifname)[0]
            for addr in filter(None, addrs):
                flags = _IFA_F_NODAD if addr.version == 6 else 0
                ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen,
                         flags=flags)
            ipr.link("set", index=index, state="up")
            for gateway in filter(None, defaults):
                ipr.route("add", dst="default", gateway=str(gateway), family=10 if gateway.version == 6 else 2)

    @contextlib.contextmanager
    def plain_routing(self) -> Iterator[None]:
        """Route LAN A <-> LAN B in the clear over the public link (a no-IPsec baseline)."""
        pairs = [(self.gwA, self.gwB), (self.gwB, self.gwA)]
        routes: list[tuple[str, str, str | None, int]] = []
        for gw, peer in pairs:
            routes.append((gw.ns, str(peer.lan_net4), peer.wan_addr4, 2))
            if self.ipv6:
                routes.append((gw.ns, str(peer.lan_net6), peer.wan_addr6, 10))
        added = []
        try:
            for ns, dst, via, family in routes:
                with NetNS(ns) as ipr:
                    ipr.route("add", dst=dst, gateway=via, family=family)
                added.append((ns, dst, via, family))
            yield
        finally:
            for ns, dst, via, family in added:
                with contextlib.suppress(Exception), NetNS(ns) as ipr:
                    ipr.route("del", dst=dst, gateway=via, family=family)

    def untunnelled_reachable(self, ipv6: bool = False) -> bool:
        """True if hostA reaches hostB without any tunnel: a leak (the lab must never allow it)."""
        dst = self.hostB.addr6 if ipv6 else self.hostB.addr4
        if dst is None:
            raise LabError("this lab has no IPv6")
        return self.ping(self.hostA, dst, count=1, wait=1).received > 0

    # -- running programs ------------------------------------------------------------------

    def run(self, ns: str | Host | Gateway, *argv, check: bool = True, timeout: float = 30,
            input: str | bytes | None = None, text: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a program in a namespace and wait for it; failure raises CommandFailed if check."""
        name = _ns_name(ns)
        args = [str(a) for a in argv]
        if isinstance(input, bytes):
            text = False
        try:
            done = subprocess.run(["ip", "netns", "exec", name, *args], capture_output=True, text=text,
                                  timeout=timeout, input=input, env=env,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(name, args, None, _as_text(exc.stdout), _as_text(exc.stderr)) from None
        if check and done.returncode != 0:
            raise CommandFailed(name, args, done.returncode, _as_text(done.stdout), _as_text(done.stderr))
        return done

    def spawn(self, ns: str | Host | Gateway, *argv, **popen_kw) -> subprocess.Popen:
        """Start a program in a namespace; the lab stops it on close (SIGTERM, then SIGKILL)."""
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", _ns_name(ns), *map(str, argv)], **popen_kw)
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5, sig: int = signal.SIGTERM) -> int | None:
        """Stop one spawned process and wait for it; returns its exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        return proc.returncode

    def on_close(self, callback) -> None:
        """Run callback at close(), before the lab's processes are stopped (last added first)."""
        self._closers.append(callback)

    # -- traffic tools ---------------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self, ns: str | Host | Gateway, iface: str, path: str | Path,
                bpf: str | None = None, startup_timeout: float = 10) -> Iterator[Path]:
        """tcpdump into a pcap file while the block runs; capturing has started on entry."""
        path = Path(path)
        argv = ["tcpdump", "-U", "--immediate-mode", "-n", "-i", iface, "-w", str(path)] + ([bpf] if bpf else [])
        # -Z root: tcpdump would switch to user tcpdump, who may not write path
        argv[1:1] = ["-Z", "root"]
        proc = self.spawn(ns, *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_line(proc, proc.stderr, b"listening on", startup_timeout, "tcpdump")
            yield path
        finally:
            time.sleep(0.05)  # let the last packets of the block reach the socket
            self.stop(proc, sig=signal.SIGINT)

    def segment_on_send(self, ns: str | Host | Gateway, iface: str) -> None:
        """``iface`` cuts UDP GSO super-packets (espgw sends ESP-in-UDP batches so) into datagrams
        before they leave, as a NIC puts them on a wire. A veth otherwise hands the whole
        super-packet to its peer, and a capture there shows several datagrams as one frame, which
        tshark cannot decrypt."""
        with inside(_ns_name(ns)):
            ethtool = Ethtool()
            try:
                features = ethtool.get_features(iface)
                features.features["tx-udp-segmentation"].enable = False
                ethtool.set_features(iface, features)
            finally:
                ethtool.close()

    def set_loss(self, ns: str | Host | Gateway, iface: str, percent: float,
                 direction: str = "egress") -> None:
        """Drop percent% of packets leaving (egress) or entering (ingress) iface; 0 removes it.

        nftables ``numgen random`` (this kernel has no netem). Egress hooks postrouting, so it
        drops both forwarded and locally sent packets (e.g. the gateway's own ESP).
        """
        if direction not in ("egress", "ingress"):
            raise LabError(f"direction must be egress or ingress, not {direction!r}")
        if not 0 <= percent <= 100:
            raise LabError(f"loss percent must be 0..100, not {percent}")
        name = _ns_name(ns)
        chain = f"loss_{direction}_{iface}"
        hook, match = ("postrouting", "oifname") if direction == "egress" else ("prerouting", "iifname")
        script = [f"add table inet {_NFT_TABLE}",
                  f"add chain inet {_NFT_TABLE} {chain} {{ type filter hook {hook} priority 0; }}",
                  f"flush chain inet {_NFT_TABLE} {chain}"]
        if percent >= 100:
            script.append(f'add rule inet {_NFT_TABLE} {chain} {match} "{iface}" counter drop')
        elif percent > 0:
            script.append(f'add rule inet {_NFT_TABLE} {chain} {match} "{iface}" '
                          f"numgen random mod 10000 < {round(percent * 100)} counter drop")
        self.run(name, "nft", "-f", "-", input="\n".join(script) + "\n")

    def ping(self, src: str | Host | Gateway, dst: str, count: int = 3, interval: float = 0.2,
             wait: float = 2, size: int | None = None, source: str | None = None,
             timeout: float | None = None) -> PingResult:
        """ping from a namespace; never raises for lost replies (look at .ok / .received)."""
        argv = ["ping", "-n", "-c", count, "-i", interval, "-W", wait]
        if size is not None:
            argv += ["-s", size]
        if source:
            argv += ["-I", source]
        limit = timeout if timeout is not None else count * interval + wait + 10
        done = self.run(src, *argv, dst, check=False, timeout=limit)
        result = parse_ping(done.stdout)
        if result.transmitted == 0 and done.returncode not in (0, 1):
            raise CommandFailed(_ns_name(src), ["ping", dst], done.returncode, done.stdout, done.stderr)
        return result

    def iperf3(self, client: str | Host | Gateway, server: str | Host | Gateway, dst: str,
               seconds: float = 5, udp: bool = False, bitrate: str | None = None,
               reverse: bool = False, parallel: int = 1, port: int = 5201,
               extra: Sequence[str] = ()) -> dict:
        """One iperf3 run client -> server (dst = the server's address); returns iperf3's JSON."""
        server_proc = self.spawn(server, "iperf3", "-s", "-1", "--forceflush", "-p", port,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_for_line(server_proc, server_proc.stdout, b"Server listening", 10, "iperf3 server")
            argv = ["iperf3", "-c", dst, "-p", port, "-J", "-t", seconds, "-P", parallel, *extra]
            if udp:
                argv.append("-u")
            if bitrate:
                argv += ["-b", bitrate]
            if reverse:
                argv.append("-R")
            done = self.run(client, *argv, check=False, timeout=seconds + 30)
            try:
                result = json.loads(done.stdout)
            except json.JSONDecodeError:
                raise CommandFailed(_ns_name(client), [str(a) for a in argv], done.returncode, done.stdout,
                                    done.stderr) from None
            if "error" in result:
                raise LabError(f"iperf3: {result['error']}")
            return result
        finally:
            self.stop(server_proc, timeout=3)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete the namespaces and the work directory. Idempotent."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        errors = []
        for callback in reversed(self._closers):
            try:
                callback()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(repr(exc))
        for proc in list(self._procs):
            self.stop(proc, timeout=3)
        for name in self._created:
            try:
                _remove_namespace(name)
            except Exception as exc:
                errors.append(f"{name}: {exc!r}")
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _unregister(self)
        log.info("lab.down", prefix=self.prefix, errors=errors or None)
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, ipv6={self.ipv6})"


def _as_text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _wait_for_line(proc: subprocess.Popen, stream, marker: bytes, timeout: float, what: str) -> None:
    """Read stream until a line containing marker; fail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    seen = b""
    fd = stream.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LabError(f"{what} did not start within {timeout}s: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(2)
                raise LabError(f"{what} exited ({proc.returncode}): {seen.decode(errors='replace')}")
            seen += chunk


def _namespace_pids(name: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    return [int(p) for p in done.stdout.split()]


def _remove_namespace(name: str) -> None:
    """Kill what still runs in the namespace (it would keep it alive), then delete it."""
    if name not in netns.listnetns():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _namespace_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline and _namespace_pids(name):
            time.sleep(0.05)
    netns.remove(name)


def _owner_alive(prefix: str) -> bool:
    try:
        pid = int((WORK_BASE / prefix / "owner.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = "eg", force: bool = False) -> list[str]:
    """Remove namespaces (and work dirs) of labs whose prefix starts with ``prefix``.

    Only labs whose owning process is gone are touched, so a concurrent test run keeps its lab;
    ``force=True`` removes them regardless. Returns the removed namespace names.
    """
    removed = []
    stale_prefixes = set()
    for name in sorted(netns.listnetns()):
        match = _NS_NAME.match(name)
        if not match or not match.group("prefix").startswith(prefix):
            continue
        lab_prefix = match.group("prefix")
        if not force and _owner_alive(lab_prefix):
            continue
        _remove_namespace(name)
        removed.append(name)
        stale_prefixes.add(lab_prefix)
    if WORK_BASE.is_dir():
        for workdir in WORK_BASE.iterdir():
            if workdir.name.startswith(prefix) and (force or not _owner_alive(workdir.name)):
                stale_prefixes.add(workdir.name)
    for lab_prefix in stale_prefixes:
        shutil.rmtree(WORK_BASE / lab_prefix, ignore_errors=True)
    if removed:
        log.info("lab.cleanup_stale", removed=removed)
    return removed


# -- process-wide safety net: close open labs at exit and on SIGTERM ---------------------------

_open_labs: list[Lab] = []
_previous_sigterm = None
_handler_pid = 0


def _register(lab: Lab) -> None:
    global _previous_sigterm, _handler_pid
    _open_labs.append(lab)
    if len(_open_labs) == 1 and threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGTERM)
        if current in (signal.SIG_DFL, None):
            # default SIGTERM kills without unwinding; make it unwind so finally/__exit__ run
            _previous_sigterm, _handler_pid = current, os.getpid()
            signal.signal(signal.SIGTERM, _raise_system_exit)


def _unregister(lab: Lab) -> None:
    global _previous_sigterm
    if lab in _open_labs:
        _open_labs.remove(lab)
    if not _open_labs and _previous_sigterm is not None \
            and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None


def _raise_system_exit(signum, frame):
    if os.getpid() != _handler_pid:
        # a fork()ed child (pyroute2 forks to enter namespaces) inherited this handler: it
        # must die as SIGTERM's default would, not unwind the parent's copied stack
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()


# --- entering a namespace: a socket opened there, a device set up there ------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in network namespace ``ns`` (this thread only). A socket opened here stays
    in ``ns`` after the block: that is how one process serves clients of several namespaces."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())
