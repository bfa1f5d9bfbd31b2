"""SA proposals: strongSwan's proposal strings, selection, and the negotiated algorithms.

The keyword table follows strongSwan's proposal_keywords_static.txt (only the algorithms espgw
implements); selection follows libstrongswan's proposal.c: the responder walks its own proposals
in order and takes the first one any offered proposal matches, choosing in each transform type
the first of its own algorithms the offer contains.

Additional key exchanges (RFC 9370) are written as strongSwan does: ``ke1_mlkem768`` .. ``ke7_..``
put a key exchange method in transform type ADDKE1..7 (6..12); ``ke1_none`` makes that one
optional. Each ADDKE type is selected like the others, and is optional: a side that lists no
transform of a type, or lists NONE, lets it go unused (RFC 9370 s2.2.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ike.codec.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ike.codec.payloads import Proposal, Transform

__all__ = ["Choice", "Proposal", "Transform", "accept_answer", "choose", "format_proposal", "negotiated",
           "parse_proposals", "select_proposal"]


def _build_keywords() -> dict[str, Transform]:
    E, In, P, D, S = (TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.DH,
                      TransformType.ESN)
    table: dict[str, Transform] = {"aes": Transform(E, EncrId.AES_CBC, 128)}
    gcm = {8: EncrId.AES_GCM_8, 12: EncrId.AES_GCM_12, 16: EncrId.AES_GCM_16}
    for bits in (128, 192, 256):
        table[f"aes{bits}"] = Transform(E, EncrId.AES_CBC, bits)
        table[f"aes{bits}gcm"] = Transform(E, EncrId.AES_GCM_16, bits)
        for icv, encr_id in gcm.items():
            table[f"aes{bits}gcm{icv}"] = Transform(E, encr_id, bits)
            table[f"aes{bits}gcm{icv * 8}"] = Transform(E, encr_id, bits)
        table[f"aes{bits}gmac"] = Transform(E, EncrId.NULL_AUTH_AES_GMAC, bits)
    table["chacha20poly1305"] = Transform(E, EncrId.CHACHA20_POLY1305)
    for name, integ in (("sha", IntegId.HMAC_SHA1_96), ("sha1", IntegId.HMAC_SHA1_96),
                        ("sha256", IntegId.HMAC_SHA2_256_128), ("sha2_256", IntegId.HMAC_SHA2_256_128),
                        ("sha384", IntegId.HMAC_SHA2_384_192), ("sha2_384", IntegId.HMAC_SHA2_384_192),
                        ("sha512", IntegId.HMAC_SHA2_512_256), ("sha2_512", IntegId.HMAC_SHA2_512_256)):
        table[name] = Transform(In, integ)
    for name, prf_id in (("prfsha1", PrfId.HMAC_SHA1), ("prfsha256", PrfId.HMAC_SHA2_256),
                         ("prfsha384", PrfId.HMAC_SHA2_384), ("prfsha512", PrfId.HMAC_SHA2_512)):
        table[name] = Transform(P, prf_id)
    for name, dh_id in (("none", DhId.NONE), ("modpnone", DhId.NONE), ("modp2048", DhId.MODP2048),
                        ("modp3072", DhId.MODP3072), ("modp4096", DhId.MODP4096),
                        ("ecp256", DhId.ECP256), ("ecp384", DhId.ECP384), ("ecp521", DhId.ECP521),
                        ("x25519", DhId.CURVE25519), ("curve25519", DhId.CURVE25519),
                        ("mlkem512", DhId.ML_KEM_512), ("mlkem768", DhId.ML_KEM_768),
                        ("mlkem1024", DhId.ML_KEM_1024)):
        table[name] = Transform(D, dh_id)
    table["noesn"] = Transform(S, EsnId.NO_ESN)
    table["esn"] = Transform(S, EsnId.ESN)
    return table


KEYWORDS: dict[str, Transform] = _build_keywords()

# the name format_proposal prints for a transform: the first keyword listed for it, except aliases
_ALIASES = {"aes", "sha", "sha2_256", "sha2_384", "sha2_512", "modpnone", "curve25519"}
_NAMES: dict[Transform, str] = {}
for _kw, _tr in KEYWORDS.items():
    if _kw in _ALIASES or _kw.endswith(("gcm", "gcm64", "gcm96", "gcm128")):
        continue
    _NAMES.setdefault(_tr, _kw)

# keywords strongSwan knows that espgw deliberately does not implement
_UNSUPPORTED = ("3des", "des", "md5", "blowfish", "cast", "camellia", "serpent", "twofish", "ccm",
                "ctr", "xcbc", "cmac", "modp768", "modp1024", "modp1536", "modp6144", "modp8192",
                "ecp192", "ecp224", "ecp224bp", "ecp256bp", "ecp384bp", "ecp512bp", "x448",
                "curve448", "null", "sha1_160", "sha256_96", "default")

AEAD_ENCR = frozenset({EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16,
                       EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16,
                       EncrId.NULL_AUTH_AES_GMAC, EncrId.CHACHA20_POLY1305})
# IKE proposals without a prf keyword take the prf matching the integrity algorithm (strongSwan)
_INTEG_TO_PRF = {IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1, IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
                 IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384, IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512}
ADDKE_TYPES = (TransformType.ADDKE1, TransformType.ADDKE2, TransformType.ADDKE3, TransformType.ADDKE4,
               TransformType.ADDKE5, TransformType.ADDKE6, TransformType.ADDKE7)
KE_TYPES = frozenset((TransformType.DH, *ADDKE_TYPES))
_TYPE_ORDER = (TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.DH, *ADDKE_TYPES,
               TransformType.ESN)
_ADDKE_PREFIX = re.compile(r"ke([1-7])_(.+)")


def _lookup(keyword: str, text: str) -> Transform:
    addke = _ADDKE_PREFIX.fullmatch(keyword)
    if addke:  # "ke2_mlkem1024": a key exchange method as Additional Key Exchange 2
        method = _lookup(addke.group(2), text)
        if method.type != TransformType.DH:
            raise ValueError(f"{keyword!r} in proposal {text!r} is not a key exchange method")
        return Transform(ADDKE_TYPES[int(addke.group(1)) - 1], method.id)
    transform = KEYWORDS.get(keyword)
    if transform is not None:
        return transform
    if any(keyword.startswith(u) or keyword.endswith(u) or u in keyword for u in _UNSUPPORTED):
        raise ValueError(f"algorithm keyword {keyword!r} in proposal {text!r} is not supported by espgw")
    raise ValueError(f"unknown algorithm keyword {keyword!r} in proposal {text!r}")


def _parse_one(text: str, protocol: ProtocolId, number: int) -> Proposal:
    keywords = [kw.strip().lower() for kw in text.split("-")]
    if not text.strip() or any(not kw for kw in keywords):
        raise ValueError(f"empty algorithm keyword in proposal {text!r}")
    transforms: list[Transform] = []
    for kw in keywords:
        transform = _lookup(kw, text)
        if transform not in transforms:
            transforms.append(transform)

    def present(t: TransformType) -> list[Transform]:
        return [tr for tr in transforms if tr.type == t]

    encrs = present(TransformType.ENCR)
    if not encrs:
        raise ValueError(f"proposal {text!r} has no encryption algorithm")
    aead = [tr.id in AEAD_ENCR for tr in encrs]
    if any(aead) and not all(aead):
        raise ValueError(f"proposal {text!r} mixes AEAD and classic encryption algorithms")
    if all(aead):
        transforms = [tr for tr in transforms if tr.type != TransformType.INTEG]
    elif not present(TransformType.INTEG):
        raise ValueError(f"proposal {text!r} needs an integrity algorithm for its classic cipher")

    if protocol == ProtocolId.IKE:
        if any(tr.id == EncrId.NULL_AUTH_AES_GMAC for tr in encrs):
            raise ValueError(f"proposal {text!r}: AES-GMAC gives no confidentiality, not allowed for IKE")
        if not present(TransformType.PRF):
            for integ in present(TransformType.INTEG):
                prf = Transform(TransformType.PRF, _INTEG_TO_PRF[IntegId(integ.id)])
                if prf not in transforms:
                    transforms.append(prf)
        if not present(TransformType.PRF):
            raise ValueError(f"IKE proposal {text!r} has no pseudo-random function (e.g. prfsha256)")
        transforms = [tr for tr in transforms if not (tr.type == TransformType.DH and tr.id == DhId.NONE)]
        if not present(TransformType.DH):
            raise ValueError(f"IKE proposal {text!r} has no key exchange group (e.g. ecp256)")
        if present(TransformType.ESN):
            raise ValueError(f"IKE proposal {text!r} cannot contain esn/noesn")
    elif protocol == ProtocolId.ESP:
        transforms = [tr for tr in transforms if tr.type != TransformType.PRF]
        if not present(TransformType.ESN):
            transforms.append(Transform(TransformType.ESN, EsnId.NO_ESN))
    else:
        raise ValueError(f"proposals for protocol {protocol!r} are not supported")
    transforms.sort(key=lambda tr: _TYPE_ORDER.index(tr.type))
    return Proposal(protocol, transforms, number)


def parse_proposals(text: str | list[str] | tuple[str, ...], protocol: ProtocolId) -> list[Proposal]:
    """Parse strongSwan proposal strings ("a-b-c,d-e-f" or a list of them); numbered from 1."""
    parts = [text] if isinstance(text, str) else list(text)
    strings = [s.strip() for part in parts for s in part.split(",") if s.strip()]
    if not strings:
        raise ValueError("no proposals given")
    return [_parse_one(s, protocol, n) for n, s in enumerate(strings, start=1)]


def _transform_name(tr: Transform) -> str:
    if tr.type in ADDKE_TYPES:
        number = ADDKE_TYPES.index(TransformType(tr.type)) + 1
        return f"ke{number}_" + _transform_name(Transform(TransformType.DH, tr.id))
    name = _NAMES.get(tr)
    if name is not None:
        return name
    try:
        kind = {TransformType.ENCR: EncrId, TransformType.PRF: PrfId, TransformType.INTEG: IntegId,
                TransformType.DH: DhId, TransformType.ESN: EsnId}[TransformType(tr.type)]
        label = kind(tr.id).name
    except ValueError:
        label = f"UNKNOWN_{int(tr.type)}_{tr.id}"
    return f"{label}_{tr.key_length}" if tr.key_length else label


def format_proposal(p: Proposal) -> str:
    """strongSwan-style string, e.g. "aes256gcm16-prfsha256-ecp256" or "aes128-sha256-esn".

    The ESP default "noesn" is left out when it is the only ESN choice; algorithms espgw has no
    keyword for print as their IANA names (e.g. "AES_CCM_16_128").
    """
    ordered = sorted(p.transforms, key=lambda tr: _TYPE_ORDER.index(tr.type) if tr.type in _TYPE_ORDER else 99)
    esns = p.of_type(TransformType.ESN)
    if p.protocol == ProtocolId.ESP and [tr.id for tr in esns] == [EsnId.NO_ESN]:
        ordered = [tr for tr in ordered if tr.type != TransformType.ESN]
    return "-".join(_transform_name(tr) for tr in ordered)


def _select_type(own: list[Transform], offered: list[Transform], optional: bool) -> tuple[bool, Transform | None]:
    """strongSwan's select_algo for one transform type: (match found, chosen transform)."""
    if not own and not offered:
        return True, None
    if not own or not offered:
        # only a NONE on the side that has the type lets an optional (PFS) type go unused
        return optional and any(tr.id == 0 for tr in own or offered), None
    for mine in own:
        for theirs in offered:
            if mine.id == theirs.id and (mine.key_length or 0) == (theirs.key_length or 0):
                return True, mine
    return False, None


