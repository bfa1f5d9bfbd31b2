"""Write a daemon's keys as Wireshark decryption tables (``esp_sa``, ``ikev2_decryption_table``).

The input is the ``keys`` snapshot the daemon returns on its control socket::

    {"child_sas": [  # one entry per direction (an ESP SA is one-way)
        {"src": "192.0.2.1", "dst": "192.0.2.2", "spi": "c1a2b3c4",   # hex text or int
         "esp_transform": "aes256gcm16", "keymat": "<hex>"}],            # encr key | salt | integ key
     "ike_sas": [
        {"spi_i": "<16 hex>", "spi_r": "<16 hex>",
         "encr_alg": "aes256gcm16", "sk_ei": "<hex>", "sk_er": "<hex>",  # strongSwan keywords;
         "integ_alg": "none", "sk_ai": "", "sk_ar": ""}]}                # sk_e* include a GCM salt

Row formats and algorithm labels follow Wireshark's UAT tables (packet-ipsec.c ``esp_sa``,
packet-isakmp.c ``ikev2_decryption_table``) as Debian 12's tshark 4.0 accepts them; ESP rows are
made by ``esp.wireshark.esp_sa_line``. SAs tshark 4.0 cannot decrypt (ChaCha20-Poly1305, GMAC)
are left out and listed in ``skipped``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esp.transforms import transform_by_name
from esp.wireshark import esp_sa_line as wireshark_esp_sa_line

ESP_SA_FILE = "esp_sa"
IKEV2_FILE = "ikev2_decryption_table"

# IKE integrity keyword (strongSwan) -> Wireshark ikev2_decryption_table label
_IKE_INTEG = {
    "md5": "HMAC_MD5_96 [RFC2403]",
    "sha1": "HMAC_SHA1_96 [RFC2404]",
    "sha256": "HMAC_SHA2_256_128 [RFC4868]",
    "sha384": "HMAC_SHA2_384_192 [RFC4868]",
    "sha512": "HMAC_SHA2_512_256 [RFC4868]",
    "sha256_96": "HMAC_SHA2_256_96 [draft-ietf-ipsec-ciph-sha-256-00]",
}
_GCM_ICV = {"8": 8, "12": 12, "16": 16, "64": 8, "96": 12, "128": 16}
_AEAD_SALT = 4


class KeyExportError(Exception):
    """The snapshot is malformed, or the files cannot be written."""


@dataclass(frozen=True)
class _IkeCipher:
    key_len: int  # bytes of each SK_e key (salt/nonce included)
    label: str | None  # Wireshark's name; None: tshark 4.0 cannot decrypt it
    aead: bool = False


def _ike_cipher(name: str) -> _IkeCipher | None:
    """A strongSwan IKE encryption keyword (``aes256``, ``aes128ctr``, ``aes256gcm16``...)."""
    match = re.fullmatch(r"aes(128|192|256)(ctr|gcm(8|12|16|64|96|128)|)", name)
    if match:
        bits, mode, icv = match.group(1), match.group(2), match.group(3)
        key_len = int(bits) // 8
        if mode == "":
            return _IkeCipher(key_len, f"AES-CBC-{bits} [RFC3602]")
        if mode == "ctr":
            return _IkeCipher(key_len + 4, f"AES-CTR-{bits} [RFC5930]")
        return _IkeCipher(key_len + _AEAD_SALT, f"AES-GCM-{bits} with {_GCM_ICV[icv]} octet ICV [RFC5282]", True)
    if name == "3des":
        return _IkeCipher(24, "3DES [RFC2451]")
    if name == "chacha20poly1305":
        return _IkeCipher(32 + _AEAD_SALT, None, True)
    return None


def esp_sa_line(src: str, dst: str, spi: int, transform: str, keymat: bytes) -> str:
    """One ``esp_sa`` row for an esp/ transform name; the row itself is esp.wireshark's."""
    try:
        src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if src_ip.version != dst_ip.version:
            raise ValueError("source and destination address families differ")
        return wireshark_esp_sa_line(family=f"ipv{src_ip.version}", src=str(src_ip), dst=str(dst_ip), spi=spi,
                                     transform=transform_by_name(transform), keymat=keymat)
    except (ValueError, KeyError) as exc:  # esp/ messages name sizes and algorithms, never keys
        raise KeyExportError(str(exc).strip("'\"")) from None


