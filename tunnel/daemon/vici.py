"""The daemon's vici commands: what swanctl and the ``vici`` package ask of charon, answered by espgw.

:class:`ViciDaemon` owns the vici socket (``tunnel.ops.vici.server``) and what vici clients loaded
(``tunnel.ops.vici.swanctl_conf.ViciConfig``), and turns commands into the gateway's operations:
``load-conn`` / ``unload-conn`` are ``Gateway.apply_connection`` / ``remove_connection`` (the
same operation a configuration reload uses), the listings come from ``tunnel.daemon.status`` so
``swanctl --list-sas`` and ``espgw list-sas`` show the same SAs. ``initiate`` and ``terminate``
answer when IKE reports the outcome (or at their ``timeout``), streaming ``control-log`` events
meanwhile; IKE's events also go out as ``ike-updown``, ``child-updown``, ``ike-rekey``,
``child-rekey`` and ``log`` to the clients registered for them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import selectors
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from ike.config import ConnectionConfig
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed
from ike.tasks.states import IkeState
from tunnel.daemon import status
from tunnel.daemon.vici_messages import connection, duration, ike_sa, log_message
from tunnel.ops.vici.codec import EncodableMessage, Message
from tunnel.ops.vici.credstore import ViciCredentials
from tunnel.ops.vici.server import ViciServer
from tunnel.ops.vici.session import CommandRequest, ViciSession
from tunnel.ops.vici.swanctl_conf import ViciConfig, ViciConfigError

log = structlog.get_logger("espgw.vici")

EVENTS = ("list-sa", "list-conn", "list-cert", "list-authority", "control-log", "log", "ike-updown",
          "child-updown", "ike-rekey", "child-rekey")
NO_CERTS = "load-token: smartcards are not supported"
OK: EncodableMessage = {"success": True}
STREAM_BATCH = 256 * 1024  # bytes of list-sa events buffered per client before waiting for it to read


def _failed(errmsg: str) -> EncodableMessage:
    return {"success": False, "errmsg": errmsg}


class Gateway(status.Gateway, Protocol):
    """What the commands use of ``tunnel.daemon.gateway.Gateway``."""

    clock: Callable[[], float]
    routed: dict[tuple, Any]

    def pump(self, now: float) -> None: ...

    def apply_connection(self, conn: ConnectionConfig, now: float) -> str: ...

    def remove_connection(self, name: str, now: float) -> ConnectionConfig: ...

    def sync_pool_routes(self) -> None: ...


@dataclass
class _Waiter:
    """An initiate or terminate waiting for IKE to report its outcome."""

    session: ViciSession
    command: str  # "initiate" | "terminate"
    connection: str
    child: str | None
    deadline: float | None
    loglevel: int
    ike_ids: set[int] = field(default_factory=set)  # terminate: the IKE SAs still to go


class ViciDaemon:
    def __init__(self, gateway: Gateway, path: str, selector: selectors.BaseSelector):
        self.gw = gateway
        self.creds = ViciCredentials()  # certificates, keys and authorities from load-cert/-key/-authority
        self.loaded = ViciConfig(self.creds)  # pubkey connections take their key and CAs from it when loaded
        self.waiters: list[_Waiter] = []
        self.started_wall = time.time()
        self.handlers: dict[str, Callable[[Message], EncodableMessage]] = {
            "version": self._version, "stats": self._stats, "reload-settings": lambda _m: OK,
            "get-conns": self._get_conns,
            "load-conn": self._load_conn, "unload-conn": self._unload_conn,
            "load-shared": self._load_shared, "unload-shared": self._unload_shared,
            "get-shared": lambda _m: {"keys": self.loaded.get_shared()["keys"]}, "clear-creds": self._clear_creds,
            "get-keys": lambda _m: {"keys": list(self.creds.keys)},
            "get-authorities": lambda _m: {"authorities": list(self.creds.authorities)},
            "list-certs": lambda _m: {}, "list-authorities": lambda _m: {},
            "load-key": self._load_key, "unload-key": self._creds_call(self.creds.unload_key),
            "load-cert": self._creds_call(self.creds.load_cert), "load-token": self._no_certs,
            "load-authority": self._creds_call(self.creds.load_authority),
            "unload-authority": self._creds_call(self.creds.unload_authority),
            "get-pools": self._get_pools, "load-pool": self._load_pool, "unload-pool": self._unload_pool,
            "get-algorithms": lambda _m: {}, "get-counters": lambda _m: {"success": True, "counters": {}},
            "rekey": self._rekey,
        }
        self.streaming = {"list-sas": self._list_sas, "list-conns": self._list_conns}  # events, then the answer
        self.waiting = {"initiate": self._initiate, "terminate": self._terminate}  # answered when IKE is done
        self.server = ViciServer(path, self._dispatch, commands=[*self.handlers, *self.streaming, *self.waiting],
                                 events=EVENTS, selector=selector)

    def close(self) -> None:
        self.server.close()

    def _dispatch(self, session: ViciSession, request: CommandRequest) -> None:
        handler = self.handlers.get(request.command)
        if handler is not None:
            session.respond(handler(request.message))
        elif request.command in self.streaming:
            answer = self.streaming[request.command](request.message, session)
            if answer is not None:
                session.respond(answer)
        else:
            self.waiting[request.command](session, request.message)

    # --- information -------------------------------------------------------------------------
    def _version(self, _message: Message) -> EncodableMessage:
        uname = os.uname()
        return {"daemon": "espgw", "version": _version(), "sysname": uname.sysname,
                "release": uname.release, "machine": uname.machine}

    def _stats(self, _message: Message) -> EncodableMessage:
        now = self.gw.clock()
        since = datetime.datetime.fromtimestamp(self.started_wall).strftime("%b %d %H:%M:%S %Y")
        sas = list(self.gw.ike.statuses())
        return {
            "uptime": {"running": duration(now - self.gw.started), "since": since},
            # espgw is one thread: no worker pool or job queues to report
            "workers": {"total": 1, "idle": 0, "active": {"critical": 0, "high": 0, "medium": 1, "low": 0}},
            "queues": {"critical": 0, "high": 0, "medium": 0, "low": 0},
            "scheduled": 0,
            "ikesas": {"total": len(sas), "half-open": self.gw.ike.half_open_count()},
            "plugins": [],
        }

    def _list_sas(self, message: Message, session: ViciSession) -> EncodableMessage | None:
        """One list-sa event per IKE SA, a batch at a time as the client reads (a gateway with
        thousands of SAs would otherwise overflow the client's output limit), then ``{}``."""
        ike, ike_id, child = _text(message, "ike"), _text(message, "ike-id"), _text(message, "child")
        pending = iter(list(self.gw.ike.sas.values()))  # the SAs now; one that is gone by its turn is left out

        def emit_batch() -> None:
            now = self.gw.clock()
            while not session.closed and session.pending_size() < STREAM_BATCH:
                sa = next(pending, None)
                if sa is None:
                    session.respond({})
                    return
                if sa.state == IkeState.DEAD or (ike and sa.name != ike) or (ike_id and str(sa.unique_id) != ike_id):
                    continue
                described = status.describe_ike(self.gw, sa.status(), now)
                if child:
                    described["children"] = [c for c in described["children"] if c["name"] == child]
                session.emit_event("list-sa", {str(described["name"]): ike_sa(described)})
            self.server.when_drained(session, emit_batch)

        emit_batch()
        return None

    def _list_conns(self, message: Message, session: ViciSession) -> EncodableMessage | None:
        ike = _text(message, "ike")
        for conn in self.gw.config.connections:
            if not ike or conn.name == ike:
                session.emit_event("list-conn", {conn.name: connection(conn)})
        return {}

    def _get_conns(self, _message: Message) -> EncodableMessage:
        return {"conns": self.loaded.get_conns()["conns"]}  # only vici's: swanctl unloads the ones its file lacks

    # --- configuration -----------------------------------------------------------------------
    def _load_conn(self, message: Message) -> EncodableMessage:
        from_file = {c.name for c in self.gw.config.connections} - {c.name for c in self.loaded.connections()}
        clash = self._clash_with_file(message, from_file)
        if clash:
            return _failed(clash)
        name = next(iter(message), "")
        try:
            conn = self.loaded.load_conn(message)
        except ViciConfigError as exc:
            log.warning("vici.load_conn_refused", connection=name[:64], error=exc.errmsg[:500])
            return _failed(exc.errmsg)
        self.gw.apply_connection(conn, self.gw.clock())  # an unchanged connection keeps its SAs
        return OK

    def _clash_with_file(self, message: Message, from_file: set[str]) -> str | None:
        for name, section in message.items():
            if name in from_file:
                return f"load-conn: connection {name!r} is defined in espgw's configuration file"
            children = section.get("children") if isinstance(section, dict) else None
            for child in children if isinstance(children, dict) else {}:
                for conn in self.gw.config.connections:
                    if conn.name in from_file and any(c.name == child for c in conn.children):
                        return (f"connections.{name}.children.{child}: child name already used in connection "
                                f"{conn.name!r} of espgw's configuration file; child names must be unique")
        return None

    def _unload_conn(self, message: Message) -> EncodableMessage:
        try:
            conn = self.loaded.unload_conn(message)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        self._end_waiters(conn.name, "connection unloaded")
        self.gw.remove_connection(conn.name, self.gw.clock())
        return OK

    def _load_shared(self, message: Message) -> EncodableMessage:
        try:
            self.loaded.load_shared(message)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        return OK

    def _unload_shared(self, message: Message) -> EncodableMessage:
        try:
            self.loaded.unload_shared(message)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        return OK

    def _clear_creds(self, _message: Message) -> EncodableMessage:
        self.loaded.clear_shared()  # connections keep the PSK, key and CAs they were loaded with
        self.creds.clear()
        return OK

    def _no_certs(self, _message: Message) -> EncodableMessage:
        return _failed(NO_CERTS)

    def _load_key(self, message: Message) -> EncodableMessage:
        try:
            ident = self.creds.load_key(message)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        return {"success": True, "id": ident}

    @staticmethod
    def _creds_call(apply: Callable[[Message], None]) -> Callable[[Message], EncodableMessage]:
        def handle(message: Message) -> EncodableMessage:
            try:
                apply(message)
            except ViciConfigError as exc:
                return _failed(exc.errmsg)
            return OK
        return handle

    # --- virtual IP pools: validated by ViciConfig, lent from by the IKE endpoint -------------------
    def _load_pool(self, message: Message) -> EncodableMessage:
        from_file = {pool.name for pool in self.gw.config.pools}
        clash = sorted(from_file & set(message))
        if clash:
            return _failed(f"load-pool: pool {clash[0]!r} is defined in espgw's configuration file")
        for name in message:  # as charon: a pool lending addresses is only replaced by the same range
            held = self.gw.ike.pools.get(name)
            section = message[name]
            addrs = section.get("addrs") if isinstance(section, dict) else None
            if held is not None and held.status()["online"] and addrs != held.addrs.encode():
                return _failed(f"load-pool: pool {name!r} has online leases, unable to replace")
        try:
            pools = self.loaded.load_pool(message, self.gw.config.pools)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        for pool in pools:
            held = self.gw.ike.pools.get(pool.name)
            if held is not None and held.addrs == pool.addrs:  # same range: keep the leases
                held.dns, held.subnets, held.nbns, held.netmask = pool.dns, pool.subnets, pool.nbns, pool.netmask
            else:
                self.gw.ike.set_pool(pool)
            log.info("vici.pool_loaded", pool=pool.name, addrs=pool.addrs, size=pool.size)
        return self._pool_routes("load-pool")

    def _unload_pool(self, message: Message) -> EncodableMessage:
        name = _text(message, "name")
        if any(pool.name == name for pool in self.gw.config.pools):  # swanctl --load-pools tries it
            return _failed(f"unload-pool: pool {name!r} is defined in espgw's configuration file")
        held = self.gw.ike.pools.get(name)
        if held is not None and name in self.loaded.pool_names() and held.status()["online"]:
            return _failed(f"unload-pool: pool {name!r} has online leases, unable to unload")
        try:
            self.loaded.unload_pool(message)
        except ViciConfigError as exc:
            return _failed(exc.errmsg)
        self.gw.ike.remove_pool(name)
        return self._pool_routes("unload-pool")

    def _pool_routes(self, command: str) -> EncodableMessage:
        """The TUN routes follow the pools in use (a replaced range, an unloaded pool)."""
        try:
            self.gw.sync_pool_routes()
        except OSError as exc:
            log.error("vici.pool_route_failed", command=command, error=str(exc))
            return _failed(f"{command}: pool routes: {exc}")
        return OK

    def _get_pools(self, message: Message) -> EncodableMessage:
        """As charon: NAME {base, size, online, offline, leases {N {address, identity, status}}}."""
        only, with_leases = _text(message, "name"), _text(message, "leases") in ("yes", "1", "true")
        out: dict[str, Any] = {}
        for name, pool in self.gw.ike.pools.items():
            if only and name != only:
                continue
            stats = pool.status()
            entry: dict[str, Any] = {key: str(stats[key]) for key in ("base", "size", "online", "offline")}
            if with_leases:
                entry["leases"] = {str(i): lease for i, lease in enumerate(pool.leases())}
            out[name] = entry
        return out

    # --- control -------------------------------------------------------------------------------
    def _initiate(self, session: ViciSession, message: Message) -> None:
        now = self.gw.clock()
        child, ike = _text(message, "child"), _text(message, "ike")
        if child:
            try:
                conn, child_cfg = self.gw.config.find_child(child)
            except KeyError:
                session.respond(_failed(f"CHILD_SA config '{child}' not found"))
                return
            if ike and conn.name != ike:
                session.respond(_failed(f"CHILD_SA config '{child}' not found in '{ike}'"))
                return
            name, child_name = conn.name, child_cfg.name
        elif ike:
            if ike not in {c.name for c in self.gw.config.connections}:
                session.respond(_failed(f"IKE_SA config '{ike}' not found"))
                return
            name, child_name = ike, None
        else:
            session.respond(_failed("missing configuration name"))
            return
        waiter = _Waiter(session, "initiate", name, child_name, _deadline(message, now), _loglevel(message))
        self._control_log(waiter, f"initiating {'CHILD_SA ' + child_name if child_name else 'IKE_SA ' + name}")
        try:
            self.gw.ike.initiate(name, child_name, now)
        except (KeyError, ValueError) as exc:
            session.respond(_failed(f"initiating '{child_name or name}' failed: {exc}"))
            return
        if waiter.deadline is not None and waiter.deadline <= now:  # timeout < 0: do not wait
            session.respond(OK)
        elif child_name is None and self._ike_established(name) or self._child_installed(name, child_name):
            self._control_log(waiter, f"{'CHILD_SA ' + str(child_name) if child_name else 'IKE_SA ' + name} "
                                      "is already established")
            session.respond(OK)
        else:
            self.waiters.append(waiter)
        self.gw.pump(now)

    def _terminate(self, session: ViciSession, message: Message) -> None:
        now = self.gw.clock()
        child, ike, ike_id = _text(message, "child"), _text(message, "ike"), _text(message, "ike-id")
        sas = list(self.gw.ike.statuses())
        if ike_id:
            sas = [sa for sa in sas if str(sa.get("unique_id")) == ike_id]
            ike = ike or (str(sas[0].get("name")) if sas else "")
        if child:
            matching = [c for sa in sas for c in sa.get("children", []) if c.get("name") == child
                        and (not ike or sa.get("name") == ike)]
            if not matching:
                session.respond(_failed(f"no CHILD_SA named '{child}' found"))
                return
            owner = next(sa for sa in sas if any(c.get("name") == child for c in sa.get("children", [])))
            waiter = _Waiter(session, "terminate", str(owner.get("name")), child, _deadline(message, now),
                             _loglevel(message), {int(str(c.get("unique_id"))) for c in matching})
            self._control_log(waiter, f"closing CHILD_SA {child}")
            self.gw.ike.terminate_child(child, now)
        elif ike:
            ids = {int(str(sa.get("unique_id"))) for sa in sas if sa.get("name") == ike}
            if not ids:
                session.respond(_failed(f"no IKE_SA named '{ike}' found"))
                return
            waiter = _Waiter(session, "terminate", ike, None, _deadline(message, now), _loglevel(message), ids)
            self._control_log(waiter, f"deleting IKE_SA {ike}")
            self.gw.ike.terminate_ike(ike, now)
        else:
            session.respond(_failed("missing terminate selector"))
            return
        if waiter.deadline is not None and waiter.deadline <= now:
            session.respond(OK)
        else:
            self.waiters.append(waiter)
        self.gw.pump(now)

    def _rekey(self, message: Message) -> EncodableMessage:
        now = self.gw.clock()
        child, ike = _text(message, "child"), _text(message, "ike")
        count = 0
        if child:
            for spi, path in list(self.gw.children.items()):
                if path.child_name == child and self.gw.routed.get(path.lineage) is path:
                    self.gw.ike.rekey_child(spi, now)
                    count += 1
        elif ike:
            count = self.gw.ike.rekey_ike(ike, now)
        else:
            return _failed("missing rekey selector")
        self.gw.pump(now)
        if not count:
            return _failed(f"no matching SA to rekey for '{child or ike}'")
        return {"success": True, "matches": count}

    def _child_installed(self, name: str, child: str | None) -> bool:
        return child is not None and any(
            sa.get("name") == name and any(c.get("name") == child and str(c.get("state")).upper() == "INSTALLED"
                                           for c in sa.get("children", [])) for sa in self.gw.ike.statuses())

    def _ike_established(self, name: str) -> bool:
        return any(sa.get("name") == name and str(sa.get("state")).upper() == "ESTABLISHED"
                   for sa in self.gw.ike.statuses())

    # --- IKE's events ------------------------------------------------------------------------
    def on_ike_event(self, event: Any, now: float) -> None:
        """Called by the gateway for every event IKE reports (after its own handling)."""
        if isinstance(event, IkeSaUp):
            self._emit_sa("ike-updown", event.name, event.unique_id, now, up=True)
            if event.rekeyed_from is not None:
                self._emit_sa("ike-rekey", event.name, event.unique_id, now)
            self._log(event.name, f"IKE_SA {event.name}[{event.unique_id}] established between "
                                  f"{event.local[0]}[{event.local_id}]...{event.remote[0]}[{event.remote_id}]")
            self._settle(lambda w: w.command == "initiate" and w.child is None and w.connection == event.name, None)
        elif isinstance(event, ChildSaUp):
            self._emit_sa("child-updown", event.ike_name, event.ike_unique_id, now, up=True)
            if event.rekeyed_from is not None:
                self._emit_sa("child-rekey", event.ike_name, event.ike_unique_id, now)
            self._log(event.ike_name, f"CHILD_SA {event.child_name}{{{event.unique_id}}} established with SPIs "
                                      f"{event.inbound_spi:08x}_i {event.outbound_spi:08x}_o")
            self._settle(lambda w: w.command == "initiate" and w.connection == event.ike_name
                         and w.child in (None, event.child_name), None)
        elif isinstance(event, ChildSaDown):
            self.server.emit("child-updown", {event.ike_name: {"uniqueid": 0, "child-sas": {
                f"{event.child_name}-{event.unique_id}": {"name": event.child_name, "uniqueid": event.unique_id,
                                                          "state": "DELETED"}}}})
            if event.reason != "rekeyed":
                self._log(event.ike_name, f"CHILD_SA {event.child_name}{{{event.unique_id}}} closed ({event.reason})")
            for waiter in self.waiters:
                if waiter.command == "terminate" and waiter.child == event.child_name:
                    waiter.ike_ids.discard(event.unique_id)
            self._settle(lambda w: w.command == "terminate" and w.child == event.child_name and not w.ike_ids, None)
        elif isinstance(event, IkeSaDown):
            self.server.emit("ike-updown", {event.name: {"uniqueid": event.unique_id, "state": "DELETED"}})
            if event.reason != "rekeyed":
                self._log(event.name, f"IKE_SA {event.name}[{event.unique_id}] deleted ({event.reason})")
            for waiter in self.waiters:
                if waiter.command == "terminate" and waiter.child is None:
                    waiter.ike_ids.discard(event.unique_id)
            self._settle(lambda w: w.command == "terminate" and w.child is None and w.connection == event.name
                         and not w.ike_ids, None)
            if event.reason != "rekeyed":
                self._settle(lambda w: w.command == "initiate" and w.connection == event.name,
                             f"establishing IKE_SA '{event.name}' failed ({event.reason})")
        elif isinstance(event, NegotiationFailed):
            self._log(event.name, f"{event.stage} failed: {event.notify} {event.message}")
            if event.child_name is not None or event.stage == "CREATE_CHILD_SA":
                self._settle(lambda w: w.command == "initiate" and w.connection == event.name
                             and w.child in (None, event.child_name),
                             f"establishing CHILD_SA '{event.child_name}' failed ({event.notify})")
            else:
                self._settle(lambda w: w.command == "initiate" and w.connection == event.name,
                             f"establishing IKE_SA '{event.name}' failed ({event.notify})")

    def expire(self, now: float) -> None:
        """Answer the waiters whose ``timeout`` passed (called about once a second)."""
        self._settle(lambda w: w.deadline is not None and w.deadline <= now, "timeout", timed_out=True)

    def _end_waiters(self, connection: str, why: str) -> None:
        self._settle(lambda w: w.connection == connection, why)

    def _settle(self, match: Any, errmsg: str | None, timed_out: bool = False) -> None:
        done = [w for w in self.waiters if match(w)]
        if not done:
            return
        self.waiters = [w for w in self.waiters if w not in done]
        for waiter in done:
            if errmsg is None:
                self._control_log(waiter, f"{waiter.command} of '{waiter.child or waiter.connection}' completed "
                                          "successfully")
                self.server.finish(waiter.session, OK)
            else:
                verb = "initiating" if waiter.command == "initiate" else "terminating"
                text = f"{verb} '{waiter.child or waiter.connection}' failed: {errmsg}"
                self._control_log(waiter, text)
                self.server.finish(waiter.session, _failed(text))

    def _control_log(self, waiter: _Waiter, text: str) -> None:
        if waiter.loglevel >= 0:
            self.server.emit_to(waiter.session, "control-log", log_message(waiter.connection, text))

    def _log(self, connection: str, text: str) -> None:
        message = log_message(connection, text)
        self.server.emit("log", message)
        for waiter in self.waiters:
            if waiter.connection == connection and waiter.loglevel >= 1:
                self.server.emit_to(waiter.session, "control-log", message)

    def _emit_sa(self, event: str, name: str, unique_id: int, now: float, up: bool = False) -> None:
        sa = next((s for s in self.gw.ike.statuses() if s.get("unique_id") == unique_id), None)
        if sa is None:
            return
        message: EncodableMessage = {"up": True} if up else {}
        message[name] = ike_sa(status.describe_ike(self.gw, sa, now))
        self.server.emit(event, message)


def _version() -> str:
    try:
        return importlib.metadata.version("espgw")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


# --- messages ---------------------------------------------------------------------------------
def _text(message: Message, key: str) -> str:
    value = message.get(key)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def _deadline(message: Message, now: float) -> float | None:
    """vici's ``timeout`` in ms: 0 (the default) waits for the outcome, below 0 not at all."""
    try:
        timeout = int(_text(message, "timeout") or 0)
    except ValueError:
        timeout = 0
    return None if timeout == 0 else now + timeout / 1000.0


def _loglevel(message: Message) -> int:
    try:
        return int(_text(message, "loglevel") or 1)
    except ValueError:
        return 1
