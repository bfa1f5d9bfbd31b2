"""The ``espgw`` command: the operator CLI (``tunnel.ops.cli``) wired to what it starts.

``ops`` sits below ``daemon`` (the daemon uses its configuration, control socket and logging), so
the one module that knows both the CLI and the daemon is this one, above them. The lab is not
part of an installed wheel (the package ships only what a gateway needs): ``espgw demo`` says so
and points to a source checkout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from tunnel.ops import cli
from tunnel.ops.config import Config

DEMO_NEEDS_CHECKOUT = ("the demo runs from a source checkout (git clone, then `make demo`); "
                       "an installed espgw ships the gateway only, without the namespace lab")


def start_daemon(config: Config) -> int | None:
    from tunnel.daemon.gateway import run  # on demand: the client commands need none of the daemon's imports

    return run(config)


def start_demo(argv: list[str]) -> int | None:
    try:
        demo = importlib.import_module("tunnel.lab.demo")
    except ModuleNotFoundError as exc:
        if exc.name in ("tunnel.lab", "tunnel.lab.demo"):
            raise cli.CliError(DEMO_NEEDS_CHECKOUT) from None
        raise
    return demo.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, start_daemon=start_daemon, start_demo=start_demo)


if __name__ == "__main__":
    sys.exit(main())
