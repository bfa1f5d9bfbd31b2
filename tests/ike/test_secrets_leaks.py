"""Secrets stay secret: with debug logging on, no log line, error text, repr() or str() holds the
PSK or any key byte (raw, hex in either case, base64), through a handshake, CHILD and IKE rekeys,
deletes, an authentication failure and configuration errors; and once an SA is gone, nothing
reachable from the endpoint still holds its keys."""

from __future__ import annotations

import base64
import gc
import io
import json
import types

import pytest
import structlog

from esp.crypto import split_keymat
from esp.errors import Drop, SAExpired
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.transforms import transform_by_name
from ike.crypto.keys import PSK_KEY_PAD, prf
from tests.ike.harness import ChildSaUp, IkeSaUp, NegotiationFailed, Pair, mirrored
from tunnel.ops.config import ConfigError, parse_config
from tunnel.ops.log import configure_logging

PSK = b"Tr0ub4dor&3-espgw-secrets-test-psk"
WRONG_PSK = b"a-different-psk-that-must-not-leak"
SUITES = [("aes256gcm16-prfsha256-ecp256", "aes256gcm16-ecp256"),
          ("aes128-sha256-prfsha384-x25519", "aes128-sha256")]
WINDOW, STEP = 10, 5  # also catch a leaked piece of a key: any 10-byte run, every 5 bytes


class SecretBook:
    """Every secret seen so far, and the ways it could show up in text."""

    def __init__(self):
        self.secrets: dict[bytes, str] = {}

    def add(self, name: str, value: bytes | None) -> None:
        if value and len(value) >= 8:  # 4-byte AEAD salts alone are not searchable
            self.secrets.setdefault(bytes(value), name)

    def add_endpoint(self, ep) -> None:
        for sa in ep.sas.values():
            if sa.keys is not None:
                for field in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
                    key = getattr(sa.keys, field)
                    self.add(f"{field} of IKE SA {sa.unique_id}", key)
                    if sa.neg is not None and sa.neg.aead and field.startswith("sk_e"):
                        self.add(f"{field} without salt", key[:-4])
                self.add("psk pad key", prf(sa.neg.prf, sa.config.psk, PSK_KEY_PAD))
            for child in sa.children.values():
                self.add_keymat(child.esp_transform, child.inbound_keymat)
                self.add_keymat(child.esp_transform, child.outbound_keymat)

    def add_keymat(self, transform: str, keymat: bytes) -> None:
        self.add(f"{transform} keymat", keymat)
        enc, _salt, integ = split_keymat(transform_by_name(transform), keymat)
        self.add(f"{transform} encryption key", enc)
        self.add(f"{transform} integrity key", integ)

    def forms(self, secret: bytes) -> set[str]:
        pieces = {secret} | {secret[i:i + WINDOW] for i in range(0, len(secret) - WINDOW + 1, STEP)}
        out = set()
        for p in pieces:
            out |= {p.hex(), p.hex().upper(), p.hex(":"), repr(p)[2:-1]}
        for p in (secret, secret[1:], secret[2:]):  # base64 of any alignment
            b64 = base64.b64encode(p).decode()
            out |= {b64[4:-4], base64.urlsafe_b64encode(p).decode()[4:-4]}
        try:
            out.add(secret.decode("ascii"))
        except UnicodeDecodeError:
            pass
        return {f for f in out if len(f) >= 8}

    def leaks(self, text: str) -> list[str]:
        found = []
        for secret, name in self.secrets.items():
            for form in self.forms(secret):
                if form in text:
                    found.append(f"{name} as {form!r}")
                    break
        return found


@pytest.fixture
def log_buffer():
    buffers = []

    def configure(fmt: str) -> io.StringIO:
        buf = io.StringIO()
        configure_logging("debug", fmt, stream=buf)
        buffers.append(buf)
        return buf

    yield configure
    structlog.reset_defaults()


def texts_of(*objects) -> list[str]:
    out = []
    for o in objects:
        out += [repr(o), str(o)]
    return out


def esp_texts(event: ChildSaUp) -> list[str]:
    """repr/str of the ESP SAs built from an event, and of the errors they raise."""
    out_sa = OutboundSA(event.outbound_spi, event.esp_transform, event.outbound_keymat,
                        esn=event.esn, lifetime=Lifetime(hard_packets=1))
    in_sa = InboundSA(event.inbound_spi, event.esp_transform, event.inbound_keymat, esn=event.esn)
    texts = texts_of(out_sa, in_sa)
    packet = out_sa.encapsulate(bytes(20))
    for bad in (packet, b"\x00" * 64):
        try:
            in_sa.decapsulate(bad)
        except Drop as exc:
            texts += texts_of(exc)
    try:
        out_sa.encapsulate(bytes(20))
    except SAExpired as exc:
        texts += texts_of(exc)
    return texts


