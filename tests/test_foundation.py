"""The packages import, the console script is declared and the wheel leaves the lab out."""

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_packages_import():
    for name in ("esp", "ike", "tunnel"):
        importlib.import_module(name)


def test_console_script_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["espgw"] == "tunnel.main:main"


def test_wheel_leaves_the_lab_out():
    from setuptools import find_packages

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["include-package-data"] is False  # else tunnel/lab's modules ride along as data
    find = setuptools["packages"]["find"]
    shipped = set(find_packages(str(ROOT), include=find["include"], exclude=find["exclude"]))
    assert {"tunnel.dataplane", "tunnel.kernel", "tunnel.daemon", "tunnel.ops"} <= shipped
    assert not any(name == "tunnel.lab" or name.startswith("tunnel.lab.") for name in shipped)
