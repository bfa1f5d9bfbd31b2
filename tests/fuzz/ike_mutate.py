"""Structure-aware mutation of a genuine IKE conversation: every exchange, both directions.

Not a harness itself: ``fuzz_ike_mutate_<kind>.py`` pick one kind of exchange each, so that
``bench.reliability_fuzz`` runs and reports every kind to its own number of executions.

At import an initiator and a responder (``ikepair`` configs, with a second CHILD SA, DPD, CHILD
and IKE rekeys) run a whole conversation in memory: IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA for a
new CHILD SA, CHILD rekeys started by each side, an IKE rekey, DPD both ways, a CHILD delete by
the responder and the IKE delete. Every datagram is recorded with a snapshot of both endpoints
taken just before its delivery, its decrypted payloads and the sender's keys.

An input picks one recorded message of its kind (a request or a response, from either side),
decodes its payloads into objects and applies a list of structural mutations: drop, duplicate,
swap or insert payloads, change the fields of SA (proposals and transforms: duplicate types,
unknown IDs, SPI sizes), KE, Nonce, ID, AUTH, TS, Notify, Delete and CP payloads, flip the
critical bit, change the header (message ID, flags, exchange type), corrupt the encoded chain
(lying lengths), or cut the message into RFC 7383 fragments. The result is encrypted again with
the sender's real keys, so it is authentic and reaches the exchange handlers, and delivered to
the receiver restored from the snapshot; both endpoints then finish whatever follows and run
their timers for five minutes.

Invariants: nothing escapes and nothing is caught inside the endpoints (no "internal error" drop,
no error-level log: ``fuzzlib.ERRORS``), ``status()`` and ``get_timer()`` work, and after those five
minutes neither side holds an IKE SA that never completed (no state stuck in CONNECTING).
"""

from __future__ import annotations

import copyreg
import dataclasses
import ipaddress
import pickle
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from ike.codec import message as codec
from ike.config import TrafficSelector
from ike.codec.constants import ExchangeType, NotifyType, PayloadType, TransformType
from ike.codec.payloads import (AuthPayload, CpPayload, DeletePayload, IdPayload, KePayload, NoncePayload,
                          NotifyPayload, Payload, SaPayload, TsPayload, UnknownPayload)
from ike.crypto.proposals import Proposal, Transform

import fuzzlib
import ikepair
from ikepair import INITIATOR_IP, RESPONDER_IP

INTERNAL_ERROR = "internal error"
SETTLE_SECONDS = 300.0  # past retransmission give-up (~165 s) and the half-open timeout (30 s)
MAX_MUTATIONS = 8
MAX_PAYLOADS = 64  # a mutated message keeps at most this many payloads (the input bounds the rest)

KINDS = fuzzlib.MUTATED_EXCHANGES  # one harness module per kind


def _pickle_x25519(key: x25519.X25519PrivateKey):
    """Snapshots hold an initiator's key exchange between request and response; cryptography's
    keys do not pickle by themselves."""
    return x25519.X25519PrivateKey.from_private_bytes, (key.private_bytes_raw(),)


copyreg.pickle(type(x25519.X25519PrivateKey.generate()), _pickle_x25519)


# --- the genuine conversation ------------------------------------------------------------------

@dataclass
class Recorded:
    """One genuine datagram, the state to deliver it into, and what re-sealing it needs."""

    kind: str
    data: bytes
    src: tuple[str, int]
    dst: tuple[str, int]
    now: float
    snapshot: bytes  # pickle of (initiator, responder) just before delivery
    cipher: object  # the sender's outbound SkCipher (None for IKE_SA_INIT)
    header: codec.Message
    payloads: list[Payload]  # decoded (inner) payloads


def _kind(msg: codec.Message, payloads: list[Payload]) -> str:
    if msg.exchange == ExchangeType.IKE_SA_INIT:
        return "ike_sa_init"
    if msg.exchange == ExchangeType.IKE_AUTH:
        return "ike_auth"
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        sa = next((p for p in payloads if isinstance(p, SaPayload)), None)
        if sa is not None and sa.proposals and sa.proposals[0].protocol == 1:
            return "rekey_ike"
        if any(isinstance(p, NotifyPayload) and p.notify_type == NotifyType.REKEY_SA for p in payloads):
            return "rekey_child"
        return "create_child"
    return "informational"


