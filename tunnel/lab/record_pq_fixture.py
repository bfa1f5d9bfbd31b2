"""Record a strongSwan 6.1 <-> 6.1 exchange with ML-KEM (RFC 9370) as a test fixture (root).

    .venv/bin/python -m tunnel.lab.record_pq_fixture [--out tests/fixtures/strongswan61]
        [--suite mlkem768 --suite x25519-mlkem768-mlkem1024]

Two charons from Debian unstable's strongSwan 6.1 (``ensure_sid_rootfs``) with one of SUITES,
e.g. IKE ``aes256gcm16-prfsha384-ecp384-ke1_mlkem768`` and ESP
``aes256gcm16-ecp384-ke1_mlkem768``: IKE_SA_INIT, one IKE_INTERMEDIATE per additional key
exchange, IKE_AUTH, a CHILD_SA rekey and an IKE_SA rekey (each CREATE_CHILD_SA, then one
IKE_FOLLOWUP_KE per additional key exchange, and an INFORMATIONAL delete), and a final delete.
Writes ``strongswan-6.1-SUITE.pcap`` (IKE only, gwA's public interface) and ``.json`` with every
value both charons dumped at ``ike = 4``/``chd = 4``: key exchange secrets, SKEYSEED and SK_* of
each key update, the IntAuth inputs and results, the AUTH octets, the CHILD SA KEYMAT inputs and
keys. The PSK is the lab's published one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tunnel.lab.configs import LAB_PSK, site_to_site
from tunnel.lab.ike_pcap import PAYLOAD_SKF, open_sk, open_skf, read_ike_frames
from tunnel.lab.netns import Lab
from tunnel.lab.record_fixtures import IKE_ONLY, _exchange
from tunnel.lab.strongswan import StrongSwan, StrongSwanError, parse_logged_dumps

SUITES = {  # name: (IKE proposal, ESP proposal, number of additional key exchanges)
    "mlkem768": ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768", "aes256gcm16-ecp384-ke1_mlkem768", 1),
    "x25519-mlkem768-mlkem1024": ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
                                  "aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024", 2),
}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "strongswan61"
# what the fixture keeps of charon's dumps (NAT-D hashes and the like are left out)
_KEPT = ("key exchange secret", "additional key exchange secret", "nonces", "SKEYSEED",
         "Sk_d secret", "Sk_ai secret", "Sk_ar secret", "Sk_ei secret", "Sk_er secret",
         "Sk_pi secret", "Sk_pr secret", "IntAuth_N-1", "IntAuth_A|P", "SK_p",
         "IntAuth_N = prf(Sk_px, data)", "IDx'", "octets = message + nonce + prf(Sk_px, IDx') + IntAuth",
         "AUTH = prf(prf(secret, keypad), octets)", "seed", "encryption initiator key",
         "encryption responder key")


def _proposal_text(sa: dict) -> str:
    parts = [sa.get("encr-alg", "") + ("-" + sa["encr-keysize"] if sa.get("encr-keysize") else "")]
    parts += [sa[k] for k in ("integ-alg", "prf-alg", "dh-group") if sa.get(k)]
    parts += [f"KE{n}_{sa[f'ake{n}']}" for n in range(1, 8) if sa.get(f"ake{n}")]
    return "/".join(parts)


def _opened_by(frames, key_sets: list[dict[str, str]]) -> list[int | None]:
    """For each frame, the index of the logged SK_* set that opens its SK payload (or None)."""
    found: list[int | None] = []
    for frame in frames:
        if frame.exchange == "IKE_SA_INIT":
            found.append(None)
            continue
        side = "i" if frame.from_initiator else "r"
        for index, keys in enumerate(key_sets):
            key = bytes.fromhex(keys[f"Sk_e{side}"])
            try:
                if frame.next_payload == PAYLOAD_SKF:  # IKE_FOLLOWUP_KE with ML-KEM is fragmented
                    open_skf(frame.message, key)
                else:
                    open_sk(frame.message, key, None, "aes-gcm-16")
            except ValueError:
                continue
            found.append(index)
            break
        else:
            raise StrongSwanError(f"frame {frame.frame} ({frame.exchange}) opens with no logged key set")
    return found


def _key_sets(dumps: list[dict[str, str]]) -> list[dict[str, str]]:
    sets: list[dict[str, str]] = []
    for entry in dumps:
        if entry["name"] == "Sk_d secret":
            sets.append({})
        if entry["name"].startswith("Sk_") and entry["name"].endswith(" secret"):
            sets[-1][entry["name"].split()[0]] = entry["hex"]
    return sets


def record(out_dir: Path, suite: str = "mlkem768") -> Path:
    ike_proposal, esp_proposal, additional = SUITES[suite]
    stem = f"strongswan-6.1-{suite}"
    with Lab(ipv6=False) as lab:
        conns = [site_to_site(lab, side, proposals=[ike_proposal], esp_proposals=[esp_proposal])
                 for side in ("A", "B")]
        gw_a = StrongSwan(lab, lab.gwA, "6.1", [conns[0]], log_keys=True).start()
        gw_b = StrongSwan(lab, lab.gwB, "6.1", [conns[1]], log_keys=True).start()
        pcap = lab.workdir / f"{stem}.pcap"
        try:
            with lab.capture(lab.gwA, lab.gwA.wan_iface, pcap, bpf=IKE_ONLY):
                sas = _exchange(gw_a, gw_b)
        except BaseException:
            print(f"--- gwA\n{gw_a.log_tail(80)}\n--- gwB\n{gw_b.log_tail(80)}", file=sys.stderr)
            raise
        dumps = {role: [d for d in parse_logged_dumps(gw.log_text()) if d["name"] in _KEPT]
                 for role, gw in (("gwA", gw_a), ("gwB", gw_b))}
        sets_a, sets_b = _key_sets(dumps["gwA"]), _key_sets(dumps["gwB"])
        expected = additional + 2  # IKE_SA_INIT, one per IKE_INTERMEDIATE, the rekeyed IKE SA
        if sets_a != sets_b or len(sets_a) != expected:
            raise StrongSwanError(f"expected the same {expected} SK_* sets on both sides, "
                                  f"got {len(sets_a)}/{len(sets_b)}")
        frames = read_ike_frames(pcap)
        opened_by = _opened_by(frames, sets_a)
        messages = [{**f.summary(), "key_set": k} for f, k in zip(frames, opened_by, strict=True)]
        record = {
            "description": f"strongSwan 6.1 <-> 6.1 with {additional} additional key exchange(s): "
                           "IKE_SA_INIT, IKE_INTERMEDIATE (one per additional key exchange), IKE_AUTH, "
                           "CHILD_SA rekey and IKE_SA rekey (CREATE_CHILD_SA + IKE_FOLLOWUP_KE per "
                           "additional key exchange, then a delete), delete; captured on gwA's public "
                           "interface",
            "strongswan_version": gw_a.version_string(),
            "pcap": f"{stem}.pcap",
            "initiator": {"addr": lab.gwA.wan_addr4, "id": "gwa.lab"},
            "responder": {"addr": lab.gwB.wan_addr4, "id": "gwb.lab"},
            "psk_hex": LAB_PSK.hex(),  # the lab's published test PSK, not a secret
            "ike_proposal": ike_proposal,
            "esp_proposal": esp_proposal,
            "sk_cipher": "aes-gcm-16",
            "ike_sas": [{"spi_i": sa["initiator-spi"], "spi_r": sa["responder-spi"],
                         "proposal": _proposal_text(sa)} for sa in sas["ike_sas"]],
            "child_sas": [{"spi_in": c.get("spi-in"), "spi_out": c.get("spi-out"),
                           "proposal": _proposal_text(c)} for c in sas["child_sas"]],
            "key_sets": sets_a,  # every SK_* set in the order charon derived them
            "messages": messages,  # key_set: the index of the set that opens the SK payload
            "logged": dumps,  # charon's dumps in log order, per gateway (thread ids as logged)
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pcap, out_dir / f"{stem}.pcap")
        target = out_dir / f"{stem}.json"
        target.write_text(json.dumps(record, indent=1) + "\n")
        return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    args = parser.parse_args(argv)
    for suite in args.suite or sorted(SUITES):
        print(record(args.out, suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
