"""The kernel lab: scenarios in a QEMU guest running Debian's kernel (tunnel/lab/vm).

One guest boot serves the module; each test runs one scenario in it (tunnel.lab.vm.scenarios says
what each checks) and fails with the scenario's log. Without QEMU, the kernel image or a static
busybox the tests skip; under CI=true they fail instead, like every lab test. Run them under the
lab lock: ``flock /tmp/espgw-lab.lock .venv/bin/python -m pytest -m lab tests/tunnel/lab/test_kernel_vm_lab.py``.
"""

from __future__ import annotations

import json
import os

import pytest

from tunnel.lab.vm.guest import Guest, JobResult, unavailable_reason

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]
SCENARIO_TIMEOUT = 300


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":  # as tests/conftest.py: CI must run every lab test
            pytest.fail(f"CI must run the kernel lab, but this machine {reason}")
        pytest.skip(f"kernel lab: {reason}")
    with Guest(tmp_path_factory.mktemp("kernel-vm")) as vm:
        yield vm


def run(guest: Guest, name: str) -> JobResult:
    result = guest.run_scenario(name, timeout=SCENARIO_TIMEOUT)
    if result.returncode == 3:
        pytest.skip(result.output.strip().splitlines()[-1])
    assert result.ok, f"scenario {name} failed ({result.returncode}):\n{result.output[-6000:]}"
    print(json.dumps(result.figures(), indent=1))
    return result


@pytest.mark.parametrize("scenario", ["interop-gcm-raw-espgw-init", "interop-cbc-udp-swan-init",
                                      "interop-chacha-udp-espgw-init"])
def test_interop_with_strongswan_on_kernel_esp(guest, scenario):
    figures = run(guest, scenario).figures()
    if figures["case"]["rekeys"]:
        assert figures["rekeys"]["ping"]["lost"] == 0 and figures["rekeys"]["create_child_sa_lines"] >= 4
    algs = {alg for sa in figures["kernel_sas"] for alg in sa["algs"]}
    expected = {"gcm": "rfc4106(gcm(aes))", "cbc": "cbc(aes)", "chacha": "rfc7539esp(chacha20,poly1305)"}
    assert expected[figures["case"]["suite"]] in algs


def test_chaos_espgw_to_espgw(guest):
    figures = run(guest, "chaos-espgw").figures()
    assert figures["handshakes"]["ike_retransmits"] >= 1  # the first one's request was dropped
    for side in ("gwA", "gwB"):
        assert figures["anti_replay"][side]["only_duplicates_dropped"]
    assert figures["rekey"]["child_rekeys"] >= 1 and figures["rekey"]["ike_rekeys"] >= 1
    assert figures["tcp"]["intact"] and figures["rekey"]["stream"]["intact"]


def test_chaos_espgw_to_strongswan_kernel(guest):
    figures = run(guest, "chaos-strongswan").figures()
    assert figures["handshakes"]["ike_retransmits"] >= 1
    assert figures["anti_replay"]["espgw_gwA"]["only_duplicates_dropped"]
    kernel = figures["anti_replay"]["kernel_gwB"]  # espgw never reuses a sequence number either
    assert kernel["xfrm_errors"].get("XfrmInStateSeqError", 0) <= kernel["true_duplicates"]
    assert figures["rekey"]["child_rekeys"] == 1 and figures["rekey"]["ike_rekeys"] == 1
    assert figures["tcp"]["intact"] and figures["rekey"]["stream"]["intact"]


def test_unknown_scenario_is_a_clear_error(guest):
    result = guest.run_scenario("no-such-scenario", timeout=30)
    assert result.returncode == 2 and "no scenario 'no-such-scenario'" in result.output
