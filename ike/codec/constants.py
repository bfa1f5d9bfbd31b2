"""IANA IKEv2 registries (RFC 7296 s3, https://www.iana.org/assignments/ikev2-parameters).

Only IntEnums and a few fixed numbers; no behaviour. Values the registry reserves or assigns to
protocols espgw never speaks are left out unless a peer may plausibly send them (so a log can
name them).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

IKE_MAJOR_VERSION = 2
IKE_VERSION_BYTE = 0x20  # major 2, minor 0 (RFC 7296 s3.1)
IKE_HEADER_LEN = 28
GENERIC_PAYLOAD_HEADER_LEN = 4
IKE_PORT = 500
NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # precedes IKE on port 4500 (RFC 3948 s2.2)


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370


class HeaderFlag(IntFlag):
    """IKE header flags (RFC 7296 s3.1)."""

    NONE = 0
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NONE = 0  # "No Next Payload"
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49  # RFC 6467
    SKF = 53  # RFC 7383
    PS = 54  # RFC 8019 puzzle solution


class ProtocolId(IntEnum):
    """Security Protocol Identifier in proposals, notifies and deletes (RFC 7296 s3.3.1)."""

    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4  # "Key Exchange Method" since RFC 9370
    ESN = 5
    ADDKE1 = 6  # RFC 9370 s2.2.1: Additional Key Exchange 1..7
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class TransformAttr(IntEnum):
    KEY_LENGTH = 14  # TV format, value in bits (RFC 7296 s3.3.5)


class EncrId(IntEnum):
    DES_IV64 = 1
    DES = 2
    DES3 = 3
    RC5 = 4
    IDEA = 5
    CAST = 6
    BLOWFISH = 7
    IDEA3 = 8
    DES_IV32 = 9
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 21
    CAMELLIA_CBC = 23
    CAMELLIA_CTR = 24
    CAMELLIA_CCM_8 = 25
    CAMELLIA_CCM_12 = 26
    CAMELLIA_CCM_16 = 27
    CHACHA20_POLY1305 = 28
    AES_CCM_8_IIV = 29
    AES_GCM_16_IIV = 30
    CHACHA20_POLY1305_IIV = 31


class PrfId(IntEnum):
    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    HMAC_TIGER = 3
    AES128_XCBC = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    AES128_CMAC = 8


class IntegId(IntEnum):
    NONE = 0
    HMAC_MD5_96 = 1
    HMAC_SHA1_96 = 2
    DES_MAC = 3
    KPDK_MD5 = 4
    AES_XCBC_96 = 5
    HMAC_MD5_128 = 6
    HMAC_SHA1_160 = 7
    AES_CMAC_96 = 8
    AES_128_GMAC = 9
    AES_192_GMAC = 10
    AES_256_GMAC = 11
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhId(IntEnum):
    NONE = 0
    MODP768 = 1
    MODP1024 = 2
    MODP1536 = 5
    MODP2048 = 14
    MODP3072 = 15
    MODP4096 = 16
    MODP6144 = 17
    MODP8192 = 18
    ECP256 = 19
    ECP384 = 20
    ECP521 = 21
    MODP1024_160 = 22
    MODP2048_224 = 23
    MODP2048_256 = 24
    ECP192 = 25
    ECP224 = 26
    ECP224_BP = 27
    ECP256_BP = 28
    ECP384_BP = 29
    ECP512_BP = 30
    CURVE25519 = 31
    CURVE448 = 32
    ML_KEM_512 = 35  # draft-ietf-ipsecme-ikev2-mlkem
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


ERROR_NOTIFY_LIMIT = 16384  # notify types below are errors, from here on status (RFC 7296 s3.10.1)


def is_error_notify(notify_type: int) -> bool:
    """Whether a notify type (known to NotifyType or not) reports an error."""
    return notify_type < ERROR_NOTIFY_LIMIT


class NotifyType(IntEnum):
    """Notify Message Types: errors below 16384, status types from 16384 (RFC 7296 s3.10.1)."""

    # error types
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    UNACCEPTABLE_ADDRESSES = 40  # RFC 4555
    UNEXPECTED_NAT_DETECTED = 41  # RFC 4555
    USE_ASSIGNED_HoA = 42  # RFC 5026
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INVALID_GROUP_ID = 45  # RFC 6407
    AUTHORIZATION_FAILED = 46  # RFC 6407
    STATE_NOT_FOUND = 47  # RFC 9370
    # status types
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    AUTH_LIFETIME = 16403  # RFC 4478
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    TICKET_LT_OPAQUE = 16409  # RFC 5723
    TICKET_REQUEST = 16410
    TICKET_ACK = 16411
    TICKET_NACK = 16412
    TICKET_OPAQUE = 16413
    LINK_ID = 16414
    USE_WESP_MODE = 16415
    ROHC_SUPPORTED = 16416
    EAP_ONLY_AUTHENTICATION = 16417
    CHILDLESS_IKEV2_SUPPORTED = 16418
    QUICK_CRASH_DETECTION = 16419
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED = 16421
    IKEV2_MESSAGE_ID_SYNC = 16422
    IPSEC_REPLAY_COUNTER_SYNC = 16423
    SECURE_PASSWORD_METHODS = 16424
    PSK_PERSIST = 16425
    PSK_CONFIRM = 16426
    ERX_SUPPORTED = 16427
    IFOM_CAPABILITY = 16428
    SENDER_REQUEST_ID = 16429
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    CLONE_IKE_SA_SUPPORTED = 16432  # RFC 7791
    CLONE_IKE_SA = 16433
    PUZZLE = 16434  # RFC 8019
    USE_PPK = 16435  # RFC 8784
    PPK_IDENTITY = 16436
    NO_PPK_AUTH = 16437
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    IP4_ALLOWED = 16439  # RFC 8983
    IP6_ALLOWED = 16440
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370
    USE_AGGFRAG = 16442  # RFC 9347

    @property
    def is_error(self) -> bool:
        return is_error_notify(self)


class IdType(IntEnum):
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11
    ID_FC_NAME = 12  # RFC 4595
    ID_NULL = 13  # RFC 7619


class AuthMethod(IntEnum):
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    GENERIC_SECURE_PASSWORD = 12  # RFC 6467
    NULL_AUTH = 13  # RFC 7619
    DIGITAL_SIGNATURE = 14  # RFC 7427


class TsType(IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8
    TS_FC_ADDR_RANGE = 9  # RFC 4595


class CertEncoding(IntEnum):
    X509_SIGNATURE = 4
    HASH_AND_URL_X509 = 12
    HASH_AND_URL_X509_BUNDLE = 13


class CfgType(IntEnum):
    """Configuration payload CFG Type (RFC 7296 s3.15)."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class CfgAttr(IntEnum):
    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
