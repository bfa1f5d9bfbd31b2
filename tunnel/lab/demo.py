"""``espgw demo``: the road warrior in network namespaces, and what an eavesdropper sees.

The default (``tunnel.lab.demo_roadwarrior``) tells the README's story literally: a laptop on
cafe Wi-Fi behind the cafe's NAT router runs espgw itself, gets its tunnel address 10.0.0.7 from
the office gateway's pool and opens the dashboard 10.0.5.9; the report reads the cafe Wi-Fi and
the public internet as an eavesdropper would. ``--site-to-site`` (``tunnel.lab.demo_site``) runs
the two-gateway scenario instead; ``tunnel.lab.demo_common`` holds what both share. This module
is the command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from collections.abc import Sequence

from tunnel.lab.demo_common import LAB_PREFIX, DemoError, key_exchanges

DEFAULT_OUT = "/tmp/espgw-demo"
# --pq: the hybrid strongSwan's docs and espgw's README show (classic ECP-384, then ML-KEM-768)
PQ_PROPOSAL = "aes256gcm16-prfsha384-ecp384-ke1_mlkem768"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="espgw demo", description="The road warrior in network namespaces "
                                     "(or two gateways), and what an eavesdropper sees.")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where to keep the artefacts ({DEFAULT_OUT})")
    parser.add_argument("--no-tshark", action="store_true", help="skip the decryption check with tshark")
    parser.add_argument("--site-to-site", action="store_true",
                        help="two gateways, the laptop behind one and the dashboard behind the other, "
                             "instead of the laptop running espgw itself behind the cafe's NAT")
    parser.add_argument("--auth", choices=("psk", "cert"), default="psk",
                        help="authenticate both ends with a pre-shared key or with certificates from a fresh CA")
    kex = parser.add_mutually_exclusive_group()
    kex.add_argument("--proposal", metavar="IKE_PROPOSAL",
                     help="both ends' IKE proposals, strongSwan syntax, e.g. "
                          "aes256gcm16-prfsha256-x25519-ke1_mlkem768 (default: espgw's)")
    kex.add_argument("--pq", action="store_const", dest="proposal", const=PQ_PROPOSAL,
                     help=f"post-quantum hybrid key exchange: --proposal {PQ_PROPOSAL}")
    args = parser.parse_args([] if argv is None else argv)  # the CLI passes only what follows "demo"
    problem = _proposal_problem(args.proposal) if args.proposal is not None else None
    if problem:
        print(f"espgw demo: --proposal: {problem}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("espgw demo: needs root to create network namespaces; run: sudo espgw demo", file=sys.stderr)
        return 1
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            print(f"espgw demo: needs {tool} (iproute2, tcpdump) on the PATH", file=sys.stderr)
            return 1
    from tunnel.lab.netns import LabError
    from tunnel.ops.log import configure_logging

    configure_logging("warning", "console")  # the lab's own chatter stays out of the report
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_demo(Path(args.out).resolve(), tshark=not args.no_tshark and shutil.which("tshark") is not None,
                        auth=args.auth, proposal=args.proposal, site_to_site=args.site_to_site)
    except KeyboardInterrupt:
        print("\nespgw demo: interrupted; the lab is removed", file=sys.stderr)
        return 130
    except (DemoError, LabError) as exc:  # LabError: a step of the lab failed (its message says which)
        print(f"espgw demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


_MAIN_PID = os.getpid()


def _interrupt(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2 forks into namespaces) just dies
        os._exit(128 + signum)
    raise KeyboardInterrupt


def run_demo(out: Path, tshark: bool, auth: str = "psk", proposal: str | None = None,
             site_to_site: bool = False) -> int:
    """One scenario, its report printed; 0 when the ping and the page went through."""
    if site_to_site:
        from tunnel.lab.demo_site import run_site_to_site

        return run_site_to_site(out, tshark, auth, proposal)
    from tunnel.lab.demo_roadwarrior import run_road_warrior

    return run_road_warrior(out, tshark, auth, proposal)


def _proposal_problem(text: str) -> str | None:
    """What espgw's config reader says of ``text`` as a connection's ``proposals``, or None."""
    from tunnel.ops.config import ConfigError, parse_config_data

    where = "--proposal: connections.demo.proposals: "
    try:  # the table lacks children and auth: only the problems with its proposals count here
        parse_config_data({"connections": {"demo": {"proposals": text}}}, "--proposal", require_connections=False)
    except ConfigError as exc:
        return next((p.removeprefix(where) for p in exc.problems if p.startswith(where)), None)
    return None


__all__ = ["main", "run_demo", "DemoError", "LAB_PREFIX", "PQ_PROPOSAL", "key_exchanges"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
