"""What goes wrong when the daemon starts, said so an operator can fix it.

``Gateway.open()`` binds UDP 500/4500, opens raw ESP sockets, creates the TUN device, installs
routes and listens on the control socket; the kernel answers a failure with a bare errno
("[Errno 98] Address already in use"). :func:`diagnose` turns that into a :class:`StartupProblem`
naming the resource (which address and port, and which process holds it where /proc tells; which
interface; which capability) and the fix. It finds the resource from the frame that raised: the
kernel wrappers keep their arguments in their locals, so ``open()`` needs no bookkeeping.

:func:`check_forwarding` reads (or, when ``[gateway] ip_forward = true`` asks, sets) IP forwarding
for the address families the connections' selectors use, in the daemon's own network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from ike.config import ConnectionConfig
from tunnel.ops.config import Config, split_host_port
from tunnel.ops.control import ControlError

log = structlog.get_logger("espgw")

# capability numbers (linux/capability.h) and what the daemon needs each for
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW = 10, 12, 13
CAPABILITIES = {
    CAP_NET_ADMIN: ("CAP_NET_ADMIN", "to create the TUN device and install routes"),
    CAP_NET_RAW: ("CAP_NET_RAW", "to open raw ESP sockets (IP protocol 50)"),
    CAP_NET_BIND_SERVICE: ("CAP_NET_BIND_SERVICE", "to bind UDP ports below 1024 (IKE's 500)"),
}
CAP_FIX = ("run espgw as root, or with these capabilities (the systemd unit's AmbientCapabilities, "
           "see README: Running as a service; or `setpriv --ambient-caps +net_admin,+net_raw,+net_bind_service`)")

PROC = Path("/proc")
SYS_CLASS_NET = Path("/sys/class/net")
FORWARDING_SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


@dataclass
class StartupProblem:
    """Why the daemon could not start: ``message`` names the resource, ``fix`` says what to do."""

    resource: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


# ----------------------------------------------------------------------------- diagnosis


def diagnose(exc: BaseException, config: Config, proc: Path = PROC) -> StartupProblem:
    """Explain a failure of ``Gateway.open()``; anything not recognised keeps its own text."""
    if isinstance(exc, ControlError):
        return _control_socket(str(exc), config)
    frames = {frame.f_code.co_qualname: frame.f_locals for frame, _ in traceback.walk_tb(exc.__traceback__)}
    code = getattr(exc, "errno", None)
    if "UdpEndpoint.__init__" in frames:
        where = frames["UdpEndpoint.__init__"]
        return _udp_bind(code, str(where.get("local_addr")), int(where.get("port") or 0), config, proc)
    if "MetricsServer.__init__" in frames:
        return _metrics_bind(code, config, proc)
    if "RawEspSocket.__init__" in frames:
        return _raw_socket(code, str(frames["RawEspSocket.__init__"].get("local_addr")), config, proc)
    if "TunDevice.create" in frames:
        return _tun(code, str(frames["TunDevice.create"].get("name")), str(exc), proc)
    if any(name.startswith("RouteTable.") for name in frames):
        if code in (errno.EPERM, errno.EACCES):
            return _capabilities("routes", f"cannot install routes into {config.gateway.tun_name}", proc)
        return StartupProblem("routes", f"cannot install routes into {config.gateway.tun_name}: {exc}",
                              "check that no other route for the children's remote_ts conflicts (`ip route`)")
    if code in (errno.EPERM, errno.EACCES):
        return _capabilities("privileges", f"permission denied: {_strerror(exc)}", proc)
    if isinstance(exc, ValueError):  # ipaddress on a local_addrs entry the daemon cannot bind
        return StartupProblem("local_addrs", f"cannot bind IKE and ESP sockets: {exc}",
                              "the daemon binds local_addrs itself: give this host's IP addresses (or %any), "
                              "not host names or ranges")
    return StartupProblem("gateway", f"cannot start: {_strerror(exc)}", "")


def _strerror(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _udp_bind(code: int | None, addr: str, port: int, config: Config, proc: Path) -> StartupProblem:
    where = f"UDP {_endpoint(addr, port)}"
    if code == errno.EADDRINUSE:
        owners = port_owners("udp", addr, port, proc)
        by = f" by {', '.join(owners)}" if owners else ""
        hint = (" (strongSwan's charon: stop it, e.g. `systemctl stop strongswan`)"
                if any("charon" in owner for owner in owners) else "")
        return StartupProblem(where, f"{where} is already in use{by}",
                              f"stop that process{hint}, or give this gateway other local_addrs/local_port")
    if code in (errno.EACCES, errno.EPERM):
        return _capabilities(where, f"cannot bind {where}", proc, wanted=[CAP_NET_BIND_SERVICE])
    if code == errno.EADDRNOTAVAIL:
        return _not_local(addr, config)
    return StartupProblem(where, f"cannot bind {where}: {os.strerror(code) if code else 'failed'}", "")


def _metrics_bind(code: int | None, config: Config, proc: Path) -> StartupProblem:
    address = config.gateway.metrics
    where = f"metrics endpoint {address}"
    if code == errno.EADDRINUSE:
        host, port = split_host_port(address)
        owners = port_owners("tcp", host, port, proc)
        by = f" by {', '.join(owners)}" if owners else ""
        return StartupProblem(where, f"TCP {address} of the {where} is already in use{by}",
                              "choose another [gateway] metrics address or port")
    if code == errno.EADDRNOTAVAIL:
        return StartupProblem(where, f"the address of the {where} is not assigned to any interface here",
                              "use one of this host's addresses, e.g. 127.0.0.1")
    if code in (errno.EACCES, errno.EPERM):
        return _capabilities(where, f"cannot listen at the {where}", proc, wanted=[CAP_NET_BIND_SERVICE])
    return StartupProblem(where, f"cannot listen at the {where}: {os.strerror(code) if code else 'failed'}", "")


def _raw_socket(code: int | None, addr: str, config: Config, proc: Path) -> StartupProblem:
    where = f"raw ESP socket on {addr}"
    if code in (errno.EPERM, errno.EACCES):
        return _capabilities(where, f"cannot open a {where}", proc, wanted=[CAP_NET_RAW])
    if code == errno.EADDRNOTAVAIL:
        return _not_local(addr, config)
    return StartupProblem(where, f"cannot open a {where}: {os.strerror(code) if code else 'failed'}", "")


def _not_local(addr: str, config: Config) -> StartupProblem:
    users = [f"connections.{c.name}.local_addrs" for c in config.connections if addr in c.local_addrs]
    named = f" ({', '.join(users)})" if users else ""
    return StartupProblem(f"address {addr}", f"address {addr}{named} is not assigned to any interface "
                          "in this network namespace",
                          f"add it (`ip address add {addr}/... dev ...`) or correct local_addrs")


def _tun(code: int | None, name: str, text: str, proc: Path) -> StartupProblem:
    where = f"TUN interface {name!r}"
    fix_name = "choose another [gateway] tun_name"
    if code == errno.ENOENT and "/dev/net/tun" in text:
        return StartupProblem("/dev/net/tun", "/dev/net/tun does not exist",
                              "load the tun module (`modprobe tun`); in a container, pass the device in")
    if code in (errno.EPERM, errno.EACCES):
        return _capabilities(where, f"cannot create {where}", proc, wanted=[CAP_NET_ADMIN])
    if code == errno.EBUSY:
        return StartupProblem(where, f"{where} exists and another process holds it (another espgw?)", fix_name)
    kind = interface_kind(name)
    if kind is not None and kind != "tun":
        return StartupProblem(where, f"an interface named {name!r} exists and is not a TUN device ({kind})",
                              f"{fix_name}, or remove it (`ip link delete {name}`) if it is left over")
    if code == errno.EINVAL:
        return StartupProblem(where, f"the kernel refused {where}: {text}",
                              f"{fix_name} (1-15 letters, digits, '_', '.', '-'; no existing non-TUN interface)")
    return StartupProblem(where, text, "")


def interface_kind(name: str, sys_class_net: Path = SYS_CLASS_NET) -> str | None:
    """None if no interface has that name, "tun" for a TUN device, else a short description."""
    device = sys_class_net / name
    if not device.exists():
        return None
    if (device / "tun_flags").exists():
        return "tun"
    try:
        uevent = (device / "uevent").read_text()
    except OSError:
        uevent = ""
    for line in uevent.splitlines():
        if line.startswith("DEVTYPE="):
            return line.split("=", 1)[1]
    return "a network interface"


def _control_socket(text: str, config: Config) -> StartupProblem:
    """The control socket's or the vici socket's (both are unix sockets bound the same way)."""
    vici = config.gateway.vici_socket
    if vici and vici in text and config.gateway.control_socket not in text:
        name, setting = "vici socket", '[gateway] vici_socket (or "" for none)'
        path = vici
    else:
        name, setting = "control socket", "[gateway] control_socket (or --socket)"
        path = config.gateway.control_socket
    if "already listening" in text:
        fix = f"stop the other daemon listening there (strongSwan's charon, or another espgw), or set {setting}"
    elif "Permission denied" in text or "Read-only" in text:
        fix = f"run as root, or set {setting} to a path in a writable directory (the service: /run/espgw/)"
    else:
        fix = f"set {setting} to another path"
    return StartupProblem(f"{name} {path}", f"{name}: {text}", fix)


# ----------------------------------------------------------------------------- capabilities


def effective_capabilities(proc: Path = PROC) -> int | None:
    """The CapEff bit mask of this process, or None where /proc does not tell."""
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def missing_capabilities(wanted: Iterable[int] = CAPABILITIES, proc: Path = PROC) -> list[int]:
    caps = effective_capabilities(proc)
    if caps is None:
        return []
    return [cap for cap in wanted if not caps >> cap & 1]


def _capabilities(resource: str, message: str, proc: Path, wanted: list[int] | None = None) -> StartupProblem:
    # name every capability the daemon lacks, not only the one this step tripped over: the
    # operator fixes them in one go
    missing = missing_capabilities(CAPABILITIES, proc)
    if wanted and not set(wanted) & set(missing):
        missing = list(wanted) + missing  # /proc did not tell, or a security module refused
    if not missing:
        return StartupProblem(resource, f"{message}: permission denied",
                              "a security module (AppArmor, SELinux, seccomp) or the container refuses it")
    names = "; ".join(f"{CAPABILITIES[cap][0]} {CAPABILITIES[cap][1]}" for cap in missing)
    return StartupProblem(resource, f"{message}: missing capability: {names}", CAP_FIX)


# ----------------------------------------------------------------------------- /proc/net/udp


def port_owners(protocol: str, addr: str, port: int, proc: Path = PROC) -> list[str]:
    """"NAME (pid N)" of each process holding a ``protocol`` ("udp" or "tcp": listening) socket
    that conflicts with binding ``addr``:``port`` (same port, same address or a wildcard on either
    side), from /proc/net/{udp,udp6,tcp,tcp6} and /proc/*/fd (other users' need root to see)."""
    inodes = set()
    for table in (protocol, protocol + "6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                bound, bound_port = _decode_proc_address(fields[1])
            except ValueError:
                continue
            listening = protocol == "udp" or fields[3] == "0A"  # TCP_LISTEN
            if bound_port == port and listening and _conflicts(addr, bound) and fields[9] != "0":
                inodes.add(fields[9])
    return _socket_owners(inodes, proc) if inodes else []


def _decode_proc_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:01F4`` (IPv4) or 32 hex digits (IPv6), both in host byte order per 32-bit word."""
    hex_addr, hex_port = text.split(":")
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(hex_port, 16)


def _conflicts(wanted: str, bound: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        ours = ipaddress.ip_address(wanted)
    except ValueError:
        return True
    if isinstance(bound, ipaddress.IPv6Address) and bound.ipv4_mapped is not None:
        bound = bound.ipv4_mapped
    if ours.version != bound.version:
        return False
    return ours == bound or ours.is_unspecified or bound.is_unspecified


def _socket_owners(inodes: set[str], proc: Path) -> list[str]:
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone, or another user's and we are not root
            continue
        if any(_readlink(fd) in targets for fd in fds):
            try:
                name = (pid_dir / "comm").read_text().strip()
            except OSError:
                name = "?"
            owners.append(f"{name} (pid {pid_dir.name})")
    return sorted(owners)


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile (the listing's own descriptor is one)
        return ""


# ----------------------------------------------------------------------------- forwarding


def forwarding_families(connections: Iterable[ConnectionConfig], own: set[str]) -> set[int]:
    """The IP versions whose traffic the gateway forwards: those of children whose local_ts
    covers more than this host's own address (a gateway protecting only itself forwards nothing)."""
    families = set()
    for conn in connections:
        for child in conn.children:
            for ts in child.local_ts:
                if ts.start_addr != ts.end_addr or str(ts.start_addr) not in own:
                    families.add(ts.version)
    return families


def check_forwarding(config: Config, own_addresses: Iterable[str] = (), proc: Path = PROC) -> list[str]:
    """Log a warning for each forwarding sysctl that is off but needed (``ip_forward`` unset),
    or switch it on (``ip_forward = true``); returns the sysctls found off. ``ip_forward = false``
    skips the check. /proc/sys/net is the network namespace of the process that reads it."""
    wanted = config.gateway.ip_forward
    if wanted is False:
        return []
    off = []
    for version in sorted(forwarding_families(config.connections, set(own_addresses))):
        sysctl = FORWARDING_SYSCTLS[version]
        path = proc / "sys" / sysctl.replace(".", "/")
        try:
            value = path.read_text().strip()
        except OSError:
            continue  # IPv6 disabled in this kernel: no such family to forward
        if value != "0":
            continue
        off.append(sysctl)
        if wanted:
            try:
                path.write_text("1\n")
                log.info("forwarding.enabled", sysctl=sysctl)
                continue
            except OSError as exc:
                log.warning("forwarding.off", sysctl=sysctl, error=f"cannot enable it: {exc.strerror}",
                            fix=f"run `sysctl -w {sysctl}=1` as root (CAP_NET_ADMIN in this namespace)")
                continue
        log.warning("forwarding.off", sysctl=sysctl,
                    error=f"{sysctl} = 0: packets between the tunnel and the local subnets are dropped",
                    fix=f"`sysctl -w {sysctl}=1` (persist it in /etc/sysctl.d/), or [gateway] ip_forward = true")
    return off
