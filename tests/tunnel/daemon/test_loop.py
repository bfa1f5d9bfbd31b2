"""The gateway's event loop (``Gateway.run``) without devices: watched fds, IKE deadlines, stop."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tunnel.ops.config import Config, GatewayConfig
from tunnel.daemon.gateway import Gateway


class RecordingIke:
    """Stands in for ``IkeEndpoint`` where the loop talks to it: deadline, timer, output queues."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.timer_reads = 0
        self.fired: list[float] = []
        self.on_fire = None
        self.events: list = []

    def get_timer(self) -> float | None:
        self.timer_reads += 1
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        if self.deadline is not None and self.deadline <= now:
            self.deadline = None
        if self.on_fire:
            self.on_fire()

    def datagrams_to_send(self, now: float) -> list:
        return []

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def roaming_sas(self) -> list:  # no MOBIKE SAs: the roaming check has nothing to look up
        return []

    def note_inbound_esp(self, spi: int, now: float) -> None:
        pass

    def terminate_ike(self, name: str, now: float) -> None:
        pass


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(Config("test", GatewayConfig(control_socket=str(tmp_path / "ctl")), []))
    watchdog = threading.Timer(5.0, gw.stop)  # a broken loop fails the test instead of hanging it
    watchdog.start()
    yield gw
    watchdog.cancel()
    gw.close()


def _pair(gw: Gateway, handler_for):
    a, b = socket.socketpair()
    b.setblocking(False)
    gw.watch(b.fileno(), handler_for(b))
    return a, b


def test_watched_fd_runs_its_handler_and_stop_ends_the_loop(gateway):
    got = []

    def handler_for(sock):
        def on_readable():
            got.append(sock.recv(100))
            gateway.stop()
        return on_readable

    a, b = _pair(gateway, handler_for)
    a.send(b"ping")
    gateway.run()
    assert got == [b"ping"]
    a.close(), b.close()


def test_data_turns_do_not_reread_the_ike_deadline(gateway):
    """Packets alone never move an IKE deadline earlier: the heap walk is skipped for them."""
    gateway.ike = ike = RecordingIke(deadline=time.monotonic() + 60)
    turns = []

    def handler_for(sock):
        def on_readable():
            sock.recv(100)
            turns.append(1)
            if len(turns) == 20:
                gateway.stop()
            else:
                a.send(b"x")
        return on_readable

    a, b = _pair(gateway, handler_for)
    a.send(b"x")
    gateway.run()
    assert len(turns) == 20
    assert ike.timer_reads == 1  # the first turn only
    assert ike.fired == []
    a.close(), b.close()


def test_ike_input_makes_the_next_turn_read_the_deadline_and_fire_it(gateway):
    """After IKE was fed (``pump``), a deadline it now has is honoured without other traffic."""
    gateway.ike = ike = RecordingIke(deadline=None)
    ike.on_fire = gateway.stop

    def handler_for(sock):
        def on_readable():
            sock.recv(100)
            ike.deadline = time.monotonic() + 0.05  # as if the datagram had started a retransmit timer
            gateway.pump(time.monotonic())
        return on_readable

    a, b = _pair(gateway, handler_for)
    a.send(b"ike")
    start = time.monotonic()
    gateway.run()
    assert len(ike.fired) == 1
    assert 0.04 <= ike.fired[0] - start < 2.0
    assert ike.timer_reads == 2
    a.close(), b.close()


def test_a_deadline_that_moved_later_costs_one_idle_turn_only(gateway):
    """The loop may wake at a stale (earlier) deadline; IKE re-checks, nothing is lost or repeated."""
    now = time.monotonic()
    gateway.ike = ike = RecordingIke(deadline=now + 0.02)
    real_get = ike.get_timer

    def moved_later():
        deadline = real_get()
        ike.deadline = now + 0.1  # e.g. DPD pushed back by inbound ESP after this read
        return deadline

    ike.get_timer = moved_later
    ike.on_fire = lambda: gateway.stop() if len(ike.fired) == 2 else None
    gateway.run()
    assert ike.fired[0] - now >= 0.02 and ike.fired[1] - now >= 0.1