def _configs():
    init = ikepair.initiator_config()
    resp = ikepair.responder_config()
    for cfg, local, remote in ((init, "10.3.0.0/16", "10.4.0.0/16"), (resp, "10.4.0.0/16", "10.3.0.0/16")):
        second = dataclasses.replace(cfg.children[0], name="second", local_ts=[TrafficSelector.from_cidr(local)],
                                     remote_ts=[TrafficSelector.from_cidr(remote)])
        cfg.children.append(second)
        cfg.dpd_delay = 100.0
    init.rekey_time = 400.0  # the initiator rekeys the IKE SA; the responder never starts one
    # rekeys with PFS, so that CREATE_CHILD_SA carries KE payloads to mutate too
    init.children[0].esp_proposals = resp.children[0].esp_proposals = ["aes128gcm16-x25519"]
    return init, resp


def _cipher(sender, receiver, msg: codec.Message):
    """The keys ``msg`` is sealed with: the sender's outbound cipher, or the same keys as the
    receiver's inbound one (a responder that deleted its SA right after answering has none)."""
    ours, theirs = (msg.spi_i, msg.spi_r) if msg.initiator else (msg.spi_r, msg.spi_i)
    sa = sender.sas.get(ours)
    if sa is not None and sa.keys is not None:
        return sa.cipher_out
    sa = receiver.sas.get(theirs)
    return sa.cipher_in if sa is not None and sa.keys is not None else None


def _installed_child(ep, name: str) -> int:
    """The inbound SPI of the installed CHILD SA ``name`` (from the public status)."""
    for ike in ep.status():
        for child in ike["children"]:
            if child["name"] == name and str(child["state"]).lower().endswith("installed"):
                return int(child["inbound_spi"], 16)
    raise AssertionError(f"no installed CHILD SA {name}")


def _record() -> list[Recorded]:
    init, resp = _configs()
    a = ikepair.endpoint(init, 7296)
    b = ikepair.endpoint(resp, 4303)
    by_ip = {INITIATOR_IP: a, RESPONDER_IP: b}
    script: list[Recorded] = []
    queue: list = []
    kinds: dict[tuple, str] = {}  # a request's kind, for its response

    def collect(now: float) -> None:
        """Queue what both sent, with the sender's keys read now (an SA may be gone by delivery)."""
        for ep, peer in ((a, b), (b, a)):
            for d in ep.datagrams_to_send(now):
                msg = codec.decode(d.data)
                cipher, payloads = None, msg.payloads
                if msg.exchange != ExchangeType.IKE_SA_INIT:
                    cipher = _cipher(ep, peer, msg)
                    sk = codec.encrypted_payload(msg)
                    payloads = codec.decode_chain(sk.first_inner, codec.open_sk(d.data, msg, cipher))
                queue.append((d, msg, cipher, payloads))

    def pump(now: float) -> None:
        collect(now)
        while queue:
            d, msg, cipher, payloads = queue.pop(0)
            snapshot = pickle.dumps((a, b), protocol=pickle.HIGHEST_PROTOCOL)
            key = (msg.spi_i, msg.message_id, msg.initiator != msg.response)  # the request's sender
            kind = kinds.pop(key, None) if msg.response else None
            kind = kind or _kind(msg, payloads)
            if not msg.response:
                kinds[key] = kind
            script.append(Recorded(kind, d.data, d.src, d.dst, now, snapshot, cipher,
                                   codec.parse_header(d.data), payloads))
            by_ip[d.dst[0]].receive_datagram(d.data, d.src, d.dst, now)
            collect(now)
        ikepair.drain(a)
        ikepair.drain(b)

    a.initiate("site", None, 0.0)  # IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA for "second"
    pump(0.0)
    a.rekey_child(_installed_child(a, "net"), 10.0)
    pump(10.0)
    b.rekey_child(_installed_child(b, "net"), 20.0)
    pump(20.0)
    a.handle_timer(121.0)  # DPD from both sides (nothing arrived since 20 s)
    b.handle_timer(121.0)
    pump(121.0)
    now = 121.0
    while not any(r.kind == "rekey_ike" for r in script) and now < 500.0:  # rekey_time 400 s, jittered
        now = a.get_timer() or now + 10.0
        a.handle_timer(now)
        b.handle_timer(now)
        pump(now)
    b.terminate_child("second", now + 1.0)
    pump(now + 1.0)
    a.terminate_ike("site", now + 2.0)
    pump(now + 2.0)
    kinds = {r.kind for r in script}
    assert kinds == set(KINDS), f"the genuine conversation missed {set(KINDS) - kinds}"
    return script


