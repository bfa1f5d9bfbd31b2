"""Record real strongSwan IKEv2 exchanges as test fixtures (needs root).

    .venv/bin/python -m tunnel.lab.record_fixtures [--out tests/fixtures/strongswan]
        [--version 5.9 --version 6.0] [--suite gcm --suite cbc]

For each strongSwan version and cipher suite, two charons in a fresh lab run: IKE_SA_INIT,
IKE_AUTH, a CHILD_SA rekey (CREATE_CHILD_SA + INFORMATIONAL delete), an IKE_SA rekey
(CREATE_CHILD_SA + delete) and a final INFORMATIONAL delete. Writes ``strongswan-V-SUITE.pcap``
(IKE only, captured on gwA's public interface) and ``.json`` with SPIs, proposals, the message
list and the SK_* keys charon logged at ``ike = 4``; every SK payload is checked to decrypt
with those keys before anything is written. The PSK is the lab's published test PSK.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunnel.lab.configs import LAB_PSK, site_to_site
from tunnel.lab.ike_pcap import open_sk, read_ike_frames
from tunnel.lab.netns import Lab
from tunnel.lab.strongswan import StrongSwan, StrongSwanError

SUITES = {  # name: (IKE proposal, ESP proposal, SK cipher for open_sk)
    "gcm": ("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "aes-gcm-16"),
    "cbc": ("aes128-sha256-modp2048", "aes128-sha256", "aes-cbc-hmac-sha256-128"),
}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "strongswan"
# IKE only: UDP 500, and UDP 4500 with the non-ESP marker (ESP would be noise)
IKE_ONLY = "udp port 500 or (udp port 4500 and udp[8:4] = 0)"


def _ike_sa(gw: StrongSwan) -> dict:
    (sa,) = gw.list_sas()
    return sa


def _only_child(gw: StrongSwan) -> dict:
    children = gw.child_sas("net", state=None)
    return children[0] if len(children) == 1 else {}


def _ignoring_sas(check: Callable[[StrongSwan], bool], gw: StrongSwan, _sas: list[dict]) -> bool:
    return check(gw)


def _exchange(gw_a: StrongSwan, gw_b: StrongSwan) -> dict:
    """Drive the exchanges; returns what the JSON needs to know about the SAs."""
    gw_a.initiate(child="net")
    first = _ike_sa(gw_a)
    child_before = _only_child(gw_a)

    gw_a.rekey(child="net")
    old_spis = (child_before.get("spi-in"), child_before.get("spi-out"))

    def rekeyed(gw: StrongSwan) -> bool:
        child = _only_child(gw)
        return child.get("state") == "INSTALLED" and child.get("spi-in") not in old_spis

    for gw in (gw_a, gw_b):  # new CHILD_SA installed, old one deleted on both sides
        gw.wait_for(functools.partial(_ignoring_sas, rekeyed, gw), what="CHILD_SA rekey")
    child_after = _only_child(gw_a)

    gw_a.rekey(ike="lab")
    for gw in (gw_a, gw_b):
        gw.wait_for(lambda sas: len(sas) == 1 and sas[0].get("state") == "ESTABLISHED"
                    and sas[0].get("initiator-spi") != first["initiator-spi"], what="IKE_SA rekey")
    second = _ike_sa(gw_a)

    gw_a.terminate(ike="lab")
    gw_b.wait_for(lambda sas: not sas, what="IKE_SA deleted on gwB")
    return {"ike_sas": [first, second], "child_sas": [child_before, child_after]}


def _proposal_text(sa: dict) -> str:
    parts = [sa.get("encr-alg", "") + ("-" + sa["encr-keysize"] if sa.get("encr-keysize") else "")]
    parts += [sa[k] for k in ("integ-alg", "prf-alg", "dh-group") if sa.get(k)]
    return "/".join(parts)


def _check_keys(frames, ike_sas: list[dict], cipher: str) -> int:
    """Every encrypted message must open with the keys of the IKE SA its SPIs name."""
    by_spi = {(sa["spi_i"], sa["spi_r"]): sa for sa in ike_sas}
    opened = 0
    for frame in frames:
        if frame.exchange == "IKE_SA_INIT":
            continue
        sa = by_spi.get((frame.spi_i.hex(), frame.spi_r.hex()))
        if sa is None:
            raise StrongSwanError(f"frame {frame.frame}: SPIs of no recorded IKE SA")
        keys = sa["keys"]
        side = "i" if frame.from_initiator else "r"
        integ = bytes.fromhex(keys[f"Sk_a{side}"]) if f"Sk_a{side}" in keys else None
        open_sk(frame.message, bytes.fromhex(keys[f"Sk_e{side}"]), integ, cipher)
        opened += 1
    return opened


def record(version: str, suite: str, out_dir: Path) -> Path:
    ike_proposal, esp_proposal, cipher = SUITES[suite]
    stem = f"strongswan-{version}-{suite}"
    with Lab(ipv6=False) as lab:
        conf: dict[str, Any] = {"proposals": [ike_proposal], "esp_proposals": [esp_proposal]}
        gw_a = StrongSwan(lab, lab.gwA, version, [site_to_site(lab, "A", **conf)], log_keys=True).start()
        gw_b = StrongSwan(lab, lab.gwB, version, [site_to_site(lab, "B", **conf)], log_keys=True).start()
        pcap = lab.workdir / f"{stem}.pcap"
        try:
            with lab.capture(lab.gwA, lab.gwA.wan_iface, pcap, bpf=IKE_ONLY):
                sas = _exchange(gw_a, gw_b)
        except BaseException:
            print(f"--- gwA\n{gw_a.log_tail(80)}\n--- gwB\n{gw_b.log_tail(80)}", file=sys.stderr)
            raise
        keys_a, keys_b = gw_a.keys_from_log(), gw_b.keys_from_log()
        if len(keys_a) != 2 or keys_a != keys_b:
            raise StrongSwanError(f"expected the same 2 key sets on both sides, got {len(keys_a)}/{len(keys_b)}")
        ike_sas = [{"spi_i": sa["initiator-spi"], "spi_r": sa["responder-spi"],
                    "proposal": _proposal_text(sa), "keys": keys}
                   for sa, keys in zip(sas["ike_sas"], keys_a, strict=True)]
        frames = read_ike_frames(pcap)
        opened = _check_keys(frames, ike_sas, cipher)
        record = {
            "description": "strongSwan <-> strongSwan: IKE_SA_INIT, IKE_AUTH, CHILD_SA rekey, "
                           "IKE_SA rekey, delete; captured on gwA's public interface",
            "strongswan_version": gw_a.version_string(),
            "pcap": f"{stem}.pcap",
            "initiator": {"addr": lab.gwA.wan_addr4, "id": "gwa.lab"},
            "responder": {"addr": lab.gwB.wan_addr4, "id": "gwb.lab"},
            "psk_hex": LAB_PSK.hex(),  # the lab's published test PSK, not a secret
            "ike_proposal": ike_proposal,
            "esp_proposal": esp_proposal,
            "sk_cipher": cipher,
            "ike_sas": ike_sas,  # in order: the first IKE SA, then the one that rekeyed it
            "child_sas": [{"spi_in": c.get("spi-in"), "spi_out": c.get("spi-out"),
                           "proposal": _proposal_text(c)} for c in sas["child_sas"]],
            "messages": [f.summary() for f in frames],
            "encrypted_messages_checked": opened,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pcap, out_dir / f"{stem}.pcap")
        target = out_dir / f"{stem}.json"
        target.write_text(json.dumps(record, indent=2) + "\n")
        return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--version", action="append", choices=["5.9", "6.0"])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    args = parser.parse_args(argv)
    for version in args.version or ["5.9", "6.0"]:
        for suite in args.suite or sorted(SUITES):
            print(record(version, suite, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
