"""The issue's targets, evaluated on one run's results (aes256gcm16, 1400-byte tunnel MTU)."""

from __future__ import annotations

TARGET_SUITE = "aes256gcm16"
PPS_TARGET = 250_000
RSS_TARGET_MB = 100
CHILD_SAS_TARGET = 10_000


def _row(rows: list[dict], setup: str, esp: str | None = TARGET_SUITE) -> dict | None:
    for row in rows:
        if row["setup"] == setup and (esp is None or row.get("esp") == esp) and "error" not in row:
            return row
    return None


def _goodput(rows, setup) -> float | None:
    row = _row(rows, setup)
    return row["tcp"]["median_mbit_s"] if row else None


def _ratio(rows, mine: str, theirs: str) -> float | None:
    a, b = _goodput(rows, mine), _goodput(rows, theirs)
    return round(a / b, 2) if a is not None and b else None


def _target(name: str, value, goal: str, met: bool | None, **extra) -> dict:
    return {"target": name, "value": value, "goal": goal,
            "met": met if value is not None else None, **extra}


def ratios(rows: list[dict]) -> list[dict]:
    """espgw / strongSwan goodput and RTT, per suite, for the side-by-side table."""
    out = []
    pairs = [("espgw-raw", "sswan6-raw"), ("espgw-udp", "sswan59-udp"),
             ("espgw-sswan6-raw", "sswan6-raw"), ("espgw-sswan59-udp", "sswan59-udp")]
    suites = sorted({r["esp"] for r in rows if r.get("esp")})
    for esp in suites:
        for mine, theirs in pairs:
            a, b = _row(rows, mine, esp), _row(rows, theirs, esp)
            if a and b:
                out.append({"esp": esp, "espgw": mine, "strongswan": theirs,
                            "espgw_mbit_s": a["tcp"]["median_mbit_s"], "strongswan_mbit_s": b["tcp"]["median_mbit_s"],
                            "ratio": round(a["tcp"]["median_mbit_s"] / b["tcp"]["median_mbit_s"], 2)
                            if b["tcp"]["median_mbit_s"] else None,
                            "espgw_ping_ms": a["ping"]["median_ms"], "strongswan_ping_ms": b["ping"]["median_ms"]})
    return out


def _added_rtt(rows, setup) -> float | None:
    plain, row = _row(rows, "plain", None), _row(rows, setup)
    if not plain or not row or row["ping"]["median_ms"] is None:
        return None
    return round(row["ping"]["median_ms"] - plain["ping"]["median_ms"], 3)


def _added_rtt_study(rtt: dict | None, setup: str) -> float | None:
    """Added RTT from the interleaved study (``bench.rtt``), which many rounds of pings make far
    steadier than the throughput matrix's one series per setup; None if it has no such row."""
    if not rtt or rtt.get("plan", {}).get("esp", TARGET_SUITE) != TARGET_SUITE:
        return None
    added = rtt.get("overall", {}).get(setup, {}).get("added_ms")
    return round(added, 3) if added is not None else None


def per_core_flood(row: dict | None, size: str = "1400") -> dict | None:
    """The flood that measures packets per gateway CPU second: the saturating one (``bench.flood``)
    where the row has it, since an iperf3 sender cannot outrun a gateway; else iperf3's."""
    row = row or {}
    return row.get("saturating_flood", {}).get(size) or row.get("flood", {}).get(size)


def evaluate(rows: list[dict], ike: dict | None, rtt: dict | None = None) -> list[dict]:
    out = []
    for mine, theirs, goal in (("espgw-raw", "sswan6-raw", 4.0), ("espgw-udp", "sswan59-udp", 3.0),
                               ("espgw-sswan6-raw", "sswan6-raw", 0.9), ("espgw-sswan59-udp", "sswan59-udp", 0.9)):
        r = _ratio(rows, mine, theirs)
        out.append(_target(f"goodput {mine} / {theirs}", r, f">= {goal}x", r is not None and r >= goal))
    for setup in ("espgw-raw", "espgw-udp"):
        flood = per_core_flood(_row(rows, setup))
        if flood:
            for role, what in (("gwA", "encrypt"), ("gwB", "decrypt")):
                pps = flood["per_core_pps"].get(role)
                out.append(_target(f"{setup} {role} ({what}) 1400-byte packets/s per core", pps,
                                   f">= {PPS_TARGET}", pps is not None and pps >= PPS_TARGET,
                                   delivered_pps=flood["delivered_pps"], source=flood.get("source", "iperf3")))
    for mine, theirs in (("espgw-raw", "sswan6-raw"), ("espgw-udp", "sswan59-udp")):
        a, b, source = _added_rtt_study(rtt, mine), _added_rtt_study(rtt, theirs), "bench.rtt"
        if a is None or b is None:
            a, b, source = _added_rtt(rows, mine), _added_rtt(rows, theirs), "throughput pings"
        out.append(_target(f"added ping RTT {mine} vs {theirs} (ms)", a, f"<= {b}",
                           a is not None and b is not None and a <= b, source=source))
    if ike:
        full = ike.get("child_sas", 0) >= CHILD_SAS_TARGET
        rss = ike.get("rss_mb")
        out.append(_target(f"RSS with {ike.get('child_sas')} CHILD SAs (MB)", rss,
                           f"< {RSS_TARGET_MB} at {CHILD_SAS_TARGET}",
                           (rss < RSS_TARGET_MB) if full else None,
                           note=None if full else f"only {ike.get('child_sas')} CHILD SAs measured (--quick)"))
    return out
