"""A UDP flood that the gateway, not the traffic generator, limits: packets per gateway CPU second.

iperf3's UDP sender makes one ``sendto`` per datagram and tops out near the rate a gateway
handles (plain forwarding on this machine: about 85,000 packets of 1400 bytes per second), so a
gateway under an iperf3 flood gets small batches and its packets per CPU second understate what
one core sustains. Here the sender hands the kernel up to 64 datagrams per ``sendmsg`` (UDP GSO;
the kernel splits them in C before they reach gwA's TUN) and the receiver reads them with UDP GRO,
so both ends cost a fraction of a microsecond per packet and the gateway runs behind, with full
batches.

Bounded: the sender stops after ``seconds`` and never exceeds ``pps`` (paced per burst), and it
sends only to the lab address it is given, from inside the lab's own namespaces.

``python -m bench.flood send DST PORT SIZE SECONDS PPS`` and ``python -m bench.flood sink PORT``
are the two ends (SIZE is the inner IP packet: 20 bytes IPv4 + 8 UDP + payload);
``saturating_flood()`` runs both in a Lab and reads the gateways' CPU time.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import threading
import time

_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_IP_UDP = 28
_MAX_GSO_BYTES = 65000  # a GSO send is one IP packet of at most 64 KiB
_MAX_SEGMENTS = 64


def send(dst: str, port: int, size: int, seconds: float, pps: int) -> dict:
    payload = size - _IP_UDP
    per_call = max(1, min(_MAX_SEGMENTS, _MAX_GSO_BYTES // payload))
    burst = bytes(payload * per_call)
    cmsg = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", payload))]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((dst, port))
    interval = per_call / pps
    sent = failed = 0
    start = time.monotonic()
    end = start + seconds
    next_burst = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now < next_burst:
            time.sleep(next_burst - now)
        next_burst += interval
        try:
            sock.sendmsg([burst], cmsg)
            sent += per_call
        except (BlockingIOError, ConnectionRefusedError, OSError):
            failed += per_call  # ENOBUFS, or an ICMP error reported on the connected socket
    return {"sent": sent, "send_failed": failed, "seconds": round(time.monotonic() - start, 3),
            "per_sendmsg": per_call}


def sink(port: int, bind: str = "0.0.0.0", stop: threading.Event | None = None, ready=None) -> dict:
    """Count datagrams (GRO segments counted one by one) on ``port`` until ``stop`` is set."""
    stop = stop or threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
    sock.bind((bind, port))
    sock.settimeout(0.1)
    if ready is not None:
        ready()
    received = 0
    space = socket.CMSG_SPACE(4)
    recvmsg = sock.recvmsg
    try:
        while not stop.is_set():
            try:
                data, ancillary, _flags, _addr = recvmsg(65535, space)
            except (TimeoutError, InterruptedError):
                continue
            segment = 0
            for level, kind, value in ancillary:
                if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 2:
                    segment = int.from_bytes(value[:4].ljust(4, b"\0"), sys.byteorder) & 0xFFFF
            received += -(-len(data) // segment) if segment else 1
    finally:
        sock.close()
    return {"received": received}


def saturating_flood(lab, pids: dict[str, int], size: int, seconds: float, pps: int, port: int = 5301) -> dict:
    """hostA floods hostB through the tunnel; packets delivered per gateway CPU second."""
    import subprocess

    from bench.system import cpu_seconds

    receiver = lab.spawn(lab.hostB, sys.executable, "-m", "bench.flood", "sink", port,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if receiver.stdout.readline().strip() != b"listening":
            raise RuntimeError("flood sink did not start")
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        sender = json.loads(lab.run(lab.hostA, sys.executable, "-m", "bench.flood", "send", lab.hostB.addr4,
                                    port, size, seconds, pps, timeout=seconds + 30).stdout)
        time.sleep(0.3)  # what is still queued in the gateways drains
        used = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
        receiver.send_signal(signal.SIGTERM)
        received = json.loads(receiver.communicate(timeout=5)[0] or b"{}").get("received", 0)
    finally:
        lab.stop(receiver, timeout=3)
    wall = sender["seconds"] or seconds
    return {"size": size, "source": "udp_gso", "offered_pps": round(sender["sent"] / wall), "cap_pps": pps,
            "sent": sender["sent"], "send_failed": sender["send_failed"], "received": received,
            "delivered_pps": round(received / wall),
            "gateway_cpu_s": {r: round(s, 2) for r, s in used.items()},
            "per_core_pps": {r: round(received / s) for r, s in used.items() if s > 0}}


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["send"] and len(argv) == 6:
            dst, port, size, seconds, pps = argv[1], int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])
            if not (_IP_UDP < size <= 1500 and 0 < seconds <= 60 and 0 < pps <= 2_000_000):
                raise ValueError("SIZE 29..1500, SECONDS up to 60, PPS up to 2,000,000")
            print(json.dumps(send(dst, port, size, seconds, pps)))
            return 0
        if argv[:1] == ["sink"] and len(argv) == 2:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            print(json.dumps(sink(int(argv[1]), stop=stop, ready=lambda: print("listening", flush=True))))
            return 0
    except ValueError as exc:
        print(f"bench.flood: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m bench.flood send DST PORT SIZE SECONDS PPS | sink PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