def _select_one(own: Proposal, offered: Proposal, skip_dh: bool) -> Proposal | None:
    if own.protocol != offered.protocol:
        return None
    chosen: list[Transform] = []
    aead = False
    types = list(_TYPE_ORDER) + sorted({tr.type for tr in offered.transforms} - set(_TYPE_ORDER))
    for t in types:
        if (t == TransformType.INTEG and aead) or (t in KE_TYPES and skip_dh):
            continue
        optional = (t not in _TYPE_ORDER or t in ADDKE_TYPES
                    or (t == TransformType.DH and own.protocol != ProtocolId.IKE))
        found, transform = _select_type(own.of_type(t), offered.of_type(t), optional)
        if not found:
            return None
        if transform is None or (transform.id == 0 and t != TransformType.ESN):
            continue
        chosen.append(transform)
        if t == TransformType.ENCR and transform.id in AEAD_ENCR:
            aead = True
    return Proposal(own.protocol, chosen, offered.number, offered.spi)


def _single_choice(p: Proposal) -> bool:
    """At most one transform of each type: what an answer (a selected proposal) must be."""
    types = [tr.type for tr in p.transforms]
    return len(types) == len(set(types))


def select_proposal(own: list[Proposal], offered: list[Proposal], *, skip_dh: bool = False,
                    answer: bool = False) -> Proposal | None:
    """The responder's choice by its OWN preference order, or None (NO_PROPOSAL_CHOSEN).

    The result has one transform of each type it uses, and the offered proposal's number and SPI;
    an additional key exchange type resolved to NONE, or unused, is left out. skip_dh ignores key
    exchange transforms (KE and ADDKE1..7), as for the CHILD SA created in IKE_AUTH (RFC 7296 s1.2:
    its proposals carry no KE; strongSwan's PROPOSAL_SKIP_KE). With ``answer`` the offered
    proposals are a peer's answer to our offer: one with two transforms of a type is refused here,
    so no exchange goes on with an answer ``negotiated`` cannot read.
    """
    for mine in own:
        for theirs in offered:
            if answer and not _single_choice(theirs):
                continue
            selected = _select_one(mine, theirs, skip_dh)
            if selected is not None:
                return selected
    return None