SCRIPT = _record()
BY_KIND = {kind: [r for r in SCRIPT if r.kind == kind] for kind in KINDS}


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


def _mutate_fields(p: Payload, r: Reader) -> Payload:
    """A copy of ``p`` with one field changed the way its type allows."""
    p = dataclasses.replace(p)
    if isinstance(p, SaPayload):
        p.proposals = list(p.proposals)
        _mutate_sa(p, r)
    elif isinstance(p, KePayload):
        if r.u8() & 1:
            p.group = r.u16()
        else:
            p.data = p.data[:r.u16() % (len(p.data) + 1)] + r.take(600)
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
        op = r.u8() % 3
        if op == 0:
            p.notify_type = r.pick(NOTIFY_TYPES) if r.u8() & 1 else r.u16()
        elif op == 1:
            p.data = r.take(300)
        else:
            p.protocol, p.spi = r.u8() % 5, r.take(17)
    elif isinstance(p, DeletePayload):
        p.protocol, p.spi_size = r.u8() % 5, r.pick([0, 4, 8, 3])
        p.spis = [r.take(8) for _ in range(r.u8() % 4)]
    elif isinstance(p, CpPayload):
        p.cfg_type = r.u8() % 5
        p.attributes = list(p.attributes) + [(r.u16() & 0x7FFF, r.take(40)) for _ in range(r.u8() % 4)]
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
        op = r.u8() % 10
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
    records = BY_KIND[kind]
    r = Reader(data)
    rec = records[r.u8() % len(records)]
    a, b = pickle.loads(rec.snapshot)
    for ep in (a, b):  # the conversation had DPD; settling without it costs a fifth of the time
        for cfg in ep.connections.values():
            cfg.dpd_delay = 0.0
    by_ip = {INITIATOR_IP: a, RESPONDER_IP: b}
    receiver = by_ip[rec.dst[0]]
    for datagram in encode(rec, mutate(rec, r)):
        receiver.receive_datagram(datagram, rec.src, rec.dst, rec.now)
    _settle(a, b, by_ip, rec.now)
    for ep in (a, b):
        assert ep.drops.get(INTERNAL_ERROR, 0) == 0 and not fuzzlib.ERRORS, \
            f"exception inside an endpoint: {ep.drops} {fuzzlib.ERRORS}"
        stuck = [s for s in ep.status() if str(s["state"]).lower().endswith("connecting")]
        assert not stuck, f"IKE SA stuck connecting after {SETTLE_SECONDS:.0f} s: {stuck}"


def _settle(a, b, by_ip, now: float) -> None:
    """Let both endpoints finish what follows, then run their timers for SETTLE_SECONDS."""
    end = now + SETTLE_SECONDS
    for _ in range(400):
        moved = False
        for ep in (a, b):
            for d in ep.datagrams_to_send(now):
                target = by_ip.get(d.dst[0])
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
    for k, rec in enumerate(BY_KIND[kind]):
        name = f"{k}-{'resp' if rec.header.response else 'req'}-{'i' if rec.src[0] == INITIATOR_IP else 'r'}"
        out[f"{name}-same"] = bytes([k, 0])
        for op in range(10):
            out[f"{name}-op{op}"] = bytes([k, 1, op, 0, 1, 2, 3, 4, 5, 6, 7])
    return out
