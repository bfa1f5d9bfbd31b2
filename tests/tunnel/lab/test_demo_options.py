"""``espgw demo --proposal`` / ``--pq`` without a lab: the check of the proposal and the names of
the key exchanges the report prints."""

from __future__ import annotations

import pytest

from tunnel.lab import demo


def test_key_exchanges_in_negotiation_order():
    assert demo.key_exchanges("aes256gcm16-prfsha384-ecp384-ke1_mlkem768") == ["ECP_384", "ML_KEM_768"]
    assert demo.key_exchanges("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024") == [
        "CURVE_25519", "ML_KEM_768", "ML_KEM_1024"]
    assert demo.key_exchanges("aes256gcm16-prfsha256-ecp256") == ["ECP_256"]
    assert demo.key_exchanges(None) == []


def test_pq_is_a_proposal_espgw_accepts():
    assert demo._proposal_problem(demo.PQ_PROPOSAL) is None
    assert demo._proposal_problem("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024, aes128-sha256-modp2048") \
        is None


@pytest.mark.parametrize(("proposal", "says"), [
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem999", "unknown algorithm keyword 'mlkem999'"),
    ("aes256gcm16-prfsha384-mlkem768", "ML-KEM only as an additional key exchange"),
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem512", "ML-KEM-512 is not available"),
])
def test_a_bad_proposal_is_refused_before_anything_starts(capsys, proposal, says):
    assert demo.main(["--proposal", proposal]) == 2  # before the root check: no lab, no traceback
    err = capsys.readouterr().err
    assert err.startswith("espgw demo: --proposal: ") and says in err and "Traceback" not in err


def test_pq_and_proposal_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as stop:
        demo.main(["--pq", "--proposal", demo.PQ_PROPOSAL])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_site_to_site_is_a_flag_and_the_road_warrior_the_default(monkeypatch, tmp_path):
    from tunnel.lab import demo_roadwarrior, demo_site

    ran = []
    monkeypatch.setattr(demo_site, "run_site_to_site", lambda *a: ran.append(("site", *a)) or 0)
    monkeypatch.setattr(demo_roadwarrior, "run_road_warrior", lambda *a: ran.append(("rw", *a)) or 0)
    assert demo.run_demo(tmp_path, False, "cert", demo.PQ_PROPOSAL, site_to_site=True) == 0
    assert demo.run_demo(tmp_path, True) == 0
    assert ran == [("site", tmp_path, False, "cert", demo.PQ_PROPOSAL), ("rw", tmp_path, True, "psk", None)]


def test_site_to_site_takes_the_same_options(capsys):
    assert demo.main(["--site-to-site", "--auth", "cert", "--proposal", "aes256gcm16-prfsha384-mlkem768"]) == 2
    assert "ML-KEM only as an additional key exchange" in capsys.readouterr().err


def test_espgw_demo_help_shows_the_demos_options(capsys):
    from tunnel import main as espgw_main

    with pytest.raises(SystemExit) as stop:
        espgw_main.main(["demo", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "usage: espgw demo" in out and "--site-to-site" in out and "--pq" in out


def test_out_is_replaced_only_when_it_holds_a_demos_files(tmp_path):
    from tunnel.lab.demo_common import DemoError, clear_output

    out = tmp_path / "demo"
    clear_output(out)  # created, with its marker
    (out / "internet.pcap").write_bytes(b"old")
    (out / "wireshark").mkdir()
    clear_output(out)  # a previous run's output: replaced
    assert sorted(p.name for p in out.iterdir()) == [".espgw-demo"]
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(DemoError, match=r"not a demo's \(thesis\.tex\); choose another directory"):
        clear_output(home)
    assert (home / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DemoError, match="not a directory"):
        clear_output(home / "thesis.tex")


def test_a_failed_lab_step_is_an_error_line_not_a_traceback(monkeypatch, capsys):
    from tunnel.lab.netns import LabError
    from tunnel.ops import log

    def fails(*args, **kw):
        raise LabError("timed out after 15s waiting for the laptop's virtual IP")

    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    monkeypatch.setattr(demo.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(log, "configure_logging", lambda *a: None)
    monkeypatch.setattr(demo, "run_demo", fails)
    assert demo.main([]) == 1
    assert capsys.readouterr().err == "espgw demo: timed out after 15s waiting for the laptop's virtual IP\n"