def sa_texts(ep) -> list[str]:
    texts = [json.dumps(ep.status(), default=str)]
    for sa in ep.sas.values():
        texts += texts_of(sa, sa.keys, sa.cipher_in, sa.cipher_out, sa.neg, sa.config, *sa.children.values())
    return texts


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("ike, esp", SUITES)
def test_no_secret_in_logs_errors_or_reprs(ike, esp, fmt, log_buffer):
    buf = log_buffer(fmt)
    book = SecretBook()
    book.add("psk", PSK)
    book.add("wrong psk", WRONG_PSK)
    texts: list[str] = []

    a, b = mirrored(ike, esp, psk=PSK, dpd_delay=0.0)
    pair = Pair([a], [b])
    texts += texts_of(a, b, *a.children)

    def observe():
        for ep in (pair.a, pair.b):
            book.add_endpoint(ep)
            texts.extend(sa_texts(ep))

    pair.a.initiate("site", None, pair.now)
    pair.run()
    observe()
    (child,) = pair.of("a", ChildSaUp)
    pair.b.rekey_child(child.outbound_spi, pair.now)  # CHILD rekey (with PFS in the first suite)
    pair.run()
    observe()
    (sa,) = pair.a.sas.values()
    sa.rekey_at = pair.now  # IKE rekey
    pair.a.reschedule(sa)
    pair.a.handle_timer(pair.now)
    pair.run()
    observe()
    pair.a.terminate_child("net", pair.now)
    pair.run()
    pair.a.initiate("site", "net", pair.now)  # and a fresh CHILD SA on the rekeyed IKE SA
    pair.run()
    observe()
    pair.b.terminate_ike("site", pair.now)
    pair.run()
    for side in ("a", "b"):
        for event in pair.events[side]:
            texts += texts_of(event)
            if isinstance(event, ChildSaUp):
                book.add_keymat(event.esp_transform, event.inbound_keymat)
                book.add_keymat(event.esp_transform, event.outbound_keymat)
                texts += esp_texts(event)
    assert len(pair.of("a", IkeSaUp)) == 2 and len(pair.of("a", ChildSaUp)) == 3

    # an authentication failure: the responder has another PSK
    a2, b2 = mirrored(ike, esp, psk=PSK, b_psk=WRONG_PSK)
    bad = Pair([a2], [b2], seed=8)
    bad.a.initiate("site", None, bad.now)
    bad.run()
    for ep in (bad.a, bad.b):
        book.add_endpoint(ep)
    failures = bad.of("a", NegotiationFailed) + bad.of("b", NegotiationFailed)
    assert failures and not bad.of("a", IkeSaUp)
    for side in ("a", "b"):
        texts += [t for e in bad.events[side] for t in texts_of(e)]

    texts += config_error_texts(book)
    assert len(book.secrets) > 20
    structlog.get_logger("probe").debug("debug_level_probe")
    haystack = buf.getvalue() + "\n".join(texts)
    assert "child_sa_established" in haystack and "debug_level_probe" in haystack
    assert book.leaks(haystack) == []


def config_error_texts(book: SecretBook) -> list[str]:
    base = """
[connections.office]
local_addrs = "192.0.2.1"
remote_addrs = "192.0.2.2"
[connections.office.children.lan]
local_ts = "10.0.0.0/24"
remote_ts = "10.0.5.0/24"
[secrets.ike-office]
id = "192.0.2.2"
secret = "SECRET"
"""
    hex_psk = PSK.hex()
    texts = []
    for bad in (f"0x{hex_psk}zz", f"0s{base64.b64encode(PSK).decode()}!!", f"0x{hex_psk[:-1]}"):
        with pytest.raises(ConfigError) as info:
            parse_config(base.replace("SECRET", bad), source="espgw.toml")
        texts += texts_of(info.value) + info.value.problems
    # a config error elsewhere in a file holding a valid PSK
    broken = base.replace("SECRET", "0x" + hex_psk).replace('local_ts = "10.0.0.0/24"', 'local_ts = "10.0.0.0/33"')
    with pytest.raises(ConfigError) as info:
        parse_config(broken, source="espgw.toml")
    texts += texts_of(info.value)
    good = parse_config(base.replace("SECRET", "0x" + hex_psk), source="espgw.toml")
    texts += texts_of(good, *good.connections)
    book.add("psk from config", bytes.fromhex(hex_psk))
    return texts


# --- key material is not kept longer than its SA ---------------------------------------------

