"""Downloaded media (image/file/video URLs of AI-bot callbacks): AES-256-CBC, no framing.

The body behind a media ``url`` is encrypted with the callback key, IV = key[:16], PKCS#7 padded to
32 bytes, and carries no random/length/receive_id framing: decrypt, unpad, and that is the file.
Long-connection mode gives each media its own base64 ``aeskey``: base64-decode it and pass the bytes.
"""

from __future__ import annotations

from .cipher import KEY_SIZE, cbc_decrypt, cbc_encrypt, decode_aes_key, pkcs7_unpad
from .errors import DecryptError, EncryptError, IllegalAesKeyError


def _media_key(encoding_aes_key_or_key: str | bytes) -> bytes:
    """Return the 32-byte key from an EncodingAESKey string or raw key bytes."""
    if isinstance(encoding_aes_key_or_key, str):
        return decode_aes_key(encoding_aes_key_or_key)
    if isinstance(encoding_aes_key_or_key, bytes | bytearray) and len(encoding_aes_key_or_key) == KEY_SIZE:
        return bytes(encoding_aes_key_or_key)
    raise IllegalAesKeyError("key must be a 43-character EncodingAESKey or 32 raw bytes")


def decrypt_media(encoding_aes_key_or_key: str | bytes, data: bytes) -> bytes:
    """Return the plaintext of downloaded media ciphertext."""
    key = _media_key(encoding_aes_key_or_key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecryptError(f"media data must be bytes, not {type(data).__name__}")
    return pkcs7_unpad(cbc_decrypt(key, bytes(data)))


def encrypt_media(encoding_aes_key_or_key: str | bytes, data: bytes) -> bytes:
    """Return media ciphertext as WeCom serves it (the inverse of decrypt_media)."""
    key = _media_key(encoding_aes_key_or_key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncryptError(f"media data must be bytes, not {type(data).__name__}")
    return cbc_encrypt(key, bytes(data))