@dataclass(frozen=True)
class Choice:
    """A proposal both sides agree on and the algorithms it names."""

    proposal: Proposal
    negotiated: Negotiated


def choose(own: list[Proposal], offered: list[Proposal], *, skip_dh: bool = False) -> Choice | None:
    """Responder: our pick among the peer's offer, or None (NO_PROPOSAL_CHOSEN)."""
    chosen = select_proposal(own, offered, skip_dh=skip_dh)
    return _settle(chosen) if chosen is not None else None


def accept_answer(offer: list[Proposal], answer: list[Proposal], *, skip_dh: bool = False) -> Choice | None:
    """Initiator: the peer's answer if it is ONE proposal, with one transform per type, that our
    offer contains; else None (the answer is unacceptable: NO_PROPOSAL_CHOSEN)."""
    if len(answer) != 1 or select_proposal(offer, answer, skip_dh=skip_dh, answer=True) is None:
        return None
    return _settle(answer[0])


def _settle(p: Proposal) -> Choice | None:
    try:
        return Choice(p, negotiated(p))
    except ValueError:
        return None


def without_dh(proposals: list[Proposal]) -> list[Proposal]:
    """Copies without key exchange transforms, additional ones too (CHILD SA proposals sent in IKE_AUTH)."""
    return [Proposal(p.protocol, [tr for tr in p.transforms if tr.type not in KE_TYPES], p.number, p.spi)
            for p in proposals]


