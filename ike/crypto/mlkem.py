"""ML-KEM key exchange for IKEv2 (FIPS 203; draft-ietf-ipsecme-ikev2-mlkem; RFC 9370).

Same interface as ike.crypto.dh's KeyExchange (``.group``, ``.public``, ``.shared_secret(peer)``), but a
KEM is asymmetric, so the role is fixed when the object is made:

* initiator (``key_exchange(method, rng)``): a key pair from 64 bytes of ``rng`` (the FIPS 203
  seed d || z, so runs are reproducible); ``public`` is the encapsulation key it sends;
  ``shared_secret(ciphertext)`` decapsulates the responder's answer.
* responder (``key_exchange(method, rng, initiator=False)``): ``shared_secret(encapsulation_key)``
  encapsulates to the initiator's key; only then is ``public`` (the ciphertext to send back) set.

Exception to the sans-I/O rule of injected randomness: ``cryptography`` (50.x) takes no
randomness for encapsulation, so the responder's message m, hence its ciphertext, comes from
OpenSSL's RNG and is not reproducible from ``rng``. Key generation is.

ML-KEM-512 (method 35) is not offered: ``cryptography`` 50 exposes ML-KEM-768 and -1024 only.

Peer data is checked as FIPS 203 s7.2/s7.3 ask: exact lengths, and the encapsulation key's
modulus check (every 12-bit coefficient below q = 3329), which cryptography's loader performs;
anything wrong raises ike.crypto.dh.InvalidKeyExchange, so the task answers INVALID_KE_PAYLOAD or
INVALID_SYNTAX as it does for a bad DH value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from cryptography.hazmat.primitives.asymmetric import mlkem

from ike.codec.constants import DhId
from ike.crypto.dh import InvalidKeyExchange, Rng


@dataclass(frozen=True)
class _Params:
    name: str
    private: type[mlkem.MLKEM768PrivateKey] | type[mlkem.MLKEM1024PrivateKey]
    public: type[mlkem.MLKEM768PublicKey] | type[mlkem.MLKEM1024PublicKey]
    ek_len: int  # FIPS 203 s8 table 3: encapsulation key 384k+32 bytes
    ct_len: int  # ciphertext 32(du*k + dv)


_PARAMS: dict[int, _Params] = {
    DhId.ML_KEM_768: _Params("ML-KEM-768", mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088),
    DhId.ML_KEM_1024: _Params("ML-KEM-1024", mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568),
}
SUPPORTED_METHODS: tuple[int, ...] = tuple(_PARAMS)
ML_KEM_METHODS = frozenset({DhId.ML_KEM_512, DhId.ML_KEM_768, DhId.ML_KEM_1024})
SEED_LEN = 64  # d || z (FIPS 203 ML-KEM.KeyGen_internal)
SHARED_SECRET_LEN = 32

_PrivateKey = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey


def is_kem(method: int) -> bool:
    """Whether a key exchange method is a KEM (role-dependent) rather than a DH group."""
    return method in ML_KEM_METHODS


def public_value_len(method: int, initiator: bool) -> int:
    """KE payload data length: the encapsulation key from the initiator, the ciphertext back."""
    params = _params(method)
    return params.ek_len if initiator else params.ct_len


@dataclass
class MlKemExchange:
    """One side of an ML-KEM exchange; see the module docstring for the two roles."""

    group: int
    initiator: bool
    _private: _PrivateKey | None = field(default=None, repr=False)
    _public: bytes | None = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    @property
    def public(self) -> bytes:
        """The KE payload data to send: the encapsulation key, or the responder's ciphertext."""
        if self._public is None:
            raise RuntimeError("an ML-KEM responder has no ciphertext before shared_secret()")
        return self._public

    def shared_secret(self, peer_data: bytes) -> bytes:
        """The 32-byte shared secret; InvalidKeyExchange for bad peer data. Once per object."""
        if self._done:
            raise RuntimeError("an ML-KEM exchange object is single-use")
        if not isinstance(peer_data, (bytes, bytearray)):
            raise InvalidKeyExchange("key exchange data must be bytes")
        params = _params(self.group)
        expected = params.ct_len if self.initiator else params.ek_len
        what = "ciphertext" if self.initiator else "encapsulation key"
        if len(peer_data) != expected:
            raise InvalidKeyExchange(
                f"{params.name} {what} must be {expected} bytes, got {len(peer_data)}")
        self._done = True
        if self.initiator:
            assert self._private is not None
            try:  # a well-sized but forged ciphertext decapsulates to a pseudo-random secret
                return self._private.decapsulate(bytes(peer_data))
            except ValueError as exc:
                raise InvalidKeyExchange(f"{params.name} ciphertext rejected") from exc
        try:
            peer = params.public.from_public_bytes(bytes(peer_data))  # includes the modulus check
        except ValueError as exc:
            raise InvalidKeyExchange(
                f"{params.name} encapsulation key fails the FIPS 203 modulus check") from exc
        secret, self._public = peer.encapsulate()
        return secret


def key_exchange(method: int, rng: Rng, *, initiator: bool = True) -> MlKemExchange:
    """An ML-KEM exchange for ``method``; ValueError for a method cryptography lacks."""
    _params(method)
    if not initiator:
        return MlKemExchange(method, False)
    return from_seed(method, rng(SEED_LEN))


def from_seed(method: int, seed: bytes) -> MlKemExchange:
    """An initiator whose key pair is ML-KEM.KeyGen_internal(d, z) for seed = d || z."""
    params = _params(method)
    if len(seed) != SEED_LEN:
        raise ValueError(f"an ML-KEM seed is {SEED_LEN} bytes, not {len(seed)}")
    private = params.private.from_seed_bytes(seed)
    return MlKemExchange(method, True, private, private.public_key().public_bytes_raw())


def _params(method: int) -> _Params:
    params = _PARAMS.get(method)
    if params is None:
        name = DhId(method).name if method in DhId._value2member_map_ else str(method)
        raise ValueError(f"unsupported ML-KEM method {name}"
                         + (" (cryptography has no ML-KEM-512)" if method == DhId.ML_KEM_512 else ""))
    return params
