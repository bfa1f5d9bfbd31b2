"""Encryption of the SK and SKF payloads (RFC 7296 s3.14, RFC 7383 s2.5).

Three families: AES-CBC with a truncated HMAC (RFC 3602, RFC 4868), AES-GCM (RFC 5282) and
ChaCha20-Poly1305 (RFC 7634). One SkCipher protects one direction with one key.

Body layout: IV | ciphertext of (plaintext | padding | pad length) | ICV. The octets before the
IV (IKE header and SK/SKF payload header, with final lengths) are authenticated: as the MAC's
leading input for CBC+HMAC, as the AAD for the AEAD ciphers.
"""

from __future__ import annotations

import hmac as _consttime
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ike.codec.constants import EncrId, IntegId
from ike.codec.message import IntegrityError
from ike.crypto.proposals import AEAD_SALT_LEN, GCM_ICV_LEN, INTEG_ICV_LEN, Negotiated

Rng = Callable[[int], bytes]

_INTEG_HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    IntegId.HMAC_SHA1_96: hashes.SHA1, IntegId.HMAC_SHA2_256_128: hashes.SHA256,
    IntegId.HMAC_SHA2_384_192: hashes.SHA384, IntegId.HMAC_SHA2_512_256: hashes.SHA512}
_AEAD_IV_LEN = 8  # explicit IV in the message; the nonce is salt | IV (RFC 5282 s4, RFC 7634 s2)


