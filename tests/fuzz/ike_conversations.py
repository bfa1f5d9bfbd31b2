"""The genuine in-memory IKE conversations that ike_mutate.py mutates (not a harness itself).

Two conversations between an initiator and a responder (``ikepair`` configs), each recorded on
first use, datagram by datagram, with a snapshot of both endpoints taken just before delivery,
its decrypted payloads and the sender's keys:

* ``site``: site-to-site with x25519 and a second CHILD SA, DPD, CHILD and IKE rekeys (PFS), a
  CHILD delete by the responder and the IKE delete. Kinds ``ike_sa_init``, ``ike_auth``,
  ``create_child``, ``rekey_child``, ``rekey_ike``, ``informational``.
* ``remote_access``: a client asking for virtual IPs (0.0.0.0 and ::) from a gateway with an IPv4
  and an IPv6 pool, hybrid post-quantum keys (``x25519-ke1_mlkem768``) for the IKE SA and its
  CHILD SAs, MOBIKE. IKE_SA_INIT, one IKE_INTERMEDIATE for ML-KEM-768, IKE_AUTH with the CP
  request and reply, a second CHILD SA and a rekey of the first, each with IKE_FOLLOWUP_KE for
  ke1, an IKE rekey with ke1 too, the client moving to a new address (UPDATE_SA_ADDRESSES with
  COOKIE2, the gateway's return routability check), and the IKE delete that releases the leases.
  Kinds ``ike_intermediate``, ``ike_auth_cp``, ``followup_ke`` (the CREATE_CHILD_SA exchanges
  whose proposals have ADDKE transforms and the IKE_FOLLOWUP_KE exchanges after them) and
  ``mobike`` (INFORMATIONAL exchanges with MOBIKE notifies). Its IKE_SA_INIT and delete are
  delivered but not fuzzed here (the site kinds cover those exchanges).
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import importlib
import io
import ipaddress
import pickle
import types
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, NotifyType, TransformType
from ike.codec.payloads import NotifyPayload, Payload, SaPayload
from ike.config import TrafficSelector
from ike.pools import AddressPool
from ike.tasks.ike_mobike import MOBIKE_NOTIFIES

import fuzzlib
import ikepair
from ikepair import INITIATOR_IP, RESPONDER_IP

ROAMED_IP = "203.0.113.9"  # where the remote-access client moves to (MOBIKE)
# address -> 0 for the initiator, 1 for the responder (both conversations)
ADDRESSES = {INITIATOR_IP: 0, ROAMED_IP: 0, RESPONDER_IP: 1}

HYBRID_IKE = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
ADDKE_TYPES = frozenset(range(TransformType.ADDKE1, TransformType.ADDKE7 + 1))


# --- pickling the keys a snapshot may hold ----------------------------------------------------

def _pickle_x25519(key: x25519.X25519PrivateKey):
    """Snapshots hold an initiator's key exchange between request and response; cryptography's
    keys do not pickle by themselves."""
    return x25519.X25519PrivateKey.from_private_bytes, (key.private_bytes_raw(),)


def _mlkem_pickler(public_class):
    """An ML-KEM private key is its 64-byte seed (d || z), which ``private_bytes_raw`` returns; the
    Rust type of a key lacks the ``from_seed_bytes`` of the class it was made from."""
    return lambda key: (public_class.from_seed_bytes, (key.private_bytes_raw(),))


copyreg.pickle(type(x25519.X25519PrivateKey.generate()), _pickle_x25519)
for _kem in (mlkem.MLKEM768PrivateKey, mlkem.MLKEM1024PrivateKey):
    copyreg.pickle(type(_kem.generate()), _mlkem_pickler(_kem))


# Snapshots never leave the process that recorded them, so a closure's code goes by its index
# here (marshal cannot take atheris-instrumented code, whose constants hold its hooks).
_CODES: list[types.CodeType] = []
_CODE_INDEX: dict[types.CodeType, int] = {}


def _code_index(code: types.CodeType) -> int:
    if code not in _CODE_INDEX:
        _CODE_INDEX[code] = len(_CODES)
        _CODES.append(code)
    return _CODE_INDEX[code]


def _make_function(code: int, module: str, name: str, defaults, kwdefaults, closure):
    function = types.FunctionType(_CODES[code], vars(importlib.import_module(module)), name, defaults, closure)
    function.__kwdefaults__ = kwdefaults
    return function


def _make_cell() -> types.CellType:
    return types.CellType()


def _set_cell(cell: types.CellType, state: tuple) -> None:
    (cell.cell_contents,) = state


class _Snapshotter(pickle.Pickler):
    """Pickles the closures and lambdas the tasks keep between exchanges (an IKE_FOLLOWUP_KE
    sequence holds its ``finish`` and ``complete``) by value, much as cloudpickle does: code (by
    index, see _CODES), module globals by name, and the cells, whose contents (the SA objects) stay
    shared with the rest of the snapshot through the pickle memo. Functions importable by name go
    by reference."""

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType):
            module = importlib.import_module(obj.__module__)
            found = functools.reduce(lambda o, part: getattr(o, part, None), obj.__qualname__.split("."), module)
            if found is obj:
                return NotImplemented
            return _make_function, (_code_index(obj.__code__), obj.__module__, obj.__name__, obj.__defaults__,
                                    obj.__kwdefaults__, obj.__closure__)
        if isinstance(obj, types.CellType):  # contents as state (a tuple: pickle skips a None state),
            # set once the cell is memoized: a cell may hold what refers to it
            try:
                contents = obj.cell_contents
            except ValueError:  # an empty cell (a variable not bound yet)
                return _make_cell, ()
            return _make_cell, (), (contents,), None, None, _set_cell
        return NotImplemented


def snapshot(endpoints) -> bytes:
    out = io.BytesIO()
    _Snapshotter(out, protocol=pickle.HIGHEST_PROTOCOL).dump(endpoints)
    return out.getvalue()


# --- recording ---------------------------------------------------------------------------------

@dataclass
class Recorded:
    """One genuine datagram, the state to deliver it into, and what re-sealing it needs."""

    kind: str | None  # None: delivered in the conversation but not fuzzed
    data: bytes
    src: tuple[str, int]
    dst: tuple[str, int]
    now: float
    snapshot: bytes  # pickle of (initiator, responder) just before delivery
    cipher: object  # the sender's outbound SkCipher (None for IKE_SA_INIT)
    header: codec.Message
    payloads: list[Payload]  # decoded (inner) payloads


Classify = Callable[[codec.Message, list[Payload]], "str | None"]


def _open(sender, receiver, data: bytes, msg: codec.Message):
    """The keys ``msg`` is sealed with and its inner payloads. Usually the sender's outbound
    cipher; otherwise the receiver's inbound one (the same keys): a responder that deleted its SA
    right after answering has none, and one answering IKE_INTERMEDIATE has already taken the new
    keys its answer is not sealed with."""
    ours, theirs = (msg.spi_i, msg.spi_r) if msg.initiator else (msg.spi_r, msg.spi_i)
    candidates = []
    sa = sender.sas.get(ours)
    if sa is not None and sa.keys is not None:
        candidates.append(sa.cipher_out)
    sa = receiver.sas.get(theirs)
    if sa is not None and sa.keys is not None:
        candidates.append(sa.cipher_in)
    sk = codec.encrypted_payload(msg)
    for cipher in candidates:
        try:
            return cipher, codec.decode_chain(sk.first_inner, codec.open_sk(data, msg, cipher))
        except codec.DecryptionFailed:
            continue
    raise AssertionError(f"no keys open the recorded exchange {msg.exchange} {msg.message_id}")


def _installed_child(ep, name: str) -> int:
    """The inbound SPI of the installed CHILD SA ``name`` (from the public status)."""
    for ike in ep.status():
        for child in ike["children"]:
            if child["name"] == name and str(child["state"]).lower().endswith("installed"):
                return int(child["inbound_spi"], 16)
    raise AssertionError(f"no installed CHILD SA {name}")


class Recorder:
    """Delivers everything both endpoints send, recording each datagram first."""

    def __init__(self, a, b, classify: Classify):
        self.a, self.b, self.classify = a, b, classify
        self.script: list[Recorded] = []
        self.queue: list = []
        self.kinds: dict[tuple, str | None] = {}  # a request's kind, for its response

    def _collect(self, now: float) -> None:
        """Queue what both sent, with the sender's keys read now (an SA may be gone by delivery)."""
        for ep, peer in ((self.a, self.b), (self.b, self.a)):
            for d in ep.datagrams_to_send(now):
                msg = codec.decode(d.data)
                cipher, payloads = None, msg.payloads
                if msg.exchange != ExchangeType.IKE_SA_INIT:
                    cipher, payloads = _open(ep, peer, d.data, msg)
                self.queue.append((d, msg, cipher, payloads))

    def pump(self, now: float) -> None:
        endpoints = (self.a, self.b)
        self._collect(now)
        while self.queue:
            d, msg, cipher, payloads = self.queue.pop(0)
            state = snapshot(endpoints)
            key = (msg.spi_i, msg.message_id, msg.initiator != msg.response)  # the request's sender
            if msg.response and key in self.kinds:
                kind = self.kinds.pop(key)
            else:
                kind = self.classify(msg, payloads)
            if not msg.response:
                self.kinds[key] = kind
            self.script.append(Recorded(kind, d.data, d.src, d.dst, now, state, cipher,
                                        codec.parse_header(d.data), payloads))
            endpoints[ADDRESSES[d.dst[0]]].receive_datagram(d.data, d.src, d.dst, now)
            self._collect(now)
        ikepair.drain(self.a)
        ikepair.drain(self.b)

    def by_kind(self, kinds: tuple[str, ...]) -> dict[str, list[Recorded]]:
        found = {kind: [r for r in self.script if r.kind == kind] for kind in kinds}
        missing = [kind for kind, records in found.items() if not records]
        assert not missing, f"the genuine conversation missed {missing}"
        return found