def reachable_bytes(root) -> list[bytes]:
    """Every bytes-like object reachable from ``root`` (through containers, instances, closures,
    bound methods), not following modules, classes or functions' globals."""
    seen, stack, out = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray, memoryview)):
            out.append(bytes(obj))
            continue
        if isinstance(obj, (str, int, float, complex, bool, type(None), type, types.ModuleType,
                            types.CodeType, types.BuiltinFunctionType)):
            continue
        if isinstance(obj, types.FunctionType):
            stack += [c.cell_contents for c in (obj.__closure__ or ()) if _cell_full(c)]
            stack += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
            continue
        stack += gc.get_referents(obj)
    return out


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def holders(ep, secrets: dict[bytes, str]) -> list[str]:
    blobs = reachable_bytes(ep)
    return sorted({name for key, name in secrets.items() for blob in blobs if key in blob})


def ike_keys(sa) -> dict[bytes, str]:
    return {getattr(sa.keys, f): f"{f} of IKE SA {sa.unique_id}"
            for f in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr") if getattr(sa.keys, f)}


def child_keys(pair, side: str, index: int) -> dict[bytes, str]:
    e = pair.of(side, ChildSaUp)[index]
    return {e.inbound_keymat: f"inbound keymat of CHILD {e.inbound_spi:08x}",
            e.outbound_keymat: f"outbound keymat of CHILD {e.inbound_spi:08x}"}


@pytest.mark.parametrize("ike, esp", SUITES)
def test_keys_not_kept_after_their_sa(ike, esp):
    a, b = mirrored(ike, esp)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    (first_a,) = pair.a.sas.values()
    (first_b,) = pair.b.sas.values()
    old_ike = {**ike_keys(first_a), **ike_keys(first_b)}
    old_child = {**child_keys(pair, "a", 0), **child_keys(pair, "b", 0)}
    assert holders(pair.a, old_child)  # the check sees keys while their SA lives

    pair.a.rekey_child(pair.of("a", ChildSaUp)[0].inbound_spi, pair.now)
    pair.run()
    for ep in (pair.a, pair.b):
        assert holders(ep, old_child) == [], "keys of a rekeyed and deleted CHILD SA are still held"

    first_a.rekey_at = pair.now
    pair.a.reschedule(first_a)
    pair.a.handle_timer(pair.now)
    pair.run()
    assert first_a.state == "dead" and len(pair.of("a", IkeSaUp)) == 2
    for ep in (pair.a, pair.b):
        assert holders(ep, old_ike) == [], "keys of a rekeyed and deleted IKE SA are still held"

    (second,) = pair.a.sas.values()
    every_key = {**old_ike, **old_child, **ike_keys(second), **child_keys(pair, "a", 1),
                 **child_keys(pair, "b", 1)}
    pair.a.terminate_ike("site", pair.now)
    pair.run()
    for ep in (pair.a, pair.b):
        assert not ep.sas
        assert holders(ep, every_key) == [], "keys still held after the IKE SA was deleted"


def reachable_objects(root) -> set[int]:
    """ids of every object reachable from ``root`` the way reachable_bytes walks."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, int, float, bytes, type, types.ModuleType, types.CodeType,
                                               types.BuiltinFunctionType, types.FunctionType)):
            continue
        seen.add(id(obj))
        stack += gc.get_referents(obj)
    return seen


@pytest.mark.parametrize("ike, esp", SUITES)
def test_a_deleted_sa_lets_go_of_its_keys_at_once(ike, esp):
    """Issue #19: at the end of the entry that deletes an SA (no timer look-up in between) the SA
    object holds no key, nonce or KEYMAT, and no endpoint structure refers to it any more."""
    a, b = mirrored(ike, esp)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    sas = {"a": next(iter(pair.a.sas.values())), "b": next(iter(pair.b.sas.values()))}
    children = {s: list(sa.children.values()) for s, sa in sas.items()}
    secrets = {**ike_keys(sas["a"]), **child_keys(pair, "a", 0), **child_keys(pair, "b", 0)}
    pair.a.terminate_ike("site", pair.now)
    for ep, side in ((pair.b, "b"), (pair.a, "a")):  # B gets the delete, then A its answer
        (d,) = (pair.a if side == "b" else pair.b).datagrams_to_send(pair.now)
        ep.receive_datagram(d.data, d.src, d.dst, pair.now)
        sa = sas[side]
        assert sa.state == "dead" and sa.keys is None and not sa.ni and not sa.nr
        assert not sa.init_request and not sa.init_response and sa.last_response is None
        assert all(not c.inbound_keymat and not c.outbound_keymat and c.nonces == (b"", b"") for c in children[side])
        assert id(sa) not in reachable_objects(ep), f"{side}'s endpoint still refers to its dead IKE SA"
        while ep.next_event() is not None:  # the events (ChildSaUp holds KEYMAT) go to the user
            pass
        assert holders(ep, secrets) == []
