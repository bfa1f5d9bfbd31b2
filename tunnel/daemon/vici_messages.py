"""vici messages as charon spells them: list-sa, list-conn and log events from espgw's state.

swanctl prints these fields as they come (``swanctl --list-sas`` shows ``encr-alg``-``encr-keysize``
/ ``prf-alg`` / ``dh-group``), so the names follow strongSwan's, not espgw's.
"""

from __future__ import annotations

import re
from typing import Any

from ike.codec.ids import dn_to_text
from ike.config import AuthConfig, ConnectionConfig
from tunnel.ops.vici.codec import EncodableMessage


def log_message(name: str, text: str) -> EncodableMessage:
    return {"group": "IKE", "level": 1, "thread": 0, "ikesa-name": name, "msg": text}


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''}, {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if minutes else f"{secs} second{'s' if secs != 1 else ''}"


def ike_sa(sa: dict) -> EncodableMessage:
    """One IKE SA as charon's list-sa event describes it, from ``status.describe_ike``."""
    out: EncodableMessage = {
        "uniqueid": sa["unique_id"], "version": 2, "state": sa["state"],
        "local-host": str(sa["local_addr"]), "local-port": sa["local_port"], "local-id": sa["local_id"] or "%any",
        "remote-host": str(sa["remote_addr"]), "remote-port": sa["remote_port"],
        "remote-id": sa["remote_id"] or "%any",
        "initiator-spi": sa["spi_i"] or "0", "responder-spi": sa["spi_r"] or "0",
    }
    if sa["initiator"]:
        out["initiator"] = True
    if sa["nat_local"]:
        out["nat-local"] = True
    if sa["nat_remote"]:
        out["nat-remote"] = True
    if sa["nat_local"] or sa["nat_remote"]:
        out["nat-any"] = True
    out.update(algorithms(sa.get("proposal"), ike=True))
    if sa["established"] is not None:
        out["established"] = int(sa["established"])
    if sa["rekey_in"] is not None:
        out["rekey-time"] = max(0, int(sa["rekey_in"]))
    for key in ("local_vips", "remote_vips"):  # virtual IPs, as charon lists them
        if sa.get(key):
            out[key.replace("_", "-")] = list(sa[key])
    children: EncodableMessage = {}
    for child in sa["children"]:
        entry: EncodableMessage = {
            "name": child["name"], "uniqueid": child["unique_id"], "reqid": child["unique_id"],
            "state": child["state"], "mode": str(child.get("mode", "tunnel")).upper(), "protocol": "ESP",
            "spi-in": child.get("spi_in") or "0", "spi-out": child.get("spi_out") or "0",
        }
        if child.get("encap"):
            entry["encap"] = True
        entry.update(algorithms(child.get("proposal"), ike=False))
        for key in ("bytes_in", "packets_in", "bytes_out", "packets_out"):
            entry[key.replace("_", "-")] = child.get(key, 0)
        if child.get("rekey_in") is not None:
            entry["rekey-time"] = max(0, int(child["rekey_in"]))
        if child.get("expires_in") is not None:
            entry["life-time"] = max(0, int(child["expires_in"]))
        if child.get("installed") is not None:
            entry["install-time"] = int(child["installed"])
        entry["local-ts"] = [str(ts) for ts in child.get("local_ts", [])]
        entry["remote-ts"] = [str(ts) for ts in child.get("remote_ts", [])]
        children[f"{child['name']}-{child['unique_id']}"] = entry
    out["child-sas"] = children
    return out


_INTEG = {"sha1": "HMAC_SHA1_96", "sha256": "HMAC_SHA2_256_128", "sha384": "HMAC_SHA2_384_192",
          "sha512": "HMAC_SHA2_512_256"}
_DH = {"x25519": "CURVE_25519", "curve25519": "CURVE_25519", "x448": "CURVE_448", "curve448": "CURVE_448"}


def algorithms(proposal: Any, *, ike: bool) -> EncodableMessage:
    """``aes256gcm16-prfsha384-ecp384-ke1_mlkem768`` as strongSwan's encr-alg, encr-keysize,
    integ-alg, prf-alg and dh-group fields, and ``ake1``..``ake7`` for the additional key exchanges
    (RFC 9370; charon 6.1's vici_query.c lists them after dh-group, for IKE and CHILD SAs alike)."""
    out: EncodableMessage = {}
    additional: dict[int, str] = {}
    for token in str(proposal or "").lower().split("-"):
        if token.startswith("aes"):
            rest = token[3:]
            bits, _, mode = rest.partition("gcm")
            if "gcm" in rest:
                out["encr-alg"] = f"AES_GCM_{mode or '16'}"
            elif rest.endswith("ctr") or "ctr" in rest:
                bits = rest.replace("ctr", "")
                out["encr-alg"] = "AES_CTR"
            else:
                out["encr-alg"] = "AES_CBC"
            out["encr-keysize"] = int(bits) if bits.isdigit() else 128
        elif token.startswith("chacha20poly1305"):
            out["encr-alg"] = "CHACHA20_POLY1305"
            out["encr-keysize"] = 256
        elif token.startswith("prf"):
            out["prf-alg"] = "PRF_HMAC_" + token[3:].upper().replace("SHA", "SHA2_").replace("SHA2_1", "SHA1")
        elif token in _INTEG:
            out["integ-alg"] = _INTEG[token]
        elif (addke := _ADDKE.fullmatch(token)) is not None:
            method = key_exchange_name(addke.group(2))
            if method is not None:  # ke1_none: that optional exchange did not happen
                additional[int(addke.group(1))] = method
        elif (method := key_exchange_name(token)) is not None:
            out["dh-group"] = method
    for number in sorted(additional):
        out[f"ake{number}"] = additional[number]
    if not ike:
        out.pop("prf-alg", None)
    return out


_ADDKE = re.compile(r"ke([1-7])_(\w+)")


def key_exchange_name(token: str) -> str | None:
    """A key exchange keyword (``ecp384``, ``x25519``, ``mlkem768``) as charon's
    key_exchange_method_names spell it (``ECP_384``, ``CURVE_25519``, ``ML_KEM_768``); None for
    ``none`` and for anything that is no key exchange method."""
    if token.startswith("modp") and token[4:].isdigit():
        return f"MODP_{token[4:]}"
    if token.startswith("ecp") and token[3:].isdigit():
        return f"ECP_{token[3:]}"
    if token.startswith("mlkem") and token[5:].isdigit():
        return f"ML_KEM_{token[5:]}"
    return _DH.get(token)


def connection(conn: ConnectionConfig) -> EncodableMessage:
    """One connection as charon's list-conn event describes it."""
    children: EncodableMessage = {}
    for child in conn.children:
        children[child.name] = {
            "mode": "TUNNEL", "rekey_time": int(child.rekey_time), "rekey_bytes": child.rekey_bytes,
            "rekey_packets": child.rekey_packets, "dpd_action": child.dpd_action, "close_action": child.close_action,
            "local-ts": [str(ts) for ts in child.local_ts], "remote-ts": [str(ts) for ts in child.remote_ts],
        }
    return {
        "local_addrs": list(conn.local_addrs), "remote_addrs": list(conn.remote_addrs), "version": "IKEv2",
        "reauth_time": int(conn.reauth_time), "rekey_time": int(conn.rekey_time), "unique": conn.unique.upper(),
        "local-1": _auth_round(conn.local), "remote-1": _auth_round(conn.remote),
        "children": children,
    }


def _auth_round(auth: AuthConfig) -> EncodableMessage:
    """One side's authentication as list-conn shows it (charon lists a certificate by its subject)."""
    if auth.auth != "pubkey":
        return {"class": "pre-shared key", "id": auth.id or "%any"}
    out: EncodableMessage = {"class": "public key"}
    if auth.credential is not None:
        subject = dn_to_text(auth.credential.certificate.subject)
        out["id"] = auth.id or subject  # charon's default id: the certificate's subject
        out["certs"] = [subject]
    else:
        out["id"] = auth.id or "%any"
    return out
