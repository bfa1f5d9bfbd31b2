"""IKE identities (RFC 7296 s3.5) in strongSwan's text syntax.

``192.0.2.1`` / ``2001:db8::1`` -> ID_IPV4_ADDR / ID_IPV6_ADDR, ``@#0a0b`` -> ID_KEY_ID (hex),
``@host.example`` or ``host.example`` -> ID_FQDN, ``user@host`` -> ID_RFC822_ADDR, ``%any`` matches
everything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ike.codec.constants import IdType

ANY_ID = "%any"  # a configured identity that accepts every peer


@dataclass(frozen=True)
class Identity:
    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR, addr.packed)
        if text.startswith("@#"):
            return cls(IdType.ID_KEY_ID, bytes.fromhex(text[2:]))
        if text.startswith("@"):
            return cls(IdType.ID_FQDN, text[1:].encode())
        if "@" in text:
            return cls(IdType.ID_RFC822_ADDR, text.encode())
        return cls(IdType.ID_FQDN, text.encode())

    @classmethod
    def of_address(cls, address: str) -> Identity:
        return cls.parse(str(ipaddress.ip_address(address)))

    def __str__(self) -> str:
        try:
            if self.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
                return str(ipaddress.ip_address(self.data))
            if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
                return self.data.decode("ascii", "replace")
            if self.id_type == IdType.ID_KEY_ID:
                return "@#" + self.data.hex()
        except ValueError:
            pass
        return f"{self.id_type}:{self.data.hex()}"


def id_matches(configured: str | None, peer: Identity) -> bool:
    """Whether the peer's identity satisfies a configured one (None or %any accept all)."""
    if configured is None or configured == ANY_ID:
        return True
    try:
        return Identity.parse(configured) == peer
    except ValueError:
        return False
