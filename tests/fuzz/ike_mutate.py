"""Structure-aware mutation of a genuine IKE conversation: every exchange, both directions.

Not a harness itself: ``fuzz_ike_mutate_<kind>.py`` pick one kind of exchange each, so that
``bench.reliability_fuzz`` runs and reports every kind to its own number of executions.

The messages come from two genuine in-memory conversations between an initiator and a
responder (``ike_conversations``): site-to-site (IKE_SA_INIT, IKE_AUTH, a second CHILD SA, CHILD
rekeys by each side, an IKE rekey, DPD both ways, deletes) and remote access with hybrid
post-quantum keys and MOBIKE (IKE_INTERMEDIATE for ML-KEM, IKE_AUTH with virtual IPs from two
pools, CREATE_CHILD_SA with IKE_FOLLOWUP_KE for a new CHILD SA, a CHILD rekey and an IKE rekey,
UPDATE_SA_ADDRESSES from a new address with the return routability check). Each is recorded on
first use: every datagram with a snapshot of both endpoints taken just before its delivery, its
decrypted payloads and the sender's keys.

An input picks one recorded message of its kind (a request or a response, from either side),
decodes its payloads into objects and applies a list of structural mutations: drop, duplicate,
swap or insert payloads, change the fields of SA (proposals and transforms: duplicate types,
unknown IDs, SPI sizes), KE (other methods, ML-KEM lengths one byte off, values failing the
modulus check), Nonce, ID, AUTH, TS, Notify (data of each type's length or one off: COOKIE2,
ADDITIONAL_*_ADDRESS, UPDATE_SA_ADDRESSES, ADDITIONAL_KEY_EXCHANGE links, NAT hashes; related
types swapped), Delete and CP payloads (type; attributes' types, lengths and counts), repeat one
payload up to 40 times, flip the critical bit, change the header (message ID, flags, exchange
type), corrupt the encoded chain (lying lengths), or cut the message into RFC 7383 fragments.
The result is encrypted again with the sender's real keys, so it is authentic and reaches the
exchange handlers, and delivered to the receiver restored from the snapshot; both endpoints then
finish whatever follows and run their timers for five minutes.

Invariants: nothing escapes and nothing is caught inside the endpoints (no "internal error" drop,
no error-level log: ``fuzzlib.ERRORS``), ``status()`` and ``get_timer()`` work, and after those five
minutes neither side holds an IKE SA that never completed (no state stuck in CONNECTING), and a
pool's online leases are exactly the virtual IPs its live IKE SAs hold.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
import struct
from dataclasses import dataclass

from ike.codec import message as codec
from ike.config import TrafficSelector
from ike.codec.constants import CfgAttr, CfgType, DhId, NotifyType, PayloadType, TransformType
from ike.codec.payloads import (AuthPayload, CpPayload, DeletePayload, IdPayload, KePayload, NoncePayload,
                          NotifyPayload, Payload, SaPayload, TsPayload, UnknownPayload)
from ike.crypto.proposals import Proposal, Transform

import fuzzlib
import ike_conversations
import ikepair
from ike_conversations import ADDRESSES, Recorded

INTERNAL_ERROR = "internal error"
SETTLE_SECONDS = 300.0  # past retransmission give-up (~165 s) and the half-open timeout (30 s)
MAX_MUTATIONS = 8
MAX_PAYLOADS = 64  # a mutated message keeps at most this many payloads (the input bounds the rest)

KINDS = fuzzlib.MUTATED_EXCHANGES  # one harness module per kind


def records(kind: str) -> list[Recorded]:
    return ike_conversations.records(kind)


# --- input reading -----------------------------------------------------------------------------

class Reader:
    """Consumes the fuzz input; an exhausted input reads as zeros and empty bytes."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.u8() << 8 | self.u8()

    def take(self, limit: int) -> bytes:
        n = min(self.u16() % (limit + 1), self.left())
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def pick(self, items):
        return items[self.u8() % len(items)] if items else None


