"""Ping RTT through the tunnel, interleaved: which setup (or which espgw code) adds less latency.

``sudo .venv/bin/python -m bench.rtt`` builds one namespace lab and, for each of ``--rounds``
rounds, brings up every setup in turn and sends ``--pings`` pings hostA -> hostB at
``--interval`` (idle gaps, as a person's ping). Interleaving the rounds spreads the machine's
drift over all setups alike. ``python -m bench`` runs it as its ``rtt`` part, and the RTT
targets are judged on it. ``--code NAME=DIR`` (repeatable) runs the espgw daemons from
another checkout, e.g. a git worktree of the commit before a change, so old and new code are
compared in the same lab and run. Writes ``bench/results/rtt.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from bench.setups import BY_NAME, lab_prefix, tunnel_up
from bench.system import environment
from bench.traffic import RTT_PATTERN
from tunnel.lab import espgw as lab_espgw
from tunnel.lab.netns import Lab

DEFAULT_SETUPS = ("plain", "sswan6-raw", "espgw-raw", "sswan59-udp", "espgw-udp")
RESULTS = Path(__file__).resolve().parent / "results" / "rtt.json"


@contextlib.contextmanager
def _code_from(directory: Path | None):
    """espgw daemons started inside the block import their code from ``directory``."""
    if directory is None:
        yield
        return
    saved = lab_espgw._repo_root
    lab_espgw._repo_root = lambda: directory
    try:
        yield
    finally:
        lab_espgw._repo_root = saved


def _pings(lab: Lab, count: int, interval: float) -> list[float]:
    result = lab.ping(lab.hostA, lab.hostB.addr4, count=count, interval=interval, wait=2)
    return [float(t) for t in RTT_PATTERN.findall(result.output)]


def _summary(times: list[float]) -> dict:
    if not times:
        return {"replies": 0}
    ordered = sorted(times)
    return {"replies": len(times), "median_ms": round(statistics.median(times), 4),
            "p10_ms": round(ordered[len(ordered) // 10], 4), "p90_ms": round(ordered[len(ordered) * 9 // 10], 4),
            "min_ms": round(ordered[0], 4)}


def study(setup_names=DEFAULT_SETUPS, esp: str = "aes256gcm16", rounds: int = 3, pings: int = 200,
          interval: float = 0.05, variants: list[tuple[str, Path | None]] | None = None) -> dict:
    """The interleaved rounds in one lab; ``overall`` per setup (median, spread, added over plain)."""
    variants = variants or [("work", None)]
    setups = [BY_NAME[n] for n in setup_names]
    samples: dict[str, list[float]] = {}
    rounds_out: list[dict] = []
    with Lab(prefix=lab_prefix(), ipv6=False) as lab:
        for r in range(rounds):
            for setup in setups:
                for variant, directory in (variants if "espgw" in setup.name else [("", None)]):
                    label = f"{setup.name}@{variant}" if variant and len(variants) > 1 else setup.name
                    with _code_from(directory), tunnel_up(lab, setup, esp):
                        times = _pings(lab, pings, interval)
                    samples.setdefault(label, []).extend(times)
                    rounds_out.append({"round": r, "setup": label, **_summary(times)})
                    print(f"round {r} {label:28} {_summary(times).get('median_ms')} ms", file=sys.stderr)
    plain = statistics.median(samples["plain"]) if samples.get("plain") else None
    overall = {}
    for label, times in samples.items():
        row = _summary(times)
        row["round_medians_ms"] = [x["median_ms"] for x in rounds_out if x["setup"] == label and "median_ms" in x]
        if plain is not None and "median_ms" in row:
            row["added_ms"] = round(row["median_ms"] - plain, 4)
        overall[label] = row
    return {"environment": environment(),
            "plan": {"esp": esp, "rounds": rounds, "pings": pings, "interval_s": interval,
                     "variants": {n: str(d) if d else "this checkout" for n, d in variants}},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overall": overall, "rounds": rounds_out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rtt", description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="append", default=[], choices=sorted(BY_NAME),
                   help=f"default: {', '.join(DEFAULT_SETUPS)}")
    p.add_argument("--esp", default="aes256gcm16", choices=("aes256gcm16", "chacha20poly1305"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pings", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between pings")
    p.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                   help="also run the espgw setups with the daemon code of DIR")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.pings < 1 or args.interval < 0.01:
        p.error("--rounds and --pings must be at least 1, --interval at least 0.01")
    variants: list[tuple[str, Path | None]] = [("work", None)]
    for spec in args.code:
        name, _, directory = spec.partition("=")
        if not name or not directory or not (Path(directory) / "tunnel" / "cli.py").is_file():
            p.error(f"--code {spec!r}: want NAME=DIR with DIR an espgw checkout")
        variants.append((name, Path(directory).resolve()))
    result = study(args.setup or DEFAULT_SETUPS, args.esp, args.rounds, args.pings, args.interval, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for label, row in result["overall"].items():
        print(f"{label:28} median {row.get('median_ms')} ms  added {row.get('added_ms')}  "
              f"rounds {row['round_medians_ms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
