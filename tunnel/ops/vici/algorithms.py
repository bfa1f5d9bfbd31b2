"""Negotiated proposals as charon names their algorithms in vici messages (list-sas) and reports.

Lives in ops, not in the daemon's vici module, because the lab's demo report names key exchanges
the same way without depending on the daemon.
"""

from __future__ import annotations

import re
from typing import Any

from tunnel.ops.vici.codec import EncodableMessage

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