# --- site to site ------------------------------------------------------------------------------

def _site_kind(msg: codec.Message, payloads: list[Payload]) -> str:
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


def _site_configs():
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


def _record_site() -> dict[str, list[Recorded]]:
    init, resp = _site_configs()
    a = ikepair.endpoint(init, 7296)
    b = ikepair.endpoint(resp, 4303)
    rec = Recorder(a, b, _site_kind)
    a.initiate("site", None, 0.0)  # IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA for "second"
    rec.pump(0.0)
    a.rekey_child(_installed_child(a, "net"), 10.0)
    rec.pump(10.0)
    b.rekey_child(_installed_child(b, "net"), 20.0)
    rec.pump(20.0)
    a.handle_timer(121.0)  # DPD from both sides (nothing arrived since 20 s)
    b.handle_timer(121.0)
    rec.pump(121.0)
    now = 121.0
    while not any(r.kind == "rekey_ike" for r in rec.script) and now < 500.0:  # rekey_time 400 s, jittered
        now = a.get_timer() or now + 10.0
        a.handle_timer(now)
        b.handle_timer(now)
        rec.pump(now)
    b.terminate_child("second", now + 1.0)
    rec.pump(now + 1.0)
    a.terminate_ike("site", now + 2.0)
    rec.pump(now + 2.0)
    return rec.by_kind(fuzzlib.SITE_KINDS)


