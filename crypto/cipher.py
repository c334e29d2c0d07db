"""AES-256-CBC as WeCom uses it, and the random | length | msg | receive_id framing.

Protocol details that surprise: the IV is the first 16 bytes of the key; PKCS#7 pads to 32-byte
blocks (not AES's 16), always, so aligned input gets a full 32-byte pad block; the length field is
4 bytes big-endian and counts UTF-8 bytes of the message.
"""

from __future__ import annotations

import base64
import binascii

from Crypto.Cipher import AES

from .errors import (
    DecodeBase64Error,
    DecryptError,
    EncryptError,
    IllegalAesKeyError,
    IllegalBufferError,
    ReceiveIdError,
)

BLOCK_SIZE = 32
"""PKCS#7 block size used by WeCom (twice the AES block)."""
KEY_SIZE = 32
ENCODING_AES_KEY_LENGTH = 43
RANDOM_SIZE = 16
_HEADER_SIZE = RANDOM_SIZE + 4
_MAX_MSG_SIZE = 0xFFFF_FFFF


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """Return the 32-byte AES key encoded by a 43-character EncodingAESKey."""
    if not isinstance(encoding_aes_key, str):
        raise IllegalAesKeyError(f"EncodingAESKey must be str, not {type(encoding_aes_key).__name__}")
    if not (
        len(encoding_aes_key) == ENCODING_AES_KEY_LENGTH
        and encoding_aes_key.isascii()
        and encoding_aes_key.isalnum()
    ):
        raise IllegalAesKeyError("EncodingAESKey must be 43 characters of [A-Za-z0-9]")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except ValueError as e:  # binascii.Error is a ValueError
        raise IllegalAesKeyError("EncodingAESKey is not base64") from e
    if len(key) != KEY_SIZE:  # cannot happen for 43 alphanumerics; kept as a guard, not an assert
        raise IllegalAesKeyError("EncodingAESKey does not decode to 32 bytes")
    return key


def pkcs7_pad(data: bytes) -> bytes:
    """Return data plus 1..32 pad bytes (a full 32-byte block when data is already aligned)."""
    n = BLOCK_SIZE - len(data) % BLOCK_SIZE
    return data + bytes((n,)) * n


def pkcs7_unpadded_length(data: bytes) -> int:
    """Return the length of data without its 32-byte PKCS#7 padding; raise DecryptError if invalid."""
    if not data:
        raise DecryptError("nothing to unpad")
    n = data[-1]
    if not 1 <= n <= BLOCK_SIZE or n > len(data) or data.count(n, len(data) - n) != n:
        raise DecryptError("invalid PKCS#7 padding")
    return len(data) - n


def pkcs7_unpad(data: bytes) -> bytes:
    """Return data without its 32-byte PKCS#7 padding; raise DecryptError if invalid."""
    return data[: pkcs7_unpadded_length(data)]


def cbc_encrypt(key: bytes, data: bytes) -> bytes:
    """Pad data to 32 bytes and encrypt it with AES-256-CBC, IV = key[:16]."""
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(pkcs7_pad(data))


def cbc_decrypt(key: bytes, data: bytes) -> bytes:
    """Decrypt AES-256-CBC data (IV = key[:16]) and return it still padded."""
    if not data or len(data) % AES.block_size:
        raise DecryptError("ciphertext is empty or not a multiple of 16 bytes")
    try:
        return AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(data)
    except (ValueError, TypeError) as e:
        raise DecryptError("AES decryption failed") from e


class MessageCipher:
    """Encrypt and decrypt framed callback messages for one key and receive_id."""

    __slots__ = ("_key", "_receive_id", "_receive_id_bytes")

    def __init__(self, key: bytes, receive_id: str) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise IllegalAesKeyError("AES key must be 32 bytes")
        if not isinstance(receive_id, str):
            raise ReceiveIdError(f"receive_id must be str, not {type(receive_id).__name__}")
        try:
            self._receive_id_bytes = receive_id.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ReceiveIdError("receive_id is not encodable as UTF-8") from e
        self._key = key
        self._receive_id = receive_id

    @property
    def receive_id(self) -> str:
        """Return the receive_id every plaintext must end with ("" for AI bots, corpid for apps)."""
        return self._receive_id

    def encrypt(self, plaintext: str, random16: bytes) -> str:
        """Return base64(AES(random16 | len | plaintext | receive_id | pad))."""
        if not isinstance(plaintext, str):
            raise EncryptError(f"plaintext must be str, not {type(plaintext).__name__}")
        if not isinstance(random16, bytes | bytearray) or len(random16) != RANDOM_SIZE:
            raise EncryptError("random_bytes(16) must return 16 bytes")
        try:
            msg = plaintext.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EncryptError("plaintext is not encodable as UTF-8") from e
        if len(msg) > _MAX_MSG_SIZE:
            raise EncryptError("plaintext longer than the 4-byte length field allows")
        n = BLOCK_SIZE - (_HEADER_SIZE + len(msg) + len(self._receive_id_bytes)) % BLOCK_SIZE
        length = len(msg).to_bytes(4, "big")
        frame = b"".join((random16, length, msg, self._receive_id_bytes, bytes((n,)) * n))
        encrypted = AES.new(self._key, AES.MODE_CBC, iv=self._key[:16]).encrypt(frame)
        return base64.b64encode(encrypted).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """Return the message inside base64 ciphertext after checking padding, framing and receive_id."""
        if not isinstance(ciphertext, str | bytes):
            raise DecodeBase64Error(f"ciphertext must be str, not {type(ciphertext).__name__}")
        try:
            raw = base64.b64decode(ciphertext, validate=True)
        except (binascii.Error, ValueError) as e:
            raise DecodeBase64Error("ciphertext is not valid base64") from e
        buf = cbc_decrypt(self._key, raw)
        end = pkcs7_unpadded_length(buf)
        if end < _HEADER_SIZE:
            raise IllegalBufferError("decrypted buffer shorter than 20 bytes")
        msg_end = _HEADER_SIZE + int.from_bytes(buf[RANDOM_SIZE:_HEADER_SIZE], "big")
        if msg_end > end:
            raise IllegalBufferError("length field exceeds the decrypted buffer")
        view = memoryview(buf)
        try:
            message = str(view[_HEADER_SIZE:msg_end], "utf-8")
            receive_id = str(view[msg_end:end], "utf-8")
        except UnicodeDecodeError as e:
            raise IllegalBufferError("message or receive_id is not valid UTF-8") from e
        # Strict, also when the configured receive_id is "" (AI bots), like the official library.
        if receive_id != self._receive_id:
            raise ReceiveIdError("receive_id in the message does not match")
        return message
