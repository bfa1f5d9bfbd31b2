"""IKE_AUTH with certificates between two in-memory endpoints: every key type, both roles, a chain
through an intermediate, mixed PSK/pubkey, and the failures that end both sides cleanly."""

from __future__ import annotations

import pytest

from ike.config import AuthConfig
from ike.crypto.certs import LocalCredential, TrustStore, parse_private_key
from tests.ike.certs_helpers import NOW, cert, crl, fixture
from tests.ike.harness import ChildSaUp, IkeSaUp, NegotiationFailed, Pair, mirrored

OFFSET = NOW.timestamp()  # the harness clock starts at 0: map it to a time inside the fixtures' validity


def credential(cert_name: str, key_name: str, *intermediates: str) -> LocalCredential:
    return LocalCredential(cert(cert_name), parse_private_key(fixture(key_name)),
                           tuple(cert(i) for i in intermediates))


def sun() -> LocalCredential:
    from ike.crypto.certs import parse_certificate
    return LocalCredential(parse_certificate(fixture("sun.der")), parse_private_key(fixture("sun.key")))


CREDENTIALS = {
    "moon": lambda: credential("moon.crt", "moon.key"),
    "sun": sun,
    "carol": lambda: credential("carol.crt", "carol.key", "ica.crt"),
    "dave": lambda: credential("dave.crt", "dave.key"),
}


def store(**kw) -> TrustStore:
    return TrustStore(cas=[cert("ca.crt")], **kw)


def pubkey_pair(a_cred: str = "moon", b_cred: str = "sun", *, a_remote_id=None, b_remote_id=None,
                a_trust=None, b_trust=None, offset=OFFSET, a_pss=False, b_pss=False, a_local="pubkey",
                b_local="pubkey", **kw):
    a, b = mirrored(**kw)
    a.local = AuthConfig(a_local, credential=CREDENTIALS[a_cred]() if a_local == "pubkey" else None, rsa_pss=a_pss)
    b.local = AuthConfig(b_local, credential=CREDENTIALS[b_cred]() if b_local == "pubkey" else None, rsa_pss=b_pss)
    a.remote = AuthConfig(b_local, id=a_remote_id, trust=b_trust or store(), clock_offset=offset)
    b.remote = AuthConfig(a_local, id=b_remote_id, trust=a_trust or store(), clock_offset=offset)
    return a, b


def run(a, b, initiator="a"):
    pair = Pair([a], [b])
    (pair.a if initiator == "a" else pair.b).initiate("site", None, pair.now)
    pair.run()
    return pair


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("a_cred, b_cred, pss", [
    ("moon", "sun", False), ("moon", "sun", True), ("sun", "carol", False), ("carol", "moon", True)])
def test_certificates_both_roles(a_cred, b_cred, pss, initiator):
    a, b = pubkey_pair(a_cred, b_cred, a_pss=pss, b_pss=pss)
    pair = run(a, b, initiator)
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert ia.remote_id == str(CREDENTIALS[b_cred]().identity)
    assert ib.remote_id == str(CREDENTIALS[a_cred]().identity)
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


def test_remote_id_from_subject_alt_name():
    a, b = pubkey_pair(a_remote_id="sun.strongswan.org")
    b.local.id = "sun.strongswan.org"
    pair = run(a, b)
    (ia,) = pair.of("a", IkeSaUp)
    assert ia.remote_id == "sun.strongswan.org"


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_mixed_psk_and_pubkey(initiator):
    a, b = pubkey_pair(b_local="psk")  # a signs, b uses the PSK
    pair = run(a, b, initiator)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    [sa_a] = pair.a.status()
    assert sa_a["local_auth"].startswith("pubkey ") and sa_a["remote_auth"] == "psk"


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("case, reason", [
    ("expired", "expired"), ("not-yet-valid", "not-yet-valid"), ("untrusted", "untrusted"),
    ("revoked", "revoked"), ("id-mismatch", "identity")])
def test_failures_end_both_sides(case, reason, initiator):
    kw: dict = {}
    if case == "expired":
        kw["offset"] = OFFSET + 20 * 365 * 86400
    elif case == "not-yet-valid":
        kw["offset"] = 0.0
    elif case == "untrusted":
        kw["a_trust"] = kw["b_trust"] = TrustStore(cas=[cert("ica.crt")])
    elif case == "revoked":
        kw["a_cred"] = "dave"
        kw["b_trust"] = store()
        kw["a_trust"] = store(crls=[crl("ca.crl")])
    a, b = pubkey_pair(**kw)
    if case == "id-mismatch":
        a.local.id = "moon.example.com"  # not in moon's certificate
    pair = run(a, b, initiator)
    assert not pair.a.sas and not pair.b.sas
    texts = " ".join(e.message for side in "ab" for e in pair.of(side, NegotiationFailed))
    assert reason in texts or (reason == "identity" and "not in" in texts)
    assert not pair.of("a", ChildSaUp) or not pair.of("b", ChildSaUp)


def test_chain_follows_certreq():
    """The responder's CERTREQ names only the root CA: carol's intermediate goes along."""
    from ike.crypto.certs import chain_to_send, spki_sha1
    carol = CREDENTIALS["carol"]()
    assert chain_to_send(carol, [spki_sha1(cert("ca.crt"))], [cert("ca.crt")]) == [carol.certificate, cert("ica.crt")]
    assert chain_to_send(carol, [spki_sha1(cert("ica.crt"))]) == [carol.certificate]


def test_private_key_not_in_repr():
    a, _ = pubkey_pair()
    assert "PRIVATE" not in repr(a) and "key=" not in repr(a.local.credential)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_garbage_cert_is_authentication_failed(monkeypatch, initiator):
    """A peer whose CERT payload is not a certificate: AUTHENTICATION_FAILED, one clean line."""
    import ike.tasks.ike_auth as ike_auth
    from ike.codec.payloads import CertPayload

    real = ike_auth._own_auth

    def garbled(sa, cfg, initiator_side, id_payload, requested):
        out = real(sa, cfg, initiator_side, id_payload, requested)
        if cfg.local.credential is not None and "moon" in repr(cfg.local.credential):
            out = [CertPayload(4, b"\x30\x03garbage") if isinstance(q, CertPayload) else q for q in out]
        return out
    monkeypatch.setattr(ike_auth, "_own_auth", garbled)
    a, b = pubkey_pair()  # a (moon) sends garbage
    pair = run(a, b, initiator)
    assert not pair.a.sas and not pair.b.sas
    texts = [e.message for e in pair.of("b", NegotiationFailed)]
    assert any("garbage" in t for t in texts), texts
    assert all(e.notify == "AUTHENTICATION_FAILED" for side in "ab" for e in pair.of(side, NegotiationFailed))
