"""The packages import and the console script is declared."""

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_packages_import():
    for name in ("esp", "ike", "tunnel"):
        importlib.import_module(name)


def test_console_script_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["espgw"] == "tunnel.ops.cli:main"