class SkCipher:
    """One direction's SK payload protection: SK_ei/SK_ai for initiator-sent messages, SK_er/SK_ar
    for responder-sent ones. For AEAD, ``encr_key`` ends with the 4-byte salt.

    Only keys are kept: the cipher object is built per message. An idle IKE SA then holds no
    OpenSSL context (a ChaCha20Poly1305 object holds ~2.3 KB of them), and IKE messages are rare
    enough that the construction does not show."""

    __slots__ = ("encr", "_aes", "_integ_key", "_hash", "_key", "iv_len", "block", "icv_len")

    def __init__(self, neg: Negotiated, encr_key: bytes, integ_key: bytes):
        if len(encr_key) != neg.encr_key_len:
            raise ValueError(f"encryption key must be {neg.encr_key_len} bytes, got {len(encr_key)}")
        self.encr = neg.encr
        if neg.encr == EncrId.AES_CBC:
            if neg.integ not in _INTEG_HASHES:
                raise ValueError(f"unsupported integrity algorithm {neg.integ}")
            if len(integ_key) != neg.integ_key_len:
                raise ValueError(f"integrity key must be {neg.integ_key_len} bytes, got {len(integ_key)}")
            self._aes = algorithms.AES(encr_key)
            self._integ_key = integ_key
            self._hash = _INTEG_HASHES[IntegId(neg.integ)]
            self.iv_len, self.block, self.icv_len = 16, 16, INTEG_ICV_LEN[IntegId(neg.integ)]
        elif neg.encr in GCM_ICV_LEN:
            self._key = encr_key  # the IkeKeys object's bytes: no copy; split per message
            self.iv_len, self.block, self.icv_len = _AEAD_IV_LEN, 1, GCM_ICV_LEN[EncrId(neg.encr)]
        elif neg.encr == EncrId.CHACHA20_POLY1305:
            self._key = encr_key
            ChaCha20Poly1305(encr_key[:-AEAD_SALT_LEN])  # a bad key fails now, not on the first message
            self.iv_len, self.block, self.icv_len = _AEAD_IV_LEN, 1, 16
        else:
            raise ValueError(f"encryption algorithm {neg.encr} cannot protect IKE messages here")

    def __repr__(self) -> str:
        return f"SkCipher(encr={self.encr!r}, icv_len={self.icv_len})"

    def _padded_len(self, plaintext_len: int) -> int:
        # the pad length octet is always present; AEAD needs no alignment (pad length 0)
        return -(-(plaintext_len + 1) // self.block) * self.block

    def encrypted_len(self, plaintext_len: int) -> int:
        """SK payload body length (IV + encrypted data with padding + ICV) for a plaintext."""
        return self.iv_len + self._padded_len(plaintext_len) + self.icv_len

    def max_plaintext_len(self, body_len: int) -> int:
        """The largest plaintext whose SK body fits in ``body_len`` bytes (for fragmenting)."""
        room = body_len - self.iv_len - self.icv_len
        return max(0, room // self.block * self.block - 1)

    def seal(self, aad_prefix: bytes, plaintext: bytes, rng: Rng) -> bytes:
        """IV | ciphertext | ICV for the octets ``aad_prefix`` (IKE header + SK/SKF header)."""
        pad_len = self._padded_len(len(plaintext)) - len(plaintext) - 1
        data = plaintext + bytes(pad_len) + bytes([pad_len])
        iv = rng(self.iv_len)
        if len(iv) != self.iv_len:
            raise ValueError(f"rng gave {len(iv)} bytes for a {self.iv_len}-byte IV")
        if self.encr == EncrId.AES_CBC:
            enc = Cipher(self._aes, modes.CBC(iv)).encryptor()
            ciphertext = enc.update(data) + enc.finalize()
            return iv + ciphertext + self._mac(aad_prefix + iv + ciphertext)
        if self.encr == EncrId.CHACHA20_POLY1305:
            key, salt = self._key[:-AEAD_SALT_LEN], self._key[-AEAD_SALT_LEN:]
            return iv + ChaCha20Poly1305(key).encrypt(salt + iv, data, aad_prefix)
        key, salt = self._key[:-AEAD_SALT_LEN], self._key[-AEAD_SALT_LEN:]
        enc = Cipher(algorithms.AES(key), modes.GCM(salt + iv)).encryptor()
        enc.authenticate_additional_data(aad_prefix)
        ciphertext = enc.update(data) + enc.finalize()
        return iv + ciphertext + enc.tag[:self.icv_len]  # a truncated GCM tag is the leading bytes

    def open(self, aad_prefix: bytes, body: bytes) -> bytes:
        """The plaintext without padding; IntegrityError if the ICV fails or the body is malformed."""
        body = bytes(body)
        if len(body) < self.iv_len + self.block + self.icv_len:
            raise IntegrityError(f"SK payload body of {len(body)} bytes is too short")
        iv, ciphertext, icv = body[:self.iv_len], body[self.iv_len:-self.icv_len], body[-self.icv_len:]
        if self.encr == EncrId.AES_CBC:
            if len(ciphertext) % self.block:
                raise IntegrityError("SK payload ciphertext is not a whole number of AES blocks")
            # the ICV is checked, in constant time, before anything is decrypted
            if not _consttime.compare_digest(self._mac(aad_prefix + iv + ciphertext), icv):
                raise IntegrityError("SK payload integrity check failed")
            dec = Cipher(self._aes, modes.CBC(iv)).decryptor()
            data = dec.update(ciphertext) + dec.finalize()
        elif self.encr == EncrId.CHACHA20_POLY1305:
            try:
                key, salt = self._key[:-AEAD_SALT_LEN], self._key[-AEAD_SALT_LEN:]
                data = ChaCha20Poly1305(key).decrypt(salt + iv, ciphertext + icv, aad_prefix)
            except InvalidTag:
                raise IntegrityError("SK payload integrity check failed") from None
        else:
            try:
                key, salt = self._key[:-AEAD_SALT_LEN], self._key[-AEAD_SALT_LEN:]
                dec = Cipher(algorithms.AES(key), modes.GCM(salt + iv, icv, min_tag_length=self.icv_len)).decryptor()
                dec.authenticate_additional_data(aad_prefix)
                data = dec.update(ciphertext) + dec.finalize()
            except InvalidTag:
                raise IntegrityError("SK payload integrity check failed") from None
        pad_len = data[-1]
        if pad_len + 1 > len(data):
            raise IntegrityError(f"SK payload pad length {pad_len} exceeds the decrypted data")
        return data[:-(pad_len + 1)]

    def _mac(self, data: bytes) -> bytes:
        mac = hmac.HMAC(self._integ_key, self._hash())
        mac.update(data)
        return mac.finalize()[:self.icv_len]
