"""``python -m tunnel.lab.vm``: boot the kernel lab's guest and run scenarios (or a command) in it.

  python -m tunnel.lab.vm list
  python -m tunnel.lab.vm run SCENARIO [SCENARIO...] [--out DIR] [--record]
  python -m tunnel.lab.vm shell 'COMMAND'
  python -m tunnel.lab.vm record DIR        (the chaos figures of an earlier run's results folder)

Takes the lab lock (/tmp/espgw-lab.lock) while the guest runs: emulation needs a whole core.
``--record`` merges the chaos scenarios' figures into bench/results/reliability.json (key
``kernel_netem``), leaving the file's other keys alone.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import sys
import tempfile
import time
from pathlib import Path

from tunnel.lab.vm.guest import REPO, Guest, GuestError, kernel_version, unavailable_reason

LOCK = Path("/tmp/espgw-lab.lock")
RELIABILITY = REPO / "bench" / "results" / "reliability.json"
RECORD_KEY = "kernel_netem"


def scenario_names() -> list[str]:
    # the registry without importing the scenarios' dependencies (seconds under emulation, fine here)
    from tunnel.lab.vm.scenarios import SCENARIOS

    return list(SCENARIOS)


def record(figures: dict[str, dict], path: Path = RELIABILITY) -> None:
    """Merge the chaos figures under RECORD_KEY; every other key of the file stays as it was."""
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = data.get(RECORD_KEY, {})
    entry.update(figures)
    entry["measured_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
    entry["where"] = (f"QEMU TCG guest, Debian kernel {kernel_version()}, 2 vCPUs; netem on the public link; "
                      "emulation: behaviour only, the times are not speeds")
    data[RECORD_KEY] = entry
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def recorded_figures(folder: Path) -> dict[str, dict]:
    """The figures of the chaos scenarios that passed, from an io folder or its results folder."""
    results = folder / "results" if (folder / "results").is_dir() else folder
    found = {}
    for path in sorted(results.glob("chaos-*/figures.json")):
        figures = json.loads(path.read_text())
        if figures.get("ok"):
            found[path.parent.name.removeprefix("chaos-")] = figures
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunnel.lab.vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios")
    run = sub.add_parser("run", help="boot the guest and run scenarios in it")
    run.add_argument("scenarios", nargs="+")
    run.add_argument("--out", type=Path, help="results folder (default: a new one under /tmp)")
    run.add_argument("--record", action="store_true", help=f"merge chaos figures into {RELIABILITY.name}")
    run.add_argument("--timeout", type=float, default=600, help="seconds per scenario")
    shell = sub.add_parser("shell", help="boot the guest and run a shell command in it")
    shell.add_argument("cmd")
    shell.add_argument("--out", type=Path)
    rec = sub.add_parser("record", help=f"merge the chaos figures of a results folder into {RELIABILITY.name}")
    rec.add_argument("folder", type=Path, help="an io folder (or its results/ folder) of an earlier run")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(scenario_names()))
        return 0
    if args.command == "record":
        found = recorded_figures(args.folder)
        if not found:
            print(f"no passed chaos scenario in {args.folder}", file=sys.stderr)
            return 1
        record(found)
        print(f"recorded {', '.join(found)} in {RELIABILITY}", file=sys.stderr)
        return 0
    if args.command == "run":
        unknown = [s for s in args.scenarios if s not in scenario_names()]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; see 'list'")
    reason = unavailable_reason()
    if reason:
        print(f"kernel lab unavailable: {reason}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="espgw-vm-"))
    print(f"results and logs: {out}", file=sys.stderr)
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with Guest(out) as guest:
                print(f"guest up in {guest.boot_seconds}s", file=sys.stderr)
                if args.command == "shell":
                    result = guest.run(["sh", "-c", args.cmd], timeout=600)
                    sys.stdout.write(result.output)
                    return result.returncode
                worst, figures = 0, {}
                for name in args.scenarios:
                    started = time.monotonic()
                    result = guest.run_scenario(name, timeout=args.timeout)
                    sys.stdout.write(result.output)
                    status = {0: "passed", 3: "skipped"}.get(result.returncode, f"FAILED ({result.returncode})")
                    print(f"== {name}: {status} in {time.monotonic() - started:.0f}s; results in {result.results}")
                    if result.returncode not in (0, 3):
                        worst = 1
                    elif name.startswith("chaos") and result.ok:
                        figures[name.removeprefix("chaos-")] = result.figures()
                if args.record and figures:
                    record(figures)
                    print(f"recorded {', '.join(figures)} in {RELIABILITY}", file=sys.stderr)
                return worst
        except GuestError as exc:
            print(f"kernel lab: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
