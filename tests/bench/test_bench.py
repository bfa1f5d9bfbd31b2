"""The benchmark's bookkeeping without a lab: targets, ratios, selection, merging, chart, /proc readers."""

from __future__ import annotations

import json
import os
import time

import pytest

from bench import chart, targets
from bench.__main__ import _merged, _selection
from bench.system import LoadProbe, cpu_seconds, rss_bytes
from bench.throughput import summary_line


def _row(setup, esp, mbit, ping, pps=None):
    row = {"setup": setup, "esp": esp, "label": setup, "encap": "raw",
           "tcp": {"median_mbit_s": mbit, "cpu_s_per_gb": {}}, "ping": {"median_ms": ping}}
    if pps:
        row["flood"] = {"1400": {"per_core_pps": {"gwA": pps[0], "gwB": pps[1]}, "delivered_pps": 1000}}
    return row


ROWS = [
    _row("plain", None, 7000, 0.05),
    _row("sswan6-raw", "aes256gcm16", 200, 0.40),
    _row("sswan59-udp", "aes256gcm16", 500, 0.40),
    _row("espgw-raw", "aes256gcm16", 900, 0.30, pps=(300_000, 240_000)),
    _row("espgw-udp", "aes256gcm16", 1000, 0.50, pps=(260_000, 260_000)),
    _row("espgw-sswan6-raw", "aes256gcm16", 190, 0.4),
    {"setup": "espgw-sswan59-udp", "esp": "aes256gcm16", "error": "LabError: no tunnel"},
]


def _by_name(evaluated):
    return {t["target"]: t for t in evaluated}


def test_targets_met_not_met_and_unknown():
    got = _by_name(targets.evaluate(ROWS, {"child_sas": 10_000, "rss_mb": 80.0}))
    assert got["goodput espgw-raw / sswan6-raw"]["value"] == 4.5
    assert got["goodput espgw-raw / sswan6-raw"]["met"] is True
    assert got["goodput espgw-udp / sswan59-udp"]["met"] is False  # 2.0 < 3
    assert got["goodput espgw-sswan6-raw / sswan6-raw"]["met"] is True  # 0.95
    assert got["goodput espgw-sswan59-udp / sswan59-udp"]["met"] is None  # setup failed: no value
    assert got["espgw-raw gwA (encrypt) 1400-byte packets/s per core"]["met"] is True
    assert got["espgw-raw gwB (decrypt) 1400-byte packets/s per core"]["met"] is False
    assert got["added ping RTT espgw-raw vs sswan6-raw (ms)"]["met"] is True  # 0.25 <= 0.35
    assert got["added ping RTT espgw-udp vs sswan59-udp (ms)"]["met"] is False
    assert got["RSS with 10000 CHILD SAs (MB)"]["met"] is True


def test_per_core_targets_use_the_saturating_flood_where_measured():
    row = _row("espgw-raw", "aes256gcm16", 900, 0.30, pps=(100_000, 100_000))
    row["saturating_flood"] = {"1400": {"per_core_pps": {"gwA": 260_000, "gwB": 90_000}, "delivered_pps": 5000,
                                        "source": "udp_gso"}}
    got = _by_name(targets.evaluate([*ROWS[:3], row], None))
    encrypt = got["espgw-raw gwA (encrypt) 1400-byte packets/s per core"]
    assert (encrypt["value"], encrypt["met"], encrypt["source"]) == (260_000, True, "udp_gso")
    assert got["espgw-raw gwB (decrypt) 1400-byte packets/s per core"]["met"] is False
    assert targets.per_core_flood(ROWS[3])["per_core_pps"]["gwA"] == 300_000  # iperf3's when alone


def test_flood_sender_and_sink_count_every_datagram_on_loopback():
    import socket
    import threading

    from bench import flood

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stop, ready, result = threading.Event(), threading.Event(), {}
    receiver = threading.Thread(target=lambda: result.update(flood.sink(port, "127.0.0.1", stop, ready.set)))
    receiver.start()
    try:
        assert ready.wait(5)
        sent = flood.send("127.0.0.1", port, 1400, 0.2, 10_000)  # bounded: 2,000 datagrams at most
    finally:
        time.sleep(0.3)
        stop.set()
        receiver.join(5)
    assert 0 < sent["sent"] <= 2_100 and sent["per_sendmsg"] == 47
    assert result["received"] == sent["sent"]
    assert flood.main(["send", "127.0.0.1", "9", "20", "1", "1"]) == 2  # SIZE below an IP + UDP header


def test_rtt_targets_use_the_interleaved_study_where_measured():
    study = {"plan": {"esp": "aes256gcm16"},
             "overall": {"plain": {"added_ms": 0.0}, "espgw-raw": {"added_ms": 0.61}, "sswan6-raw": {"added_ms": 0.85},
                         "espgw-udp": {"added_ms": 0.62}, "sswan59-udp": {"added_ms": 0.61}}}
    got = _by_name(targets.evaluate(ROWS, None, study))
    raw, udp = got["added ping RTT espgw-raw vs sswan6-raw (ms)"], got["added ping RTT espgw-udp vs sswan59-udp (ms)"]
    assert (raw["value"], raw["met"], raw["source"]) == (0.61, True, "bench.rtt")
    assert (udp["value"], udp["met"]) == (0.62, False)
    other_suite = {**study, "plan": {"esp": "chacha20poly1305"}}  # not the targets' suite: the matrix's pings
    assert _by_name(targets.evaluate(ROWS, None, other_suite))["added ping RTT espgw-raw vs sswan6-raw (ms)"][
        "source"] == "throughput pings"


