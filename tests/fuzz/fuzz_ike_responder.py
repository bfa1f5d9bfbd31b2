"""An IKE responder (ike.endpoint.IkeEndpoint) fed whole message sequences.

At import a genuine conversation is recorded: an in-memory initiator runs IKE_SA_INIT, IKE_AUTH,
a CHILD rekey, a liveness check, an IKE rekey, a CHILD delete and the IKE delete against a
responder whose rng is seeded. Each input then drives a fresh responder with the same seed, so a
genuine message replayed in order is valid for it, and the fuzzer mixes in its own. The input is
a list of records, each an op byte and its operands:
  op 0, k:            the k-th genuine initiator message (k modulo their number);
  op 1, len16, bytes: an arbitrary datagram from the initiator's address;
  op 2, k, len16, chain: genuine message k's header and keys, with ``chain`` (first byte = type of
                      the first payload) as the encrypted payload chain: reaches the handlers;
  op 3, secs16:       advance the clock and run the responder's timers.
Invariants: nothing escapes receive_datagram or handle_timer (the endpoint catches, counts as an
"internal error" drop and logs at error level what would: see fuzzlib.ERRORS), status() and
get_timer() still work, and for one input in 16 (chosen by a hash of the input, so replays
reproduce it) a fresh initiator still completes a handshake with the same responder afterwards.
"""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_responder")

import struct
import zlib

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, PayloadType
from ike.events import ChildSaUp, IkeSaUp
from ike.tasks.ike_dpd import IkeDpd

import fuzzlib
import ikepair
from ikepair import INITIATOR_IP, RESPONDER_IP

RESPONDER_SEED = 4303
INITIATOR_SEED = 7296
HANDSHAKE_CHECK_EVERY = 16
INTERNAL_ERROR = "internal error"


class Recorded:
    """One genuine initiator-to-responder datagram, with what is needed to re-seal its payloads."""

    def __init__(self, data: bytes, src, dst, cipher, plaintext: bytes | None, first_inner: int):
        self.data, self.src, self.dst = data, src, dst
        self.cipher = cipher  # the initiator's outbound SkCipher for this message (None: IKE_SA_INIT)
        self.plaintext, self.first_inner = plaintext, first_inner
        self.header = codec.parse_header(data)


def _record() -> list[Recorded]:
    a = ikepair.endpoint(ikepair.initiator_config(), INITIATOR_SEED)
    b = ikepair.endpoint(ikepair.responder_config(), RESPONDER_SEED)
    eps = {INITIATOR_IP: a, RESPONDER_IP: b}
    script: list[Recorded] = []

    def keep(sender, d):
        if sender is not a:
            return
        msg = codec.decode(d.data)
        cipher = plaintext = None
        first = 0
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            sa = a.sas[msg.spi_i if msg.initiator else msg.spi_r]
            cipher = sa.cipher_out
            plaintext = codec.open_sk(d.data, msg, cipher)
            first = codec.encrypted_payload(msg).first_inner
        script.append(Recorded(d.data, d.src, d.dst, cipher, plaintext, first))

    def only_sa():
        (sa,) = [s for s in a.sas.values() if s.state == "established"]
        return sa

    now = 0.0
    a.initiate("site", None, now)
    ikepair.pump(eps, now, on_deliver=keep)
    now = 10.0
    (child_spi,) = only_sa().children
    a.rekey_child(child_spi, now)
    ikepair.pump(eps, now, on_deliver=keep)
    now = 20.0
    only_sa().queue_task(IkeDpd(), now)
    ikepair.pump(eps, now, on_deliver=keep)
    now = 30.0
    sa = only_sa()
    sa.rekey_at = now
    a.reschedule(sa)
    a.handle_timer(now)
    ikepair.pump(eps, now, on_deliver=keep)
    now = 40.0
    a.terminate_child("net", now)
    ikepair.pump(eps, now, on_deliver=keep)
    now = 50.0
    a.terminate_ike("site", now)
    ikepair.pump(eps, now, on_deliver=keep)
    ups = [e for e in ikepair.drain(b) if isinstance(e, IkeSaUp)]
    assert len(ups) == 2 and len(script) >= 8, "the genuine conversation did not run through"
    return script


SCRIPT = _record()


def _reseal(rec: Recorded, chain: bytes) -> bytes | None:
    if rec.cipher is None or not chain:
        return None
    first, inner = chain[0], chain[1:]
    h = rec.header
    body_len = rec.cipher.encrypted_len(len(inner))
    total = codec.IKE_HEADER_LEN + 4 + body_len
    aad = h.header(PayloadType.SK, total) + struct.pack("!BBH", first, 0, 4 + body_len)
    counter = iter(range(1 << 30))
    return aad + rec.cipher.seal(aad, inner, lambda n: next(counter).to_bytes(n, "big"))


