"""espgw gateways in the namespace lab: config files, ``espgw run`` processes, control queries.

``EspgwGateway`` runs one ``espgw run`` inside a lab gateway namespace from an
``ike.config.ConnectionConfig`` (e.g. ``tunnel.lab.configs.site_to_site``), rendered here as the
TOML ``tunnel.ops.config`` reads. The control socket is a Unix socket in the lab's work directory,
reachable from the caller's namespace, so status queries need no ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ike.config import ChildConfig, ConnectionConfig
from tunnel.ops.control import ControlError, control_request
from tunnel.lab.netns import Gateway, Lab, LabError
from tunnel.lab.lab_pki import write_swanctl_files
from tunnel.lab.swanctl_conf import pools_toml, ts_texts

ESPGW = [sys.executable, "-m", "tunnel.main"]


@dataclass
class GatewaySettings:
    """The ``[gateway]`` table of an espgw config (see ``tunnel.ops.config.GatewayConfig``)."""

    tun_name: str = "espgw0"
    mtu: int = 1400
    esp_encap: str = "raw"
    raw_esp_tx: str = "ring"
    log_level: str = "info"
    log_format: str = "json"
    queue_size: int = 64
    retransmit_timeout: float = 4.0  # strongSwan's schedule; lab tests shorten it to see a dead peer
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    keep_alive: float = 20.0  # NAT keepalives behind a NAT (tunnel.lab.nat tests shorten it)
    metrics: str = ""  # the Prometheus endpoint, "HOST:PORT" in the gateway's namespace; "" for none


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items) -> str:
    return _quote(", ".join(map(str, items)))


def _child_toml(conn: str, child: ChildConfig) -> list[str]:
    lines = [f"[connections.{conn}.children.{child.name}]",
             f"local_ts = {_list(ts_texts(child.local_ts, child.local_dynamic))}",
             f"remote_ts = {_list(ts_texts(child.remote_ts, child.remote_dynamic))}",
             f"esp_proposals = {_list(child.esp_proposals)}",
             f'start_action = "{child.start_action}"',
             f'dpd_action = "{child.dpd_action}"',
             f'close_action = "{child.close_action}"',
             f"rekey_time = {child.rekey_time}",
             f"rekey_packets = {child.rekey_packets}",
             f"rekey_bytes = {child.rekey_bytes}",
             f"replay_window = {child.replay_window}"]
    if child.life_time is not None:
        lines.append(f"life_time = {child.life_time}")
    if child.rand_time is not None:
        lines.append(f"rand_time = {child.rand_time}")
    return lines


def _auth_toml(conn: ConnectionConfig, side: str, pki_dir: Path | None, prefix: str) -> list[str]:
    """One side's table; certificate files go to ``pki_dir`` (the config file's folder) in
    swanctl's layout, named after ``prefix`` (the gateway), the connection and the side."""
    auth = conn.local if side == "local" else conn.remote
    lines = [f"[connections.{conn.name}.{side}]", f'auth = "{"rsa/pss" if auth.rsa_pss else auth.auth}"']
    if auth.id:
        lines.append(f"id = {_quote(auth.id)}")
    if auth.auth == "pubkey" and pki_dir is not None:
        for sub in ("x509", "x509ca", "x509crl", "private"):
            (pki_dir / sub).mkdir(parents=True, exist_ok=True)
        name = f"{prefix}-{conn.name}-{side}"
        for stale in (pki_dir / "x509crl").glob(f"{name}-*"):
            stale.unlink()
        cert, cacerts = write_swanctl_files(pki_dir, name, auth.credential if side == "local" else None,
                                            auth.trust if side == "remote" else None)
        if cert:
            lines.append(f"certs = {_list([pki_dir / 'x509' / cert])}")
            lines += [f"[secrets.private-{name}]", f"file = {_quote(str(pki_dir / 'private' / cert))}"]
        if cacerts:
            lines.append(f"cacerts = [{', '.join(_quote(str(pki_dir / 'x509ca' / c)) for c in cacerts)}]")
    return lines


def config_toml(conns: list[ConnectionConfig], settings: GatewaySettings, control_socket: str,
                pki_dir: Path | None = None, prefix: str = "espgw", pools: list | None = None) -> str:
    """An espgw TOML config for these connections; PSKs as hex in ``secrets.ike-NAME``."""
    lines = ["[gateway]", f"tun_name = {_quote(settings.tun_name)}", f"mtu = {settings.mtu}",
             f"control_socket = {_quote(control_socket)}",
             f"vici_socket = {_quote(control_socket + '.vici')}", f'esp_encap = "{settings.esp_encap}"',
             f'raw_esp_tx = "{settings.raw_esp_tx}"',
             f'log_level = "{settings.log_level}"', f'log_format = "{settings.log_format}"',
             f"queue_size = {settings.queue_size}", f"retransmit_timeout = {settings.retransmit_timeout}",
             f"retransmit_base = {settings.retransmit_base}", f"retransmit_tries = {settings.retransmit_tries}",
             f"keep_alive = {settings.keep_alive}",
             *([f"metrics = {_quote(settings.metrics)}"] if settings.metrics else []), ""]
    for conn in conns:
        lines += [f"[connections.{conn.name}]",
                  f"local_addrs = {_list(conn.local_addrs)}", f"remote_addrs = {_list(conn.remote_addrs)}",
                  f"proposals = {_list(conn.proposals)}", f"rekey_time = {conn.rekey_time}",
                  f"dpd_delay = {conn.dpd_delay}", f"encap = {'true' if conn.encap else 'false'}",
                  f"mobike = {'true' if conn.mobike else 'false'}",
                  *([f"over_time = {conn.over_time}"] if conn.over_time is not None else []),
                  *([f"vips = {_list(conn.vips)}"] if conn.vips else []),
                  *([f"pools = {_list(conn.pools)}"] if conn.pools else []),
                  *_auth_toml(conn, "remote", pki_dir, prefix), *_auth_toml(conn, "local", pki_dir, prefix)]
        for child in conn.children:
            lines += _child_toml(conn.name, child)
        if "psk" in (conn.local.auth, conn.remote.auth):
            lines += [f"[secrets.ike-{conn.name}]", f"id = {_quote(conn.remote.id or '')}",
                      f'secret = "0x{conn.psk.hex()}"', ""]
    return "\n".join(lines + pools_toml(pools or []))