NOTIFY_TYPES = [int(t) for t in NotifyType]
TRANSFORM_TYPES = [int(t) for t in TransformType] + [0, 6, 13, 241, 255]
KE_METHODS = [DhId.ML_KEM_512, DhId.ML_KEM_768, DhId.ML_KEM_1024, DhId.CURVE25519, DhId.ECP256, DhId.MODP2048, 0]
# ML-KEM-768/1024 encapsulation keys (1184, 1568) and ciphertexts (1088, 1568), one byte off, x25519
KE_LENGTHS = [1184, 1088, 1568, 1183, 1185, 1087, 1089, 1567, 1569, 800, 768, 32, 0, 1]
CFG_TYPES = [int(t) for t in CfgType] + [0, 5, 255]
CFG_ATTRIBUTES = [int(t) for t in CfgAttr] + [0, 5, 9, 11, 16, 25, 0x4000, 0x7FFF]
# an IPv4 address (4), with a netmask or prefix (8, 5), an IPv6 address with prefix (17), and wrong
CFG_LENGTHS = [0, 4, 8, 16, 17, 5, 3, 1, 20, 255]
NOTIFY_DATA_LENGTHS = {
    NotifyType.UPDATE_SA_ADDRESSES: (0, 1, 4),
    NotifyType.NO_ADDITIONAL_ADDRESSES: (0, 1, 4),
    NotifyType.COOKIE2: (16, 0, 1, 7, 8, 64, 65, 300),
    NotifyType.ADDITIONAL_IP4_ADDRESS: (4, 0, 3, 5, 16),
    NotifyType.ADDITIONAL_IP6_ADDRESS: (16, 0, 4, 15, 17),
    NotifyType.ADDITIONAL_KEY_EXCHANGE: (8, 0, 1, 7, 9, 255),
    NotifyType.NAT_DETECTION_SOURCE_IP: (20, 0, 19, 21, 32),
    NotifyType.NAT_DETECTION_DESTINATION_IP: (20, 0, 19, 21, 32),
}
RELATED_NOTIFIES = {
    NotifyType.ADDITIONAL_IP4_ADDRESS: (NotifyType.ADDITIONAL_IP6_ADDRESS, NotifyType.NO_ADDITIONAL_ADDRESSES),
    NotifyType.ADDITIONAL_IP6_ADDRESS: (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.NO_ADDITIONAL_ADDRESSES),
    NotifyType.NO_ADDITIONAL_ADDRESSES: (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.UPDATE_SA_ADDRESSES),
    NotifyType.UPDATE_SA_ADDRESSES: (NotifyType.NO_ADDITIONAL_ADDRESSES, NotifyType.COOKIE2,
                                     NotifyType.MOBIKE_SUPPORTED),
    NotifyType.COOKIE2: (NotifyType.COOKIE, NotifyType.UPDATE_SA_ADDRESSES, NotifyType.ADDITIONAL_KEY_EXCHANGE),
    NotifyType.ADDITIONAL_KEY_EXCHANGE: (NotifyType.COOKIE2, NotifyType.REKEY_SA, NotifyType.INVALID_KE_PAYLOAD,
                                         NotifyType.STATE_NOT_FOUND),
}


def _transform(r: Reader) -> Transform:
    t_type = r.pick(TRANSFORM_TYPES)
    key_length = r.pick([None, 128, 192, 256, 0, 7, 65535])
    return Transform(t_type, r.u16() if r.u8() & 1 else r.u8() % 40, key_length)


def _mutate_sa(sa: SaPayload, r: Reader) -> None:
    if not sa.proposals:
        sa.proposals.append(Proposal(r.u8() % 5, [_transform(r)]))
        return
    i = r.u8() % len(sa.proposals)
    p = sa.proposals[i]
    transforms = list(p.transforms)
    op = r.u8() % 8
    if op == 0:
        transforms.append(_transform(r))  # a second transform of a type, or an unknown one
    elif op == 1 and transforms:
        transforms.append(transforms[r.u8() % len(transforms)])  # an exact duplicate
    elif op == 2 and transforms:
        del transforms[r.u8() % len(transforms)]
    elif op == 3 and transforms:
        k = r.u8() % len(transforms)
        transforms[k] = Transform(transforms[k].type, r.u16(), transforms[k].key_length)
    elif op == 4:
        transforms = []
    elif op == 5:
        sa.proposals[i] = Proposal(p.protocol, transforms, number=r.u8(), spi=r.take(16))
        return
    elif op == 6:
        sa.proposals[i] = Proposal(r.u8() % 6, transforms, number=p.number, spi=p.spi)
        return
    else:
        sa.proposals.insert(r.u8() % (len(sa.proposals) + 1), p)
    sa.proposals[i] = Proposal(p.protocol, transforms, number=p.number, spi=p.spi)


def _selector(r: Reader) -> TrafficSelector:
    v6 = r.u8() & 1
    size = 16 if v6 else 4
    start = ipaddress.ip_address(bytes(r.u8() for _ in range(size)))
    end = ipaddress.ip_address(bytes(r.u8() for _ in range(size)))
    return TrafficSelector(start, end, r.u8(), r.u16(), r.u16())