# per-algorithm sizes in bytes
INTEG_KEY_LEN = {IntegId.HMAC_SHA1_96: 20, IntegId.HMAC_SHA2_256_128: 32,
                 IntegId.HMAC_SHA2_384_192: 48, IntegId.HMAC_SHA2_512_256: 64}
INTEG_ICV_LEN = {IntegId.HMAC_SHA1_96: 12, IntegId.HMAC_SHA2_256_128: 16,
                 IntegId.HMAC_SHA2_384_192: 24, IntegId.HMAC_SHA2_512_256: 32}
_INTEG_NAME = {IntegId.HMAC_SHA1_96: "sha1", IntegId.HMAC_SHA2_256_128: "sha256",
               IntegId.HMAC_SHA2_384_192: "sha384", IntegId.HMAC_SHA2_512_256: "sha512"}
GCM_ICV_LEN = {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}
AEAD_SALT_LEN = 4  # RFC 4106/5282/7634: the salt follows the key in the keying material


@dataclass(frozen=True)
class Negotiated:
    """The chosen algorithms of a single-choice (selected) proposal."""

    encr: int
    encr_key_bits: int | None
    prf: int | None
    integ: int | None
    dh: int | None
    esn: bool = False
    protocol: ProtocolId = field(default=ProtocolId.IKE, compare=False)
    # RFC 9370 additional key exchanges in order: ((1..7, method), ...); NONE ones left out
    additional_ke: tuple[tuple[int, int], ...] = ()

    @property
    def aead(self) -> bool:
        return self.encr in AEAD_ENCR

    @property
    def encr_key_len(self) -> int:
        """Bytes of encryption keying material, including the salt of AEAD ciphers."""
        if self.encr == EncrId.CHACHA20_POLY1305:
            return 32 + AEAD_SALT_LEN
        if self.encr in (EncrId.AES_CBC, *GCM_ICV_LEN, EncrId.NULL_AUTH_AES_GMAC):
            if self.encr_key_bits not in (128, 192, 256):
                raise ValueError(f"AES needs a key length of 128, 192 or 256 bits, not {self.encr_key_bits}")
            salt = 0 if self.encr == EncrId.AES_CBC else AEAD_SALT_LEN
            return self.encr_key_bits // 8 + salt
        raise ValueError(f"encryption algorithm {_enum_name(EncrId, self.encr)} is not supported")

    @property
    def integ_key_len(self) -> int:
        if self.aead:
            return 0
        if self.integ not in INTEG_KEY_LEN:
            raise ValueError(f"integrity algorithm {_enum_name(IntegId, self.integ)} is not supported")
        return INTEG_KEY_LEN[IntegId(self.integ)]

    @property
    def esp_transform_name(self) -> str:
        """The esp/ transform name: "aes256gcm16", "aes128-sha256", "chacha20poly1305", "aes128gmac"."""
        bits = self.encr_key_bits
        if self.encr == EncrId.CHACHA20_POLY1305:
            return "chacha20poly1305"
        if self.encr in GCM_ICV_LEN and bits in (128, 192, 256):
            return f"aes{bits}gcm{GCM_ICV_LEN[EncrId(self.encr)]}"
        if self.encr == EncrId.NULL_AUTH_AES_GMAC and bits in (128, 192, 256):
            return f"aes{bits}gmac"
        if self.encr == EncrId.AES_CBC and bits in (128, 192, 256) and self.integ in _INTEG_NAME:
            return f"aes{bits}-{_INTEG_NAME[IntegId(self.integ)]}"
        raise ValueError(f"no ESP transform for {self.describe()}")

    def child_keymat_len(self) -> int:
        """ONE direction's ESP KEYMAT bytes: encryption key + salt + integrity key."""
        return self.encr_key_len + self.integ_key_len

    def describe(self) -> str:
        parts = [_enum_name(EncrId, self.encr) + (f"_{self.encr_key_bits}" if self.encr_key_bits else "")]
        parts += [_enum_name(k, v) for k, v in ((IntegId, self.integ), (PrfId, self.prf), (DhId, self.dh)) if v]
        parts += [f"KE{n}_{_enum_name(DhId, method)}" for n, method in self.additional_ke]
        return "/".join(parts) + ("/ESN" if self.esn else "")


