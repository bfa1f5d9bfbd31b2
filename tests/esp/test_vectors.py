"""Every published vector under rfc-vectors/esp/, reproduced to the byte."""

from __future__ import annotations

import pytest

from esp.crypto import HEADER, cbc_decrypt, cbc_encrypt, hmac_icv, make_sealer
from esp.outer import ipv4_checksum
from esp.padding import strip_trailer, trailer
from esp.sa import InboundSA
from esp.transforms import transform_by_name

from tests.esp.helpers import VECTOR_DIR, h, load

GCM = load("draft-mcgrew-gcm-test-01.json")


def test_every_vector_file_is_covered():
    covered = {"draft-mcgrew-gcm-test-01.json", "rfc3602-s4.json", "rfc4231-s4.json",
               "rfc4868-s2.7.json", "rfc7634-appA.json"}
    assert {p.name for p in VECTOR_DIR.glob("*.json")} == covered
    for name in covered:
        doc = load(name)
        assert doc["source"] and doc["section"]


@pytest.mark.parametrize("v", GCM["vectors"], ids=lambda v: v["name"])
def test_gcm_gmac_draft_both_directions(v):
    t = transform_by_name(v["transform"])
    nonce = h(v["nonce"])
    salt, iv = nonce[:4], nonce[4:]
    keymat = h(v["key"]) + salt
    seq_field = h(v["seq"])
    esn = len(seq_field) == 8
    seq = int.from_bytes(seq_field, "big")
    spi = int(v["spi"], 16)
    packet = h(v["packet"])
    aad = h(v["aad"])
    # GMAC encrypts nothing: the ESP payload travels in the AAD after SPI|seq|IV
    plaintext = aad[16:] if t.kind == "gmac" else h(v["plaintext"])

    seal = make_sealer(t, keymat, spi, esn)
    assert seal(seq, iv, plaintext) == packet
    # the AAD the draft lists is what we authenticate (GCM: SPI|seq; GMAC: the whole packet)
    if t.kind == "gmac":
        assert aad == packet[:-16] and packet[-16:] == h(v["ctext_tag"])
    else:
        assert aad == (HEADER.pack(spi, seq) if not esn else aad[:4] + seq_field)
        assert packet[16:] == h(v["ctext_tag"])

    sa = InboundSA(spi, t, keymat, esn=esn)
    sa.replay.reset(seq - 1)
    expected = strip_trailer(plaintext)
    assert expected is not None
    assert sa.decapsulate(packet) == expected
    assert sa.counters.packets == 1


def test_rfc7634_esp_example_both_directions():
    v = load("rfc7634-appA.json")
    t = transform_by_name(v["transform"])
    keymat = h(v["key"]) + h(v["salt"])
    spi, seq = int(v["spi"], 16), int(v["seq"], 16)
    packet = HEADER.pack(spi, seq) + h(v["iv"]) + h(v["ciphertext_tag"])
    assert packet[:8] == h(v["aad"])
    assert make_sealer(t, keymat, spi, False)(seq, h(v["iv"]), h(v["plaintext"])) == packet
    sa = InboundSA(spi, t, keymat)
    nh, inner = sa.decapsulate(packet)
    assert nh == 4 and inner == h(v["plaintext"])[:84]


def test_rfc3602_cbc_cases():
    doc = load("rfc3602-s4.json")
    for c in doc["cipher_cases"]:
        key, iv = h(c["key"]), h(c["iv"])
        assert cbc_encrypt(key, iv, h(c["plaintext"])) == h(c["ciphertext"]), c["case"]
        assert cbc_decrypt(key, iv, h(c["ciphertext"])) == h(c["plaintext"]), c["case"]


def test_rfc3602_esp_packet_case5():
    c = load("rfc3602-s4.json")["esp_cases"][0]
    key, iv, data = h(c["key"]), h(c["iv"]), h(c["data"])
    padded = data + trailer(len(data), c["next_header"], 16)
    assert padded == h(c["padded"])          # RFC 4303 s2.4 padding 1, 2, 3, ...
    assert cbc_encrypt(key, iv, padded) == h(c["encrypted"])
    assert strip_trailer(cbc_decrypt(key, iv, h(c["encrypted"]))) == (c["next_header"], data)
    # the outer header the RFC shows has a valid checksum and the right length
    hdr = h(c["esp_ip_header"])
    assert ipv4_checksum(hdr) == 0
    assert int.from_bytes(hdr[2:4], "big") == 20 + 8 + 16 + len(h(c["encrypted"]))
    assert HEADER.pack(int(c["spi"], 16), c["seq"]) == h("0000432100000001")


RFC3602_ESP = load("rfc3602-s4.json")["esp_cases"]


def test_rfc3602_has_every_case():
    doc = load("rfc3602-s4.json")
    assert [c["case"] for c in doc["cipher_cases"]] == [1, 2, 3, 4]
    assert [c["case"] for c in RFC3602_ESP] == [5, 6, 7, 8]


@pytest.mark.parametrize("c", RFC3602_ESP, ids=lambda c: f"case{c['case']}")
def test_rfc3602_esp_packets_through_the_sa(c):
    """The RFC's unauthenticated packets are our aes128-sha1 packets minus the ICV."""
    key, iv, data, nh = h(c["key"]), h(c["iv"]), h(c["data"]), c["next_header"]
    spi, seq = int(c["spi"], 16), c["seq"]
    padded = data + trailer(len(data), nh, 16)
    assert padded == h(c["padded"])
    rfc_packet = HEADER.pack(spi, seq) + iv + h(c["encrypted"])
    t = transform_by_name("aes128-sha1")
    keymat = key + bytes(range(20))                 # the RFC's cases carry no integrity key
    packet = make_sealer(t, keymat, spi, False)(seq, iv, padded)
    assert packet[:-t.icv_len] == rfc_packet
    sa = InboundSA(spi, t, keymat)
    assert sa.decapsulate(packet) == (nh, data)
    if nh == 4:                                     # tunnel mode: a whole inner IPv4 packet
        assert ipv4_checksum(data[:20]) == 0 and int.from_bytes(data[2:4], "big") == len(data)


def test_rfc4231_hmac_sha2():
    for v in load("rfc4231-s4.json")["vectors"]:
        for hash_name, out in v["hmac"].items():
            expected = h(out)
            got = hmac_icv(hash_name, h(v["key"]), h(v["data"]), len(expected))
            assert got == expected, (v["case"], hash_name)


def test_rfc4868_prf_and_authenticator():
    doc = load("rfc4868-s2.7.json")
    for v in doc["prf"]:
        out = h(v["output"])
        assert hmac_icv(v["hash"], h(v["key"]), h(v["data"]), len(out)) == out
    names = {"sha256": "aes128-sha256", "sha384": "aes128-sha384", "sha512": "aes128-sha512"}
    for v in doc["authenticator"]:
        t = transform_by_name(names[v["hash"]])
        key = h(v["key"])
        assert len(key) == t.integ_key_len          # RFC 4868 s2.1.1 key sizes
        assert hmac_icv(v["hash"], key, h(v["data"]), t.icv_len) == h(v["icv"])
