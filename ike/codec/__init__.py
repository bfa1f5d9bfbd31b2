"""The IKEv2 wire format (RFC 7296 s3): constants, payloads, messages, fragments (RFC 7383) and
identities. Pure data in and out; imports nothing from ike/ but ``ike.config``."""
