"""One line of Wireshark's ``esp_sa`` UAT (epan/dissectors/packet-ipsec.c field
order: protocol, source, destination, SPI, encryption algorithm, encryption
key, authentication algorithm, authentication key).  Key material is the
point of this line: write it only to a debugging file you chose to create."""

from __future__ import annotations

from .crypto import split_keymat
from .transforms import Transform

_ENCR = {
    ("gcm", 8): "AES-GCM with 8 octet ICV [RFC4106]",
    ("gcm", 12): "AES-GCM with 12 octet ICV [RFC4106]",
    ("gcm", 16): "AES-GCM with 16 octet ICV [RFC4106]",
    ("cbc", 12): "AES-CBC [RFC3602]",
}
_AUTH = {
    "sha1": "HMAC-SHA-1-96 [RFC2404]",
    "sha256": "HMAC-SHA-256-128 [RFC4868]",
    "sha384": "HMAC-SHA-384-192 [RFC4868]",
    "sha512": "HMAC-SHA-512-256 [RFC4868]",
}


def esp_sa_line(*, family: str, src: str, dst: str, spi: int, transform: Transform,
                keymat: bytes) -> str:
    fam = {"ipv4": "IPv4", "ipv6": "IPv6", "4": "IPv4", "6": "IPv6"}.get(str(family).lower())
    if fam is None:
        raise ValueError(f"family must be ipv4 or ipv6, not {family!r}")
    enc, salt, integ = split_keymat(transform, keymat)
    if transform.kind == "gcm":
        encr, auth, akey = _ENCR[("gcm", transform.icv_len)], "NULL", ""
        ekey = enc + salt      # Wireshark takes the salt as the key's last 4 bytes
    elif transform.kind == "cbc":
        encr, auth, akey = "AES-CBC [RFC3602]", _AUTH[transform.integ_hash or ""], "0x" + integ.hex()
        ekey = enc
    else:
        raise ValueError(f"Wireshark 4.0 cannot decrypt ESP with {transform.name}")
    fields = [fam, src, dst, f"0x{spi:08x}", encr, "0x" + ekey.hex(), auth, akey]
    return ",".join(f'"{f}"' for f in fields)