# --- remote access, hybrid post-quantum, MOBIKE ------------------------------------------------

def _ra_kind(msg: codec.Message, payloads: list[Payload]) -> str | None:
    if msg.exchange == ExchangeType.IKE_INTERMEDIATE:
        return "ike_intermediate"
    if msg.exchange == ExchangeType.IKE_AUTH:
        return "ike_auth_cp"
    if msg.exchange == ExchangeType.IKE_FOLLOWUP_KE:
        return "followup_ke"
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        sa = next((p for p in payloads if isinstance(p, SaPayload)), None)
        addke = sa is not None and any(t.type in ADDKE_TYPES for p in sa.proposals for t in p.transforms)
        return "followup_ke" if addke else None
    if msg.exchange == ExchangeType.INFORMATIONAL:
        mobike = any(isinstance(p, NotifyPayload) and p.notify_type in MOBIKE_NOTIFIES for p in payloads)
        return "mobike" if mobike else None
    return None


def _ra_configs():
    ts = "10.2.0.0/16", "fd00:2::/48"
    init = ikepair.initiator_config(ike=HYBRID_IKE, esp=HYBRID_ESP)
    resp = ikepair.responder_config(ike=HYBRID_IKE, esp=HYBRID_ESP)
    init.name = resp.name = "rw"
    # whole messages however big the ML-KEM values (the mutations cut RFC 7383 fragments themselves)
    init.fragment_size = resp.fragment_size = 9000
    init.vips = ["0.0.0.0", "::"]
    resp.remote_addrs, resp.pools = ["%any"], ["rw4", "rw6"]
    net_i, net_r = init.children[0], resp.children[0]
    net_i.local_ts, net_i.local_dynamic = [], True
    net_i.remote_ts = [TrafficSelector.from_cidr(t) for t in ts]
    net_r.remote_ts, net_r.remote_dynamic = [], True
    net_r.local_ts = [TrafficSelector.from_cidr(t) for t in ts]
    second = [TrafficSelector.from_cidr("10.5.0.0/16")]
    init.children.append(dataclasses.replace(net_i, name="second", remote_ts=second))
    resp.children.append(dataclasses.replace(net_r, name="second", local_ts=second))
    return init, resp