def _fresh_handshake_completes(b, now: float, seed: int) -> None:
    b.datagrams_to_send(now)  # answers to the fuzz input would go to the old initiator
    ikepair.drain(b)
    c = ikepair.endpoint(ikepair.initiator_config(), seed, now)
    c.initiate("site", None, now)
    ikepair.pump({INITIATOR_IP: c, RESPONDER_IP: b}, now)
    c_events = ikepair.drain(c)
    assert any(isinstance(e, IkeSaUp) for e in c_events), f"no fresh IKE SA: {c_events} {c.drops}"
    assert any(isinstance(e, ChildSaUp) for e in c_events), f"no fresh CHILD SA: {c_events}"
    assert any(isinstance(e, IkeSaUp) for e in ikepair.drain(b)), "responder did not report the SA"
    assert c.drops.get(INTERNAL_ERROR, 0) == 0, c.drops


def TestOneInput(data: bytes) -> None:
    fuzzlib.ERRORS.clear()
    b = ikepair.endpoint(ikepair.responder_config(), RESPONDER_SEED)
    now, pos, n = 0.0, 0, len(SCRIPT)
    while pos < len(data):
        op = data[pos] % 4
        pos += 1
        if op == 0 and pos < len(data):
            rec = SCRIPT[data[pos] % n]
            pos += 1
            b.receive_datagram(rec.data, rec.src, rec.dst, now)
        elif op == 1 and pos + 2 <= len(data):
            (size,) = struct.unpack_from("!H", data, pos)
            raw = data[pos + 2:pos + 2 + size]
            pos += 2 + size
            b.receive_datagram(raw, SCRIPT[0].src, SCRIPT[0].dst, now)
        elif op == 2 and pos + 3 <= len(data):
            rec = SCRIPT[data[pos] % n]
            (size,) = struct.unpack_from("!H", data, pos + 1)
            chain = data[pos + 3:pos + 3 + size]
            pos += 3 + size
            sealed = _reseal(rec, chain)
            if sealed is not None:
                b.receive_datagram(sealed, rec.src, rec.dst, now)
        elif op == 3 and pos + 2 <= len(data):
            (secs,) = struct.unpack_from("!H", data, pos)
            pos += 2
            now += secs
            b.handle_timer(now)
        else:
            break
        assert b.drops.get(INTERNAL_ERROR, 0) == 0 and not fuzzlib.ERRORS, \
            f"exception inside the endpoint: {b.drops} {fuzzlib.ERRORS}"
    b.datagrams_to_send(now)
    ikepair.drain(b)
    b.status()
    timer = b.get_timer()
    assert timer is None or timer == timer, "timer deadline is NaN"
    if zlib.crc32(data) % HANDSHAKE_CHECK_EVERY == 0:
        _fresh_handshake_completes(b, now, INITIATOR_SEED + 1 + zlib.crc32(data) % 1000)


# --- seeds -----------------------------------------------------------------------------------

def _genuine(k: int) -> bytes:
    return bytes([0, k])


def _raw(data: bytes) -> bytes:
    return bytes([1]) + struct.pack("!H", len(data)) + data


def _resealed(k: int) -> bytes:
    rec = SCRIPT[k]
    chain = bytes([rec.first_inner]) + rec.plaintext
    return bytes([2, k]) + struct.pack("!H", len(chain)) + chain


def _wait(secs: int) -> bytes:
    return bytes([3]) + struct.pack("!H", secs)


def seeds() -> dict[str, bytes]:
    n = len(SCRIPT)
    out = {"genuine-all": b"".join(_genuine(k) + _wait(5) for k in range(n)),
           "raw-init": _raw(SCRIPT[0].data),
           "raw-init-twice": _raw(SCRIPT[0].data) + _raw(SCRIPT[0].data),
           "init-then-timeout": _genuine(0) + _wait(40),
           "init-then-raw-auth": _genuine(0) + _raw(SCRIPT[1].data),
           "established-then-timers": _genuine(0) + _genuine(1) + _wait(3600) + _wait(3600)}
    for k in range(1, n):
        prefix = b"".join(_genuine(j) for j in range(k))
        out[f"resealed-{k}-{SCRIPT[k].header.exchange_name}"] = prefix + _resealed(k)
        out[f"raw-{k}"] = prefix + _raw(SCRIPT[k].data)
    return out