def ikev2_line(spi_i: bytes, spi_r: bytes, encr_alg: str, sk_ei: bytes, sk_er: bytes,
               integ_alg: str, sk_ai: bytes, sk_ar: bytes) -> str:
    """One ``ikev2_decryption_table`` row, as strongSwan's save-keys plugin writes it."""
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise KeyExportError("IKE SA: SPIs must be 8 bytes")
    cipher = _ike_cipher(encr_alg.lower())
    if cipher is None:
        raise KeyExportError(f"unknown IKE encryption algorithm {encr_alg!r}")
    if cipher.label is None:
        raise KeyExportError(f"tshark 4.0 cannot decrypt IKE {encr_alg}")
    if len(sk_ei) != cipher.key_len or len(sk_er) != cipher.key_len:
        raise KeyExportError(f"IKE {encr_alg}: SK_e keys must be {cipher.key_len} bytes")
    integ = integ_alg.lower()
    if cipher.aead:
        integ_label, sk_ai, sk_ar = "NONE [RFC4306]", b"", b""
    elif integ in _IKE_INTEG:
        integ_label = _IKE_INTEG[integ]
    else:
        raise KeyExportError(f"unknown IKE integrity algorithm {integ_alg!r}")
    return (f'{spi_i.hex()},{spi_r.hex()},{sk_ei.hex()},{sk_er.hex()},"{cipher.label}",'
            f'{sk_ai.hex()},{sk_ar.hex()},"{integ_label}"')


# ----------------------------------------------------------------------------- snapshot -> files


@dataclass
class KeyExportResult:
    esp_sa_path: Path
    ikev2_path: Path
    esp_rows: int  # rows now in each file (merged with what was there)
    ike_rows: int
    skipped: list[str] = field(default_factory=list)  # why some SAs were left out


def esp_sa_lines(snapshot: dict) -> tuple[list[str], list[str]]:
    lines, skipped = [], []
    for index, sa in enumerate(_entries(snapshot, "child_sas")):
        try:
            spi = _spi(sa.get("spi"))
            lines.append(esp_sa_line(str(sa.get("src")), str(sa.get("dst")), spi,
                                     str(sa.get("esp_transform")), _unhex(sa.get("keymat"), "keymat")))
        except (KeyExportError, ValueError) as exc:
            skipped.append(f"child_sas[{index}]: {exc}")
    return lines, skipped


def ikev2_lines(snapshot: dict) -> tuple[list[str], list[str]]:
    lines, skipped = [], []
    for index, sa in enumerate(_entries(snapshot, "ike_sas")):
        try:
            lines.append(ikev2_line(
                _unhex(sa.get("spi_i"), "spi_i"), _unhex(sa.get("spi_r"), "spi_r"),
                str(sa.get("encr_alg")), _unhex(sa.get("sk_ei"), "sk_ei"), _unhex(sa.get("sk_er"), "sk_er"),
                str(sa.get("integ_alg") or "none"), _unhex(sa.get("sk_ai") or "", "sk_ai"),
                _unhex(sa.get("sk_ar") or "", "sk_ar")))
        except (KeyExportError, ValueError) as exc:
            skipped.append(f"ike_sas[{index}]: {exc}")
    return lines, skipped


def write_wireshark_keys(snapshot: Any, directory: str | Path, merge: bool = True) -> KeyExportResult:
    """Write both tables into ``directory`` (created 0700; files 0600: they hold keys).

    With ``merge`` rows already in the files are kept, so SAs that were rekeyed away since the
    last export still decrypt older packets of the same capture.
    """
    if not isinstance(snapshot, dict):
        raise KeyExportError("key snapshot: expected an object with child_sas and ike_sas")
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyExportError(f"cannot create {directory}: {exc.strerror}") from None
    esp, esp_skipped = esp_sa_lines(snapshot)
    ike, ike_skipped = ikev2_lines(snapshot)
    esp_path, ike_path = directory / ESP_SA_FILE, directory / IKEV2_FILE
    esp_rows = _write_table(esp_path, esp, merge)
    ike_rows = _write_table(ike_path, ike, merge)
    return KeyExportResult(esp_path, ike_path, esp_rows, ike_rows, esp_skipped + ike_skipped)


def _write_table(path: Path, lines: list[str], merge: bool) -> int:
    rows: list[str] = []
    if merge and path.exists():
        try:
            rows = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyExportError(f"cannot read {path}: {exc}") from None
    for line in lines:
        if line not in rows:
            rows.append(line)
    text = "# This file is generated by espgw keys --wireshark; it holds secret keys.\n"
    text += "".join(row + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise KeyExportError(f"cannot write {path}: {exc.strerror}") from None
    return len(rows)


def _entries(snapshot: dict, key: str) -> list[dict]:
    value = snapshot.get(key, [])
    if not isinstance(value, list):
        raise KeyExportError(f"key snapshot: {key} must be a list")
    return [entry if isinstance(entry, dict) else {} for entry in value]


def _spi(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        spi = value
    elif isinstance(value, str):
        spi = int(value, 16)
    else:
        raise KeyExportError("spi must be an integer or hex text")
    if not 0 < spi < 1 << 32:
        raise KeyExportError("spi out of range")
    return spi


def _unhex(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise KeyExportError(f"{name} must be hex text")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise KeyExportError(f"{name} is not valid hex") from None