def _resize(data: bytes, length: int, r: Reader) -> bytes:
    """``data`` cut or extended (with input bytes, then 0xFF) to exactly ``length`` bytes."""
    if length <= len(data):
        return data[:length]
    extra = r.take(length - len(data))
    return data + extra + b"\xff" * (length - len(data) - len(extra))


def _mutate_ke(p: KePayload, r: Reader) -> None:
    op = r.u8() % 5
    if op == 0:
        p.group = r.u16()
    elif op == 1:
        p.data = p.data[:r.u16() % (len(p.data) + 1)] + r.take(600)
    elif op == 2:  # another known method: ML-KEM for a DH value, a DH group for an ML-KEM one
        p.group = r.pick(KE_METHODS)
    elif op == 3:  # an ML-KEM encapsulation key or ciphertext length, or one byte off either
        p.data = _resize(p.data, r.pick(KE_LENGTHS), r)
    else:  # the right length, a coefficient out of range (FIPS 203 modulus check) or a forged value
        if p.data:
            pos, n = r.u16() % len(p.data), r.u8() % 4 + 1
            p.data = (p.data[:pos] + bytes([r.u8() | 0xF0]) * n + p.data[pos + n:])[:len(p.data)]


def _attribute(r: Reader) -> tuple[int, bytes]:
    return r.pick(CFG_ATTRIBUTES), _resize(b"", r.pick(CFG_LENGTHS), r)


def _mutate_cp(p: CpPayload, r: Reader) -> None:
    """CP payloads: the type, and the attributes' types, lengths and counts."""
    attributes = list(p.attributes)
    op = r.u8() % 7
    i = r.u8() % len(attributes) if attributes else 0
    if op == 0:
        p.cfg_type = r.pick(CFG_TYPES)
    elif op == 1:
        attributes += [_attribute(r) for _ in range(r.u8() % 4 + 1)]
    elif op == 2 and attributes:
        del attributes[i]
    elif op == 3 and attributes:  # many of one: counts past what a client or pool expects
        attributes[i:i] = [attributes[i]] * (r.u8() % 40 + 1)
    elif op == 4 and attributes:
        attributes[i] = (r.pick(CFG_ATTRIBUTES), attributes[i][1])
    elif op == 5 and attributes:
        attributes[i] = (attributes[i][0], _resize(attributes[i][1], r.pick(CFG_LENGTHS), r))
    elif op == 6:
        attributes = []
    p.attributes = attributes[:MAX_PAYLOADS]


def _mutate_fields(p: Payload, r: Reader) -> Payload:
    """A copy of ``p`` with one field changed the way its type allows."""
    p = dataclasses.replace(p)
    if isinstance(p, SaPayload):
        p.proposals = list(p.proposals)
        _mutate_sa(p, r)
    elif isinstance(p, KePayload):
        _mutate_ke(p, r)
    elif isinstance(p, NoncePayload):
        p.data = r.take(300)
    elif isinstance(p, IdPayload):
        p.id_type, p.data = r.u8(), r.take(300)
    elif isinstance(p, AuthPayload):
        p.method = r.u8() if r.u8() & 1 else p.method
        p.data = p.data[:r.u8()] + r.take(64)
    elif isinstance(p, TsPayload):
        selectors = list(p.selectors)
        op = r.u8() % 3
        if op == 0:
            selectors.append(_selector(r))
        elif op == 1 and selectors:
            del selectors[r.u8() % len(selectors)]
        else:
            selectors = [_selector(r)] if r.u8() & 1 else []
        p.selectors = selectors
    elif isinstance(p, NotifyPayload):
        op = r.u8() % 5
        if op == 0:
            p.notify_type = r.pick(NOTIFY_TYPES) if r.u8() & 1 else r.u16()
        elif op == 1:
            p.data = r.take(300)
        elif op == 2:
            p.protocol, p.spi = r.u8() % 5, r.take(17)
        elif op == 3:  # the data this type carries, at a length just right or just wrong
            p.data = _resize(p.data, r.pick(NOTIFY_DATA_LENGTHS.get(p.notify_type, (0, 1, 4, 16))), r)
        else:  # the same data under a related type (IPv4 <-> IPv6 address, COOKIE <-> COOKIE2...)
            p.notify_type = r.pick(RELATED_NOTIFIES.get(p.notify_type, NOTIFY_TYPES))
    elif isinstance(p, DeletePayload):
        p.protocol, p.spi_size = r.u8() % 5, r.pick([0, 4, 8, 3])
        p.spis = [r.take(8) for _ in range(r.u8() % 4)]
    elif isinstance(p, CpPayload):
        _mutate_cp(p, r)
    else:
        p = UnknownPayload(payload_type=p.type, data=r.take(300), critical=p.critical)
    return p