def _enum_name(kind, value: int | None) -> str:
    try:
        return kind(value).name
    except ValueError:
        return f"UNKNOWN({value})"


def negotiated(p: Proposal) -> Negotiated:
    """The algorithms of a single-choice proposal (as select_proposal returns or a peer answers).

    ValueError if a type has several choices or a required one is missing.
    """
    def single(t: TransformType, required: bool) -> Transform | None:
        found = p.of_type(t)
        if len(found) > 1:
            raise ValueError(f"proposal {format_proposal(p)!r} has {len(found)} {t.name} transforms, not one")
        if required and not found:
            raise ValueError(f"proposal {format_proposal(p)!r} has no {t.name} transform")
        return found[0] if found else None

    encr = single(TransformType.ENCR, True)
    assert encr is not None  # required
    aead = encr.id in AEAD_ENCR
    integ = single(TransformType.INTEG, False)
    prf = single(TransformType.PRF, p.protocol == ProtocolId.IKE)
    dh = single(TransformType.DH, p.protocol == ProtocolId.IKE)
    esn = single(TransformType.ESN, False)
    additional = [(n, tr.id) for n, t in enumerate(ADDKE_TYPES, start=1)
                  for tr in [single(t, False)] if tr is not None and tr.id != DhId.NONE]
    if not aead and integ is None:
        raise ValueError(f"proposal {format_proposal(p)!r} has a classic cipher but no integrity algorithm")
    return Negotiated(
        encr=encr.id,
        encr_key_bits=encr.key_length,
        prf=prf.id if prf else None,
        integ=integ.id if integ and integ.id != IntegId.NONE and not aead else None,
        dh=dh.id if dh and dh.id != DhId.NONE else None,
        esn=bool(esn and esn.id == EsnId.ESN),
        protocol=p.protocol,
        additional_ke=tuple(additional),
    )
