"""The IKE message codec (ike/message.py, ike/payloads.py, ike/skcipher.py).

Input: a mode byte, then
  mode 0: a whole datagram for decode(); what decodes must re-encode stably
          (decode(encode(m)) succeeds and encodes to the same bytes);
  mode 1: the type of the first payload, then a plaintext payload chain (what an SK payload
          carries) for decode_chain / decode_inner, with the same stability check;
  mode 2: a whole datagram opened with the keys of the recorded strongSwan fixtures (chosen by
          the SPIs and the I flag), then its inner chain decoded.
Invariant: only ike.codec.message.MessageError escapes decoding.
"""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_codec")

import json
from pathlib import Path

from ike.codec import message as codec
from ike.codec.constants import ProtocolId
from ike.crypto.proposals import negotiated, parse_proposals
from ike.crypto.skcipher import SkCipher

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "strongswan"
NON_ESP_MARKER = bytes(4)


def _ciphers() -> dict[bytes, tuple[SkCipher, SkCipher]]:
    """spi_i -> (initiator's cipher, responder's cipher) for every fixture IKE SA."""
    out = {}
    for path in sorted(FIXTURES.glob("*.json")):
        record = json.loads(path.read_text())
        neg = negotiated(parse_proposals(record["ike_proposal"], ProtocolId.IKE)[0])
        for sa in record["ike_sas"]:
            keys = {k: bytes.fromhex(v) for k, v in sa["keys"].items()}
            out[bytes.fromhex(sa["spi_i"])] = (
                SkCipher(neg, keys["Sk_ei"], keys.get("Sk_ai", b"")),
                SkCipher(neg, keys["Sk_er"], keys.get("Sk_ar", b"")))
    return out


CIPHERS = _ciphers()


def _stable(msg: codec.Message) -> None:
    once = codec.encode(msg)
    again = codec.decode(once)
    assert codec.encode(again) == once, "re-encoding what decoded is not stable"


def _stable_chain(first: int, chain: bytes) -> None:
    payloads = codec.decode_chain(first, chain)
    first2, once = codec.encode_chain(payloads)
    first3, again = codec.encode_chain(codec.decode_chain(first2, once))
    assert (first3, again) == (first2, once), "re-encoding a payload chain is not stable"


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    try:
        if mode == 0:
            _stable(codec.decode(body))
        elif mode == 1:
            if not body:
                return
            _stable_chain(body[0], body[1:])
            outer = codec.Message(bytes(8), bytes(8), 35, 1, True, False)
            codec.decode_inner(outer, body[0], body[1:])
        else:
            msg = codec.decode(body)
            pair = CIPHERS.get(msg.spi_i)
            if pair is None or codec.encrypted_payload(msg) is None:
                return
            cipher = pair[0] if msg.initiator else pair[1]
            plaintext = codec.open_sk(body, msg, cipher)
            sk = codec.encrypted_payload(msg)
            if isinstance(sk, codec.SkPayload):
                inner = codec.decode_inner(msg, sk.first_inner, plaintext)
                _stable_chain(sk.first_inner, codec.encode_chain(inner.payloads)[1])
    except codec.MessageError:
        pass


def fixture_messages() -> list[tuple[str, bytes]]:
    """(name, IKE message) for every frame of every fixture pcap, read with dpkt."""
    import dpkt

    out = []
    for pcap in sorted(FIXTURES.glob("*.pcap")):
        with pcap.open("rb") as f:
            for i, (_ts, frame) in enumerate(dpkt.pcap.Reader(f)):
                ip = dpkt.ethernet.Ethernet(frame).data
                udp = ip.data
                if not isinstance(udp, dpkt.udp.UDP):
                    continue
                payload = bytes(udp.data)
                if udp.dport == 4500 or udp.sport == 4500:
                    if not payload.startswith(NON_ESP_MARKER):
                        continue
                    payload = payload[4:]
                out.append((f"{pcap.stem}-{i:02d}", payload))
    return out


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, message in fixture_messages():
        out[f"msg-{name}"] = b"\x00" + message
        msg = codec.decode(message)
        pair = CIPHERS.get(msg.spi_i)
        sk = codec.encrypted_payload(msg)
        if pair is not None and isinstance(sk, codec.SkPayload):
            out[f"sk-{name}"] = b"\x02" + message
            plaintext = codec.open_sk(message, msg, pair[0] if msg.initiator else pair[1])
            out[f"chain-{name}"] = b"\x01" + bytes([sk.first_inner]) + plaintext
    # the project's own encoder: the genuine conversation of the responder harness
    import fuzz_ike_responder

    for k, rec in enumerate(fuzz_ike_responder.SCRIPT):
        out[f"own-msg-{k}"] = b"\x00" + rec.data
        if rec.plaintext is not None:
            out[f"own-chain-{k}"] = b"\x01" + bytes([rec.first_inner]) + rec.plaintext
    return out