@dataclass
class Mutant:
    header: codec.Message
    payloads: list[Payload]
    chain_edits: list[tuple[int, int, int]]  # (op, position, value) on the encoded inner chain
    fragment_limit: int | None = None


def mutate(rec: Recorded, r: Reader) -> Mutant:
    payloads = list(rec.payloads)
    h = rec.header
    header = codec.Message(h.spi_i, h.spi_r, h.exchange, h.message_id, h.initiator, h.response, [])
    m = Mutant(header, payloads, [])
    for _ in range(r.u8() % (MAX_MUTATIONS + 1)):
        op = r.u8() % 11
        i = r.u8() % len(payloads) if payloads else 0
        if op == 0 and payloads:
            del payloads[i]
        elif op == 1 and payloads:
            payloads.insert(r.u8() % (len(payloads) + 1), payloads[i])
        elif op == 2 and len(payloads) > 1:
            j = r.u8() % len(payloads)
            payloads[i], payloads[j] = payloads[j], payloads[i]
        elif op == 3:
            kind = r.pick([int(t) for t in PayloadType] + [r.u8()])
            payloads.insert(i, UnknownPayload(payload_type=kind, data=r.take(300), critical=bool(r.u8() & 1)))
        elif op in (4, 5) and payloads:
            payloads[i] = _mutate_fields(payloads[i], r)
        elif op == 6 and payloads:
            payloads[i] = dataclasses.replace(payloads[i], critical=not payloads[i].critical)
        elif op == 7:
            field_op = r.u8() % 4
            if field_op == 0:
                header.message_id = (header.message_id + r.pick([1, -1, 2, 1 << 31])) % (1 << 32)
            elif field_op == 1:
                header.response = not header.response
            elif field_op == 2:
                header.initiator = not header.initiator
            else:
                header.exchange = r.pick([34, 35, 36, 37, 38, 43, 0, 255])
        elif op == 8:
            m.chain_edits.append((r.u8() % 3, r.u16(), r.u8()))
        elif op == 10 and payloads:  # many of one (ADDITIONAL_*_ADDRESS past the 16 kept, KE, CP...)
            payloads[i:i] = [payloads[i]] * (r.u8() % 40 + 1)
        else:
            m.fragment_limit = 68 + r.u16() % 1200
        del payloads[MAX_PAYLOADS:]
    return m


