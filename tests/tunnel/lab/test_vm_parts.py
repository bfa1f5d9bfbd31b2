"""The kernel lab's host-side parts, without booting anything: the initramfs archive, the module
order, the results merge and the in-guest parsers."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections import Counter

import pytest

from tunnel.lab.vm import __main__ as cli
from tunnel.lab.vm.guest import _Cpio, kernel_version, module_load_order
from tunnel.lab.vm.kernel_lab import duplicates


def test_cpio_archive_is_what_cpio_reads(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio")
    path = tmp_path / "a.cpio.gz"
    with gzip.open(path, "wb") as out:
        archive = _Cpio(out)
        archive.dir("bin")
        archive.file("bin/tool", b"#!/bin/sh\necho hi\n", executable=True)
        archive.symlink("bin/sh", "tool")
        archive.file("odd", b"x" * 5)
        archive.close()
    listing = subprocess.run(["cpio", "-itv"], input=gzip.decompress(path.read_bytes()), capture_output=True,
                             timeout=10)
    names = [line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.stdout.decode().splitlines()]
    assert names == ["bin", "bin/tool", "bin/sh", "odd"], listing.stderr
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=gzip.decompress(path.read_bytes()), cwd=extracted,
                   check=True, timeout=10)
    assert (extracted / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (extracted / "bin" / "tool").stat().st_mode & 0o111
    assert (extracted / "bin" / "sh").readlink().name == "tool"


def test_modules_load_after_their_dependencies():
    kver = kernel_version()
    if kver is None:
        pytest.skip("no Debian kernel in /boot")
    names = [p.name.split(".ko")[0] for p in module_load_order(kver)]
    assert names.index("9pnet") < names.index("9pnet_virtio") < names.index("9p")
    assert names.index("virtio_ring") < names.index("virtio_pci")
    assert "overlay" in names


def test_record_merges_one_key_and_keeps_the_rest(tmp_path):
    path = tmp_path / "reliability.json"
    path.write_text(json.dumps({"flood": {"sent": 1}, cli.RECORD_KEY: {"espgw": {"old": 1}, "note": "kept"}}))
    cli.record({"espgw": {"tcp": 2}}, path)
    data = json.loads(path.read_text())
    assert data["flood"] == {"sent": 1}
    assert data[cli.RECORD_KEY]["espgw"] == {"tcp": 2} and data[cli.RECORD_KEY]["note"] == "kept"
    assert "measured_at" in data[cli.RECORD_KEY]


def test_true_duplicates_count_repeated_sequence_numbers():
    arrivals = {1: Counter({1: 1, 2: 2, 3: 1}), 2: Counter({7: 3})}
    assert duplicates(arrivals) == 3
    assert duplicates(arrivals, {1}) == 1


def test_unknown_command_line_scenario_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "no-such-scenario"])
    assert "unknown scenario" in capsys.readouterr().err


def test_record_takes_only_passed_chaos_scenarios(tmp_path):
    for name, ok in (("chaos-espgw", True), ("chaos-strongswan", False), ("interop-x", True)):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "figures.json").write_text(json.dumps({"ok": ok, "n": 1}))
    assert cli.recorded_figures(tmp_path) == {"espgw": {"ok": True, "n": 1}}
