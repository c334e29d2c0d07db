"""WeCom (企业微信) callback crypto: signatures, AES-256-CBC framing, JSON/XML envelopes, media.

Depends only on the standard library and pycryptodome. Start with :class:`WeComCrypto`; every
error raised is a :class:`WeComCryptoError` carrying WeCom's official code (see ``crypto.errors``).
"""

from .cipher import decode_aes_key
from .envelope import EncryptedMessage
from .errors import (
    ComputeSignatureError,
    DecodeBase64Error,
    DecryptError,
    EncodeBase64Error,
    EncryptError,
    GenReturnError,
    IllegalAesKeyError,
    IllegalBufferError,
    ParseError,
    ReceiveIdError,
    SignatureError,
    WeComCryptoError,
)
from .media import decrypt_media, encrypt_media
from .signature import compute_signature, verify_signature
from .wecom import WeComCrypto

__all__ = [
    "ComputeSignatureError",
    "DecodeBase64Error",
    "DecryptError",
    "EncodeBase64Error",
    "EncryptError",
    "EncryptedMessage",
    "GenReturnError",
    "IllegalAesKeyError",
    "IllegalBufferError",
    "ParseError",
    "ReceiveIdError",
    "SignatureError",
    "WeComCrypto",
    "WeComCryptoError",
    "compute_signature",
    "decode_aes_key",
    "decrypt_media",
    "encrypt_media",
    "verify_signature",
]
