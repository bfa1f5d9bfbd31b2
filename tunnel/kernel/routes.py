"""Routes for the remote subnets into the TUN, and cleanup that survives SIGTERM and Ctrl-C.

``RouteTable`` remembers every route it added so ``remove_all`` can take exactly those away
again. ``CleanupOnSignal`` runs registered cleanups once: on normal exit (atexit), on SIGTERM and
on SIGINT, then lets the signal take its usual course (SystemExit / KeyboardInterrupt).
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["RouteTable", "RouteError", "CleanupOnSignal"]

log = structlog.get_logger(__name__)

_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)  # route or link already gone: nothing to undo


class RouteError(OSError):
    """A route could not be added or removed."""


class RouteTable:
    """Routes via one interface (by name), tracked so they can all be removed again."""

    def __init__(self, ifname: str, *, metric: int = 0) -> None:
        self.ifname = ifname
        self.metric = metric
        self._routes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str | None] = {}

    @property
    def routes(self) -> list[str]:
        return [str(net) for net in self._routes]

    def _ifindex(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise RouteError(errno.ENODEV, f"no interface {self.ifname!r}")
        return found[0]

    def _request(self, ipr: IPRoute, command: str, net, src: str | None, ifindex: int) -> None:
        spec = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                "family": 10 if net.version == 6 else 2}
        spec["oif"] = ifindex
        spec["scope"] = 253  # link: the remote subnet is reached directly through the device, as `ip route ... dev`
        if self.metric:
            spec["priority"] = self.metric
        if src is not None:
            spec["prefsrc"] = src
        ipr.route(command, **spec)

    def add(self, subnet: str, *, src: str | None = None) -> None:
        """Route ``subnet`` (CIDR, v4 or v6) into the interface; ``src`` sets the preferred source."""
        net = ipaddress.ip_network(subnet, strict=False)
        if net in self._routes:
            return
        try:
            with IPRoute() as ipr:
                self._request(ipr, "add", net, src, self._ifindex(ipr))
        except NetlinkError as exc:
            raise RouteError(exc.code, f"cannot add route {net} via {self.ifname}: {exc}") from None
        self._routes[net] = src
        log.info("route.added", dst=str(net), ifname=self.ifname)

    def remove(self, subnet: str) -> bool:
        """Remove one route this table added; False if it was not ours. A vanished route is fine."""
        net = ipaddress.ip_network(subnet, strict=False)
        if net not in self._routes:
            return False
        src = self._routes.pop(net)
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.ifname)
                if found:
                    self._request(ipr, "del", net, src, found[0])
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise RouteError(exc.code, f"cannot remove route {net}: {exc}") from None
        log.info("route.removed", dst=str(net), ifname=self.ifname)
        return True

    def remove_all(self) -> None:
        """Remove every route this table added; idempotent, keeps going past individual failures."""
        failures = []
        for net in list(self._routes):
            try:
                self.remove(str(net))
            except RouteError as exc:
                failures.append(str(exc))
        if failures:
            raise RouteError(errno.EIO, "; ".join(failures))


class CleanupOnSignal:
    """Run cleanup callables exactly once: at exit, on SIGTERM and on SIGINT.

    Use as a context manager (or ``install()``/``restore()``) in the main thread. Cleanups run
    newest first; an exception in one is logged and the rest still run. After the cleanups the
    signal's previous handler runs, or SIGTERM raises SystemExit(143) so ``finally`` blocks and
    atexit handlers still run.
    """

    def __init__(self, *cleanups: Callable[[], object]) -> None:
        self._cleanups: list[Callable[[], object]] = list(cleanups)
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._lock = threading.Lock()
        self._done = False

    def add(self, cleanup: Callable[[], object]) -> None:
        self._cleanups.append(cleanup)

    def run(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:  # cleanup must go on; the error is reported, not lost
                log.error("cleanup.failed", cleanup=getattr(cleanup, "__qualname__", repr(cleanup)), error=str(exc))

    def _on_signal(self, signum: int, frame) -> None:
        self.run()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def install(self) -> CleanupOnSignal:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        atexit.register(self.run)
        return self

    def restore(self) -> None:
        """Run the cleanups (if not yet run) and put the previous signal handlers back."""
        self.run()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        atexit.unregister(self.run)

    def __enter__(self) -> CleanupOnSignal:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.restore()