@dataclass
class EspgwGateway:
    """One ``espgw run`` in a lab gateway namespace. ``start()``, ``kill()``, ``restart()``, queries."""

    lab: Lab
    node: Gateway
    conns: list[ConnectionConfig]
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    name: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    pools: list = field(default_factory=list)  # ike.pools.AddressPool: [pools.NAME] tables

    def __post_init__(self) -> None:
        self.name = self.name or self.node.role
        self.socket = str(self.lab.workdir / f"{self.name}.sock")
        self.config_path = self.lab.workdir / f"{self.name}.toml"
        self.log_path = self.lab.workdir / f"{self.name}.log"

    def start(self, timeout: float = 10.0) -> EspgwGateway:
        """Write the config, start the daemon and wait until its control socket answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise LabError(f"espgw on {self.name} is already running")
        self.config_path.write_text(config_toml(self.conns, self.settings, self.socket,
                                                self.config_path.parent, self.name, self.pools))
        os.chmod(self.config_path, 0o600)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # a killed daemon leaves its socket behind
        log = open(self.log_path, "ab")
        try:
            self.proc = self.lab.spawn(self.node, *ESPGW, "run", "-c", self.config_path,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=_repo_root())
        finally:
            log.close()
        wait_until(lambda: self._answers(), timeout, f"espgw on {self.name} to answer on {self.socket}",
                   on_timeout=self.log_tail)
        return self

    def _answers(self) -> bool:
        if self.proc is None:
            raise LabError(f"espgw on {self.name} is not running")
        if self.proc.poll() is not None:
            raise LabError(f"espgw on {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            control_request(self.socket, {"cmd": "status"}, timeout=1.0)
            return True
        except ControlError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        code = self.lab.stop(self.proc, timeout=5, sig=sig)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no deletes reach the peer, nothing is cleaned up (the TUN goes with the fd)."""
        self.stop(signal.SIGKILL)

    def restart(self) -> EspgwGateway:
        self.stop()
        return self.start()

    def request(self, cmd: str, **fields: Any) -> Any:
        return control_request(self.socket, {"cmd": cmd, **fields}, timeout=5.0)

    def status(self) -> dict:
        return self.request("status")

    def ike_sas(self) -> list[dict]:
        return self.request("list-sas")["ike_sas"]

    def children(self) -> list[dict]:
        """Installed CHILD SAs, over all IKE SAs."""
        return [c for sa in self.ike_sas() for c in sa.get("children", []) if c.get("state") == "INSTALLED"]

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """``espgw ARGV --socket THIS`` as a user would type it (from the caller's namespace)."""
        done = subprocess.run([*ESPGW, *argv, "--socket", self.socket], capture_output=True, text=True,
                              timeout=30, cwd=_repo_root())
        if check and done.returncode != 0:
            raise LabError(f"espgw {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
               on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll until predicate() is truthy; return its value, or raise LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise LabError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])



def tcp_transfer(lab: Lab, client, server, dst: str, size: int, *, port: int = 5001, seed: int = 1,
                 timeout: float = 120) -> tuple[str, str]:
    """Send ``size`` bytes client -> server (dst = the server's address) over TCP; returns
    (what the client sent, what the server received), each 'BYTES SHA256'."""
    bind = "::" if ":" in dst else "0.0.0.0"
    sink = lab.spawn(server, sys.executable, "-m", "tunnel.lab.espgw", "sink", bind, port,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=_repo_root())
    try:
        assert sink.stdout is not None  # stdout=PIPE
        if sink.stdout.readline().strip() != b"listening":
            raise LabError("TCP sink did not start")
        sent = lab.run(client, sys.executable, "-m", "tunnel.lab.espgw", "source", dst, port, size, seed,
                       timeout=timeout).stdout.strip()
        received = sink.communicate(timeout=30)[0].decode().strip()
        return sent, received
    finally:
        lab.stop(sink, timeout=2)


# --- a TCP transfer with checksums, run in the host namespaces: python -m tunnel.lab.espgw ----------
def tcp_sink(bind: str, port: int) -> None:
    """Accept one connection, read to EOF, print 'BYTES SHA256'."""
    import hashlib
    import socket

    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((bind, port))
        server.listen(1)
        print("listening", flush=True)
        conn, _ = server.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


def _source(host: str, port: int, size: int, seed: int) -> None:
    """Send ``size`` pseudo-random bytes, print 'BYTES SHA256' of what was sent."""
    import hashlib
    import random
    import socket

    data = random.Random(seed).randbytes(size)
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(data)
    print(size, hashlib.sha256(data).hexdigest(), flush=True)


__all__ = ["EspgwGateway", "GatewaySettings", "config_toml", "tcp_transfer", "wait_until"]

if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:
        tcp_sink(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["source"]:
        _source(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m tunnel.lab.espgw sink BIND PORT | source HOST PORT BYTES SEED")
