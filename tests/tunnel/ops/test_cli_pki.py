"""`espgw pki` through the CLI, and the certificate example checked with what it makes."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunnel.ops import cli

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "cert" / "site-a.toml"


def test_pki_then_check_the_certificate_example(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert cli.main(["pki", "ca", "--out", str(pki / "ca"), "--name", "C=CH, O=Example, CN=Example CA"]) == 0
    assert cli.main(["pki", "issue", "--ca", str(pki / "ca"), "--out", str(pki / "gw-a"),
                     "--name", "C=CH, O=Example, CN=gw-a.example.net", "--san", "gw-a.example.net"]) == 0
    conf = tmp_path / "conf"
    for folder in ("x509", "x509ca", "private"):
        (conf / folder).mkdir(parents=True)
    shutil.copy(pki / "ca" / "ca.crt", conf / "x509ca" / "ca.crt")
    shutil.copy(pki / "gw-a" / "gateway.crt", conf / "x509" / "gw-a.crt")
    shutil.copy(pki / "gw-a" / "gateway.key", conf / "private" / "gw-a.key")
    shutil.copy(EXAMPLE, conf / "site-a.toml")
    capsys.readouterr()
    assert cli.main(["check", "-c", str(conf / "site-a.toml")]) == 0
    out = capsys.readouterr().out
    assert "local  pubkey id gw-a.example.net, certificate" in out and "1 trusted CA(s)" in out
    assert "PRIVATE" not in out