class SteppingClock:
    """Simulated time that moves ``step`` seconds each time it is read: the loop never waits,
    and its timers come due in simulated time."""

    def __init__(self, start: float = 1000.0, step: float = 0.25) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class RecordingUdp:
    def __init__(self, clock) -> None:
        self.clock, self.sent = clock, []

    def send_keepalive(self, remote, local):
        self.sent.append(self.clock.now)

    def close(self) -> None:
        pass


@pytest.fixture
def simulated(tmp_path):
    """A gateway on a SteppingClock, idle but for one IKE SA behind a NAT (it gets keepalives)."""
    from ike.events import IkeSaUp

    clock = SteppingClock()
    gw = Gateway(Config("test", GatewayConfig(control_socket=str(tmp_path / "ctl"), vici_socket=""), []),
                 clock=clock)
    gw.ike = ike = RecordingIke()
    ike.events.append(IkeSaUp("c", 1, ("192.0.2.1", 4500), ("198.51.100.1", 4500), b"i" * 8, b"r" * 8, True,
                              "p", "me", "peer", True, False))
    gw.pump(clock.now)
    gw.udp = RecordingUdp(clock)
    yield gw, clock
    gw.close()


def test_housekeeping_runs_on_time_while_idle(simulated):
    """With nothing to read and no IKE deadline, housekeeping still runs on its interval: the NAT
    keepalives it sends come every 20 s of (simulated) idle time."""
    gw, clock = simulated
    gw.watch(*_stop_after(gw, lambda: len(gw.udp.sent) >= 3))
    gw.run()
    first, second, third = gw.udp.sent[:3]
    assert 20.0 <= first - gw.started < 21.5
    assert 19.5 < second - first < 21.5 and 19.5 < third - second < 21.5


def test_housekeeping_hands_freed_heap_back_now_and_then(simulated, monkeypatch):
    import tunnel.daemon.gateway as daemon

    gw, clock = simulated
    trims: list[float] = []
    monkeypatch.setattr(daemon, "release_free_memory", lambda: trims.append(clock.now))
    gw.watch(*_stop_after(gw, lambda: clock.now - gw.started > 35.0))
    gw.run()
    assert len(trims) == 3  # at 10, 20 and 30 s
    assert all(abs(t - gw.started - 10.0 * (i + 1)) < 1.5 for i, t in enumerate(trims))
    daemon.malloc_trim()()  # the real one (glibc's malloc_trim, or nothing) runs without error


def _stop_after(gw: Gateway, done):
    """A watched fd that is always readable: each loop turn checks ``done`` and stops the loop."""
    r, w = socket.socketpair()
    w.send(b"x")

    def check():
        if done():
            gw.stop()
            r.close(), w.close()
    return r.fileno(), check


def test_ike_sa_events_keep_names_and_nat_keepalives(gateway):
    """IKE SAs that come up are named in the gateway's state, those behind a NAT get keepalives
    from housekeeping, and a down event forgets both."""
    from ike.events import IkeSaDown, IkeSaUp

    class KeepaliveUdp:
        def __init__(self) -> None:
            self.sent: list = []

        def send_keepalive(self, remote, local):
            self.sent.append((remote, local))

        def close(self) -> None:
            pass

    behind = IkeSaUp("c", 1, ("192.0.2.1", 4500), ("198.51.100.1", 4500), b"i" * 8, b"r" * 8, True, "p",
                     "me", "peer", True, False)
    direct = IkeSaUp("c", 2, ("192.0.2.1", 500), ("198.51.100.2", 500), b"j" * 8, b"s" * 8, False, "p",
                     "me", "other", False, False)
    gateway.ike = ike = RecordingIke()
    ike.events += [behind, direct]
    gateway.pump(0.0)
    assert gateway.ike_sa_names == {1: "c", 2: "c"}
    gateway.udp = KeepaliveUdp()
    start = time.monotonic()
    gateway.clock = lambda: start + 60.0  # past the first keepalive interval
    ike.on_fire = gateway.stop
    ike.deadline = start  # a timer due at once ends the run after one housekeeping turn
    gateway.run()
    assert gateway.udp.sent == [(("198.51.100.1", 4500), ("192.0.2.1", 4500))]
    ike.events.append(IkeSaDown("c", 1, "deleted"))
    gateway.pump(2.0)
    assert gateway.ike_sa_names == {2: "c"} and not gateway.nat_keepalives
