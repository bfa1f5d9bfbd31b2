"""ESP transforms, named as strongSwan names them in ``esp_proposals``.

A Transform only describes sizes; ``esp.crypto`` builds the keyed cipher
objects from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transform:
    name: str
    aead: bool
    enc_key_len: int
    salt_len: int
    integ_key_len: int
    icv_len: int
    iv_len: int
    align: int
    kind: str = "gcm"            # gcm | gmac | chacha | cbc
    integ_hash: str | None = None  # sha1 | sha256 | sha384 | sha512 for cbc

    @property
    def keymat_len(self) -> int:
        return self.enc_key_len + self.salt_len + self.integ_key_len


_HMAC = {  # strongSwan name -> (integrity key bytes, truncated ICV bytes); RFC 2404, RFC 4868
    "sha1": (20, 12),
    "sha256": (32, 16),
    "sha384": (48, 24),
    "sha512": (64, 32),
}


def _build() -> dict[str, Transform]:
    table: dict[str, Transform] = {}
    for bits in (128, 192, 256):
        key = bits // 8
        for icv in (8, 12, 16):
            table[f"aes{bits}gcm{icv}"] = Transform(
                f"aes{bits}gcm{icv}", True, key, 4, 0, icv, 8, 4, "gcm")
        table[f"aes{bits}gmac"] = Transform(f"aes{bits}gmac", True, key, 4, 0, 16, 8, 4, "gmac")
        for h, (ikey, icv) in _HMAC.items():
            name = f"aes{bits}-{h}"
            table[name] = Transform(name, False, key, 0, ikey, icv, 16, 16, "cbc", h)
    table["chacha20poly1305"] = Transform("chacha20poly1305", True, 32, 4, 0, 16, 8, 4, "chacha")
    return table


_TABLE = _build()
# strongSwan accepts "aesXXXgcm" as the 16-byte-ICV variant.
_ALIASES = {f"aes{b}gcm": f"aes{b}gcm16" for b in (128, 192, 256)}

TRANSFORM_NAMES: tuple[str, ...] = tuple(sorted(_TABLE)) + tuple(sorted(_ALIASES))


def transform_by_name(name: str) -> Transform:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _TABLE[key]
    except KeyError:
        raise ValueError(
            f"unknown ESP transform {name!r}; known: {', '.join(TRANSFORM_NAMES)}") from None
