"""IKE cryptography: key exchange, key derivation, the SK payload cipher, proposals and cookies.
Built on ``ike.codec``; every primitive comes from ``cryptography``."""