def ra_pools() -> list[AddressPool]:
    return [AddressPool("rw4", "10.3.0.0/28", dns=(ipaddress.ip_address("10.2.0.53"),),
                        subnets=(ipaddress.ip_network("10.2.0.0/16"),)),
            AddressPool("rw6", "fd00:3::/120", dns=(ipaddress.ip_address("fd00:2::53"),))]


def _record_remote_access() -> dict[str, list[Recorded]]:
    init, resp = _ra_configs()
    a = ikepair.endpoint(init, 9242)
    b = ikepair.endpoint(resp, 9370)
    for pool in ra_pools():
        b.set_pool(pool)
    rec = Recorder(a, b, _ra_kind)
    a.initiate("rw", None, 0.0)  # IKE_SA_INIT, IKE_INTERMEDIATE, IKE_AUTH; "second" with FOLLOWUP_KE
    rec.pump(0.0)
    a.rekey_child(_installed_child(a, "net"), 10.0)  # CREATE_CHILD_SA and IKE_FOLLOWUP_KE
    rec.pump(10.0)
    assert a.rekey_ike("rw", 20.0) == 1  # the IKE SA too, with ke1
    rec.pump(20.0)
    (ike,) = a.status()
    assert a.roam(ike["unique_id"], ROAMED_IP, 30.0)  # UPDATE_SA_ADDRESSES, then B's COOKIE2 check
    rec.pump(30.0)
    a.terminate_ike("rw", 40.0)
    rec.pump(40.0)
    return rec.by_kind(fuzzlib.REMOTE_ACCESS_KINDS)


CONVERSATIONS = {"site": _record_site, "remote_access": _record_remote_access}


@functools.cache
def _conversation(name: str) -> dict[str, list[Recorded]]:
    return CONVERSATIONS[name]()


def records(kind: str) -> list[Recorded]:
    """The recorded messages of ``kind`` (its conversation is recorded on first use)."""
    name = "site" if kind in fuzzlib.SITE_KINDS else "remote_access"
    return _conversation(name)[kind]