def _edit(chain: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(chain)
    for op, pos, value in edits:
        if not out:
            break
        pos %= len(out)
        if op == 0:
            out[pos] = value  # a length, type or count byte becomes a lie
        elif op == 1:
            del out[pos:]
        else:
            out[pos:pos] = bytes([value]) * (value % 8 + 1)
    return bytes(out)


def encode(rec: Recorded, m: Mutant) -> list[bytes]:
    """The mutant as datagrams, encrypted with the sender's keys where the original was."""
    try:
        first, chain = codec.encode_chain(m.payloads)
    except (struct.error, ValueError, OverflowError, TypeError, AttributeError):
        return []  # a field the mutation set cannot be encoded at all: not an input for the receiver
    chain = _edit(chain, m.chain_edits)
    h = m.header
    if rec.cipher is None:
        body = codec.Message(h.spi_i, h.spi_r, h.exchange, h.message_id, h.initiator, h.response, [])
        data = codec.encode(body)
        whole = data[:16] + bytes([first]) + data[17:24] + struct.pack("!I", codec.IKE_HEADER_LEN + len(chain)) + chain
        return [whole]
    counter = iter(range(1 << 30))
    rng = lambda n: next(counter).to_bytes(n, "big")  # noqa: E731 - deterministic IVs: replayable inputs
    if m.fragment_limit is not None:
        return _seal_fragments(h, first, chain, rec.cipher, rng, m.fragment_limit)
    if 4 + rec.cipher.encrypted_len(len(chain)) > 0xFFFF:
        return []  # no SK payload holds that much (40 ML-KEM keys): only fragments can carry it
    return [_seal(h, first, chain, rec.cipher, rng)]


def _seal(h: codec.Message, first: int, chain: bytes, cipher, rng) -> bytes:
    body_len = cipher.encrypted_len(len(chain))
    total = codec.IKE_HEADER_LEN + 4 + body_len
    aad = h.header(PayloadType.SK, total) + struct.pack("!BBH", first, 0, 4 + body_len)
    return aad + cipher.seal(aad, chain, rng)


def _seal_fragments(h: codec.Message, first: int, chain: bytes, cipher, rng, limit: int) -> list[bytes]:
    """RFC 7383 fragments of an already encoded chain (first_inner only in fragment 1)."""
    step = max(1, limit - codec.IKE_HEADER_LEN - 8 - 64)
    pieces = [chain[i:i + step] for i in range(0, len(chain), step)] or [b""]
    pieces = pieces[:64]
    out = []
    for n, piece in enumerate(pieces, 1):
        body_len = cipher.encrypted_len(len(piece))
        total = codec.IKE_HEADER_LEN + 8 + body_len
        aad = (h.header(PayloadType.SKF, total)
               + struct.pack("!BBHHH", first if n == 1 else 0, 0, 8 + body_len, n, len(pieces)))
        out.append(aad + cipher.seal(aad, piece, rng))
    return out


# --- one input ---------------------------------------------------------------------------------

def run_one(kind: str, data: bytes) -> None:
    fuzzlib.ERRORS.clear()
    recorded = records(kind)
    r = Reader(data)
    rec = recorded[r.u8() % len(recorded)]
    a, b = pickle.loads(rec.snapshot)
    for ep in (a, b):  # the conversation had DPD; settling without it costs a fifth of the time
        for cfg in ep.connections.values():
            cfg.dpd_delay = 0.0
    receiver = (a, b)[ADDRESSES[rec.dst[0]]]
    for datagram in encode(rec, mutate(rec, r)):
        receiver.receive_datagram(datagram, rec.src, rec.dst, rec.now)
    _settle(a, b, rec.now)
    for ep in (a, b):
        assert ep.drops.get(INTERNAL_ERROR, 0) == 0 and not fuzzlib.ERRORS, \
            f"exception inside an endpoint: {ep.drops} {fuzzlib.ERRORS}"
        stuck = [s for s in ep.status() if str(s["state"]).lower().endswith("connecting")]
        assert not stuck, f"IKE SA stuck connecting after {SETTLE_SECONDS:.0f} s: {stuck}"
        _check_leases(ep)


def _check_leases(ep) -> None:
    """Every online lease of a pool is held by a live IKE SA, and every address an SA holds is an
    online lease: nothing leaked, nothing lent twice."""
    if not ep.pools:
        return
    online = sorted(lease["address"] for pool in ep.pools.values() for lease in pool.leases()
                    if lease["status"] == "online")
    held = sorted({vip for sa in ep.status() for vip in sa["remote_vips"]})
    assert online == held, f"pool leases online {online} but live IKE SAs hold {held}"


def _settle(a, b, now: float) -> None:
    """Let both endpoints finish what follows, then run their timers for SETTLE_SECONDS."""
    end = now + SETTLE_SECONDS
    for _ in range(400):
        moved = False
        for ep in (a, b):
            for d in ep.datagrams_to_send(now):
                index = ADDRESSES.get(d.dst[0])
                target = None if index is None else (a, b)[index]
                if target is not None:
                    target.receive_datagram(d.data, d.src, d.dst, now)
                    moved = True
        ikepair.drain(a)
        ikepair.drain(b)
        if moved:
            continue
        timers = [t for t in (a.get_timer(), b.get_timer()) if t is not None]
        assert all(t == t for t in timers), "timer deadline is NaN"
        if not timers or min(timers) > end:
            return
        now = max(now, min(timers))
        a.handle_timer(now)
        b.handle_timer(now)


# --- seeds -------------------------------------------------------------------------------------

def seeds(kind: str) -> dict[str, bytes]:
    """Per recorded message of the kind: delivered re-encoded but unchanged, and one mutation of
    each family (the fuzzer takes it from there)."""
    out = {}
    for k, rec in enumerate(records(kind)):
        name = f"{k}-{'resp' if rec.header.response else 'req'}-{'ir'[ADDRESSES[rec.src[0]]]}"
        out[f"{name}-same"] = bytes([k, 0])
        for op in range(11):
            out[f"{name}-op{op}"] = bytes([k, 1, op, 0, 1, 2, 3, 4, 5, 6, 7])
    return out
