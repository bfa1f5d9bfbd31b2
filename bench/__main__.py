"""``python -m bench``: the whole benchmark suite against strongSwan (root; namespaces only).

Writes bench/results/throughput.json (every setup x suite), ike_load.json (responder
handshakes/s and RSS with many CHILD SAs), rtt.json (interleaved ping rounds, ``bench.rtt``),
summary.json (ratios and targets) and throughput.png, and prints the espgw / strongSwan ratios side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import structlog

from bench import chart, ike_load, rtt as rtt_study, targets
from bench.setups import ESP_SUITES, SETUPS
from bench.system import environment
from bench.throughput import Plan, run_all

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("throughput", "ike", "rtt")


def _args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 run of 3 s each, 1,000 IKE initiators")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only this part ({', '.join(PARTS)}), setup ({', '.join(s.name for s in SETUPS)}) "
                        f"or suite ({', '.join(ESP_SUITES)}); repeatable")
    p.add_argument("--child-sas", type=int, default=None, help="IKE initiators / CHILD SAs (default 10000)")
    p.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    return p.parse_args(argv)


def _selection(only: list[str]) -> tuple[set[str], tuple[str, ...], tuple[str, ...]]:
    known = set(PARTS) | {s.name for s in SETUPS} | set(ESP_SUITES)
    unknown = [o for o in only if o not in known]
    if unknown:
        sys.exit(f"--only: unknown name(s) {unknown}; choose from {sorted(known)}")
    setups = tuple(o for o in only if o in {s.name for s in SETUPS}) or tuple(s.name for s in SETUPS)
    suites = tuple(o for o in only if o in ESP_SUITES) or ESP_SUITES
    parts = {o for o in only if o in PARTS}
    if not parts:
        parts = {"throughput"} if len(setups) < len(SETUPS) or len(suites) < len(ESP_SUITES) else set(PARTS)
    return parts, setups, suites


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _merged(path: Path, fresh: list[dict]) -> list[dict]:
    """A partial run (--only) replaces its own rows in the last results and keeps the others."""
    try:
        old = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return fresh
    keys = {(r["setup"], r.get("esp")) for r in fresh}
    return [r for r in old if (r["setup"], r.get("esp")) not in keys] + fresh


def _print_table(rows: list[dict], ratio_rows: list[dict], evaluated: list[dict]) -> None:
    print("\nespgw / strongSwan, TCP goodput (median) and ping RTT (median):")
    print(f"{'suite':<17} {'espgw setup':<18} {'strongSwan setup':<12} {'espgw':>9} {'sswan':>9} {'ratio':>6}"
          f" {'rtt espgw':>10} {'rtt sswan':>10}")
    for r in ratio_rows:
        print(f"{r['esp']:<17} {r['espgw']:<18} {r['strongswan']:<12} {r['espgw_mbit_s']:>9.1f} "
              f"{r['strongswan_mbit_s']:>9.1f} {r['ratio']!s:>6} "
              f"{r['espgw_ping_ms']!s:>10} {r['strongswan_ping_ms']!s:>10}")
    print("\ntargets:")
    for t in evaluated:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        print(f"  [{mark:>7}] {t['target']}: {t['value']} (goal {t['goal']})")


def main(argv=None) -> int:
    args = _args(argv)
    if os.geteuid() != 0:
        sys.exit("the benchmark builds network namespaces: run it as root")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parts, setups, suites = _selection(args.only)
    plan = Plan(setups=setups, suites=suites)
    if args.quick:
        plan.seconds, plan.runs, plan.flood_seconds, plan.pings = 3.0, 1, 2.0, 20
        plan.retries, plan.max_wait, plan.patience = 0, 2.0, 30.0
    child_sas = args.child_sas or (1000 if args.quick else targets.CHILD_SAS_TARGET)
    env = {**environment(), "quick": args.quick, "plan": vars(plan)}
    out = args.results

    rows, ike = None, None
    if "throughput" in parts:
        rows = _merged(out / "throughput.json", run_all(plan))
        _write(out / "throughput.json", {"environment": env, "results": rows})
        png = chart.draw(rows, out / "throughput.png",
                         f"espgw vs strongSwan, {env['started']}, {'quick' if args.quick else 'full'} run")
        print(f"wrote {out / 'throughput.json'}" + (f" and {png}" if png else " (no matplotlib: no chart)"))
    if "ike" in parts:
        ike = ike_load.measure(child_sas)
        _write(out / "ike_load.json", {"environment": env, "result": ike})
        print(f"IKE responder: {ike['handshakes_per_s']} handshakes/s ({ike['handshakes_per_responder_cpu_s']} per "
              f"responder CPU s), {ike['child_sas']} CHILD SAs in {ike['rss_mb']} MB RSS")
    rtt = None
    if "rtt" in parts:
        rtt = rtt_study.study(rounds=1 if args.quick else 3, pings=40 if args.quick else 200)
        _write(out / "rtt.json", rtt)
        print("ping RTT added over plain forwarding (interleaved rounds): "
              + ", ".join(f"{k} {v.get('added_ms')} ms" for k, v in rtt["overall"].items() if k != "plain"))
    if rows is None and (out / "throughput.json").exists():  # evaluate targets with the last run
        rows = json.loads((out / "throughput.json").read_text())["results"]
    if ike is None and (out / "ike_load.json").exists():
        ike = json.loads((out / "ike_load.json").read_text())["result"]
    if rtt is None and (out / "rtt.json").exists():
        rtt = json.loads((out / "rtt.json").read_text())
    ratio_rows = targets.ratios(rows or [])
    evaluated = targets.evaluate(rows or [], ike, rtt)
    _write(out / "summary.json", {"environment": env, "ratios": ratio_rows, "targets": evaluated})
    _print_table(rows or [], ratio_rows, evaluated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