def test_rss_target_is_not_judged_on_a_partial_count():
    got = _by_name(targets.evaluate(ROWS, {"child_sas": 1000, "rss_mb": 60.0}))
    assert got["RSS with 1000 CHILD SAs (MB)"]["met"] is None


def test_ratios_side_by_side():
    (raw, udp, mixed) = targets.ratios(ROWS)
    assert (raw["espgw"], raw["strongswan"], raw["ratio"]) == ("espgw-raw", "sswan6-raw", 4.5)
    assert udp["ratio"] == 2.0 and mixed["ratio"] == 0.95


def test_selection_of_parts_setups_and_suites():
    assert _selection([]) == ({"throughput", "ike", "rtt"}, _selection([])[1], _selection([])[2])
    assert _selection(["rtt"])[0] == {"rtt"}
    parts, setups, suites = _selection(["espgw-raw", "chacha20poly1305"])
    assert parts == {"throughput"} and setups == ("espgw-raw",) and suites == ("chacha20poly1305",)
    assert _selection(["ike"])[0] == {"ike"}
    with pytest.raises(SystemExit):
        _selection(["no-such-thing"])


def test_partial_run_replaces_only_its_rows(tmp_path):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"results": ROWS[:3]}))
    merged = _merged(path, [_row("sswan6-raw", "aes256gcm16", 250, 0.3)])
    assert [r["setup"] for r in merged] == ["plain", "sswan59-udp", "sswan6-raw"]
    assert merged[-1]["tcp"]["median_mbit_s"] == 250
    assert _merged(tmp_path / "missing.json", ROWS[:1]) == ROWS[:1]


def test_summary_line_for_good_and_failed_rows():
    assert "FAILED" in summary_line(ROWS[-1])
    assert "900.0 Mbit/s" in summary_line(ROWS[3])


def test_chart_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    path = chart.draw(ROWS, tmp_path / "t.png", "test")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_proc_readers():
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 1 << 20
    assert cpu_seconds(2**22 + 1) == 0.0 and rss_bytes(2**22 + 1) == 0  # beyond pid_max: gone
    probe = LoadProbe(set())
    probe.start()
    assert probe.stop() >= 0.0


def test_fuzz_report_tells_slow_units_from_crashes():
    from bench.reliability_fuzz import parse_libfuzzer

    log = "\n".join([
        "#500000 pulse  cov: 1100 ft: 5000 corp: 470/90Kb lim: 4096 exec/s: 180 rss: 300Mb",
        "Slowest unit: 31 s:",
        "artifact_prefix='c/'; Test unit written to c/slow-unit-220ba446",
        "#1000000 DONE   cov: 1123 ft: 5111 corp: 476/91Kb lim: 4096 exec/s: 185 rss: 310Mb",
        "Done 1000000 runs in 5400 second(s)",
    ])
    r = parse_libfuzzer(log)
    assert r["executions"] == 1_000_000 and r["cov"] == 1123 and r["reported_seconds"] == 5400
    assert r["artifacts"] == [] and r["slow_units"] == ["c/slow-unit-220ba446"]
    crash = parse_libfuzzer(log + "\n==1== ERROR: libFuzzer: deadly signal\nTest unit written to c/crash-abc")
    assert crash["artifacts"] == ["c/crash-abc"]


PERF_SCRIPT = """\
   101 \x20
\tffffffff81000001 copy_to_iter ([kernel.kallsyms])
\tffffffff81000002 tun_chr_read_iter ([kernel.kallsyms])
\t7f0000000001 read (/usr/lib/x86_64-linux-gnu/libc.so.6)

   101 \x20
\tffffffff81000003 ip_rcv ([kernel.kallsyms])
\tffffffff81000004 packet_sendmsg ([kernel.kallsyms])

   101 \x20
\t7f0000000002 ossl_aes_gcm_encrypt_avx512 (/venv/lib/cryptography/hazmat/bindings/_rust.abi3.so)

   101 \x20
\t5500000001 _PyEval_EvalFrameDefault (/usr/bin/python3.11)

   202 \x20
\t7f0000000003 __memmove_avx512_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)

   202 \x20
\tffffffff81000005 schedule ([kernel.kallsyms])

   303 \x20
\t5500000001 _PyEval_EvalFrameDefault (/usr/bin/python3.11)
"""


def test_budget_sorts_perf_samples_by_gateway_and_path():
    from bench.budget import parse_samples

    counts = parse_samples(PERF_SCRIPT, {101: "gwA", 202: "gwB"})
    assert counts["gwA"] == {"kernel: TUN read": 1, "kernel: ring send, next hop's receive": 1,
                             "user: crypto": 1, "user: interpreter": 1}
    assert counts["gwB"] == {"user: libc": 1, "kernel: other": 1}  # pid 303 is no gateway's
