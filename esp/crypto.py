"""Keyed per-SA seal/open functions for each transform kind.

``make_sealer`` returns ``seal(seq, iv, plaintext) -> esp_packet`` where
plaintext already carries padding, pad length and next header.
``make_opener`` returns ``open(esp, seq) -> plaintext`` and raises
Drop(AUTH_FAILED) when the ICV does not verify.  Cipher objects are built
once per SA and reused: building them per packet costs more than the AEAD.
"""

from __future__ import annotations

import hmac as std_hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import Drop, DropReason
from .transforms import Transform

HEADER = struct.Struct("!II")       # SPI, low 32 bits of the sequence number
ESN_AAD = struct.Struct("!IQ")      # SPI, full 64-bit ESN (RFC 4106 s5, RFC 7634 s2.1)
SEQ_HI = struct.Struct("!I")

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

Sealer = Callable[[int, bytes, bytes], bytes]
Opener = Callable[[bytes | memoryview, int], bytes]


def split_keymat(t: Transform, keymat: bytes) -> tuple[bytes, bytes, bytes]:
    """KEYMAT in IKEv2 order: encryption key | salt | integrity key."""
    if len(keymat) != t.keymat_len:
        raise ValueError(f"{t.name} needs {t.keymat_len} bytes of keying material, got {len(keymat)}")
    k = bytes(keymat)
    enc = k[:t.enc_key_len]
    salt = k[t.enc_key_len:t.enc_key_len + t.salt_len]
    integ = k[t.enc_key_len + t.salt_len:]
    return enc, salt, integ


def _integ_hash(t: Transform) -> hashes.HashAlgorithm:
    if t.integ_hash is None:
        raise ValueError(f"{t.name} has no integrity algorithm")
    return _HASHES[t.integ_hash]()


def _auth_failed() -> Drop:
    return Drop(DropReason.AUTH_FAILED, "ICV mismatch")


def make_sealer(t: Transform, keymat: bytes, spi: int, esn: bool) -> Sealer:
    enc, salt, integ = split_keymat(t, keymat)
    hdr_pack = HEADER.pack
    esn_pack = ESN_AAD.pack

    if t.kind in ("gcm", "chacha"):
        encrypt = (AESGCM(enc) if t.kind == "gcm" else ChaCha20Poly1305(enc)).encrypt
        cut = t.icv_len - 16  # GCM ICV 8/12 is the truncated 16-byte tag

        def seal(seq: int, iv: bytes, plaintext: bytes) -> bytes:
            header = hdr_pack(spi, seq & 0xFFFFFFFF)
            aad = esn_pack(spi, seq) if esn else header
            ct = encrypt(salt + iv, plaintext, aad)
            return header + iv + (ct[:cut] if cut else ct)
        return seal

    if t.kind == "gmac":
        encrypt = AESGCM(enc).encrypt

        def seal_gmac(seq: int, iv: bytes, plaintext: bytes) -> bytes:
            header = hdr_pack(spi, seq & 0xFFFFFFFF)
            # RFC 4543 s3.3: everything is AAD; with ESN the AAD holds the full 64 bits.
            aad = (esn_pack(spi, seq) if esn else header) + iv + plaintext
            return header + iv + plaintext + encrypt(salt + iv, b"", aad)
        return seal_gmac

    cipher_alg = algorithms.AES(enc)
    mac_base = hmac.HMAC(integ, _integ_hash(t))
    icv_len = t.icv_len

    def seal_cbc(seq: int, iv: bytes, plaintext: bytes) -> bytes:
        encryptor = Cipher(cipher_alg, modes.CBC(iv)).encryptor()
        body = hdr_pack(spi, seq & 0xFFFFFFFF) + iv + encryptor.update(plaintext) + encryptor.finalize()
        mac = mac_base.copy()
        mac.update(body)
        if esn:  # RFC 4303 s2.2.1: high bits are authenticated but not sent
            mac.update(SEQ_HI.pack(seq >> 32))
        return body + mac.finalize()[:icv_len]
    return seal_cbc


def direct_aead(t: Transform, keymat: bytes, encrypt: bool = False) -> tuple[Callable | None, bytes]:
    """(decrypt or encrypt, salt) for transforms the SAs call inline, else (None, b"").

    Only GCM with the full 16-byte tag and ChaCha20-Poly1305: their wire ICV is
    the tag the one-shot AEAD call expects, so ciphertext||ICV goes in as is.
    """
    if t.kind not in ("gcm", "chacha") or t.icv_len != 16:
        return None, b""
    enc, salt, _ = split_keymat(t, keymat)
    aead = AESGCM(enc) if t.kind == "gcm" else ChaCha20Poly1305(enc)
    return (aead.encrypt if encrypt else aead.decrypt), salt


def make_opener(t: Transform, keymat: bytes, esn: bool) -> Opener:
    """For the transforms ``direct_aead`` leaves out (the SAs open the others inline)."""
    if t.kind in ("gcm", "chacha") and t.icv_len == 16:
        raise ValueError(f"{t.name}: the SA decrypts this transform inline (direct_aead)")
    enc, salt, integ = split_keymat(t, keymat)
    iv_end = 8 + t.iv_len
    icv_len = t.icv_len

    if t.kind == "gcm":  # a truncated ICV: the one-shot AEAD API only takes 16-byte tags
        aes = algorithms.AES(enc)

        def open_(esp, seq: int) -> bytes:
            aad = ESN_AAD.pack(HEADER.unpack_from(esp)[0], seq) if esn else esp[:8]
            d = Cipher(aes, modes.GCM(salt + esp[8:iv_end], bytes(esp[-icv_len:]),
                                      min_tag_length=icv_len)).decryptor()
            d.authenticate_additional_data(bytes(aad))
            pt = d.update(esp[iv_end:-icv_len])
            try:
                return pt + d.finalize()
            except InvalidTag:
                raise _auth_failed() from None
        return open_

    if t.kind == "gmac":
        decrypt = AESGCM(enc).decrypt

        def open_gmac(esp, seq: int) -> bytes:
            head = ESN_AAD.pack(HEADER.unpack_from(esp)[0], seq) if esn else bytes(esp[:8])
            plaintext = bytes(esp[iv_end:-16])
            try:
                decrypt(salt + esp[8:iv_end], esp[-16:], head + esp[8:iv_end] + plaintext)
            except InvalidTag:
                raise _auth_failed() from None
            return plaintext
        return open_gmac

    aes = algorithms.AES(enc)
    mac_base = hmac.HMAC(integ, _integ_hash(t))
    compare = std_hmac.compare_digest

    def open_cbc(esp, seq: int) -> bytes:
        mac = mac_base.copy()
        mac.update(esp[:-icv_len])
        if esn:
            mac.update(SEQ_HI.pack(seq >> 32))
        if not compare(mac.finalize()[:icv_len], esp[-icv_len:]):
            raise _auth_failed()
        d = Cipher(aes, modes.CBC(bytes(esp[8:iv_end]))).decryptor()
        return d.update(esp[iv_end:-icv_len]) + d.finalize()
    return open_cbc


def hmac_icv(hash_name: str, key: bytes, data: bytes, icv_len: int) -> bytes:
    """Truncated HMAC as ESP uses it (RFC 2404, RFC 4868); for vectors and tools."""
    mac = hmac.HMAC(key, _HASHES[hash_name]())
    mac.update(data)
    return mac.finalize()[:icv_len]


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return d.update(data) + d.finalize()
