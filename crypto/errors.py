"""Exceptions carrying WeCom's official crypto return codes (-40001 … -40011).

    WeComCryptoError                root (code -40000, not official; never raised itself)
    ├── SignatureError              -40001 ValidateSignature_Error
    ├── ParseError                  -40002 ParseJson_Error (XML library: ParseXml_Error)
    ├── ComputeSignatureError       -40003 ComputeSignature_Error
    ├── IllegalAesKeyError          -40004 IllegalAesKey
    ├── ReceiveIdError              -40005 ValidateCorpid_Error
    ├── EncryptError                -40006 EncryptAES_Error
    ├── DecryptError                -40007 DecryptAES_Error
    ├── IllegalBufferError          -40008 IllegalBuffer
    ├── EncodeBase64Error           -40009 EncodeBase64_Error
    ├── DecodeBase64Error           -40010 DecodeBase64_Error
    └── GenReturnError              -40011 GenReturnJson_Error (XML library: GenReturnXml_Error)

``name`` is the constant's name in the official AI-bot library's ``ierror.py``, without the
``WXBizMsgCrypt_`` prefix. Every public function of this package raises only these classes; the
one exception is an error raised by a ``random_bytes``/``clock`` callable you inject, which passes
through untouched. Low-level errors are re-raised typed, with the original as ``__cause__``.

Which input maps to which code (constructor arguments included):

-40001  signature mismatch; signature, timestamp, nonce or ciphertext not a ``str``; signature
        not ASCII; with a ``timestamp_window``: timestamp empty, not ASCII decimal digits, or more
        than the window away from ``clock()`` (which must return a finite number); a bad
        ``timestamp_window`` (negative, not an int) or a non-callable ``clock``
-40002  body not ``str``/``bytes``, or over 1 MiB; invalid JSON (also too deep), JSON not an
        object, ``encrypt`` missing or not a string; XML not UTF-8 or invalid, XML with a DOCTYPE,
        ENTITY or other markup declaration, no ``<Encrypt>`` child of the root
-40003  a signature cannot be computed: a value not a ``str`` or not encodable as UTF-8; an empty
        or non-``str`` token
-40004  EncodingAESKey not a ``str`` of 43 characters of ``[A-Za-z0-9]`` or not 32 bytes once
        decoded; a raw media key that is not 32 bytes
-40005  receive_id in the plaintext differs from the configured one (strict, also for ``""``);
        configured receive_id not a ``str``
-40006  plaintext not a ``str`` or not encodable; ``random_bytes`` not callable or not returning
        16 bytes; media data not bytes
-40007  ciphertext empty or not a multiple of 16 bytes; PKCS#7 pad byte 0, > 32, longer than the
        buffer, or pad bytes not all equal (one code for every padding failure); media data not bytes
-40008  decrypted buffer shorter than 20 bytes; length field larger than the remaining buffer;
        message or receive_id not valid UTF-8
-40009  reserved (base64 encoding cannot fail); kept for the official table
-40010  ciphertext not strict base64: characters outside the alphabet, whitespace, bad ``=`` padding
-40011  reply fields unusable: nonce or timestamp not a ``str``, timestamp not decimal digits
        (also when taken from a broken ``clock``), XML nonce containing ``]]>``, a carriage return
        or a character XML cannot carry
"""

from __future__ import annotations

from typing import ClassVar


class WeComCryptoError(Exception):
    """Root of every error raised by this package."""

    code: int = -40000
    name: ClassVar[str] = "WeComCrypto_Error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.name
        self.code = type(self).code

    def __str__(self) -> str:
        return f"[{self.code}] {self.name}: {self.message}"


class SignatureError(WeComCryptoError):
    """The msg_signature (or the timestamp it covers) does not check out."""

    code = -40001
    name = "ValidateSignature_Error"


class ParseError(WeComCryptoError):
    """The JSON or XML envelope cannot be parsed."""

    code = -40002
    name = "ParseJson_Error"


class ComputeSignatureError(WeComCryptoError):
    """A signature cannot be computed from the given values."""

    code = -40003
    name = "ComputeSignature_Error"


class IllegalAesKeyError(WeComCryptoError):
    """The EncodingAESKey is malformed."""

    code = -40004
    name = "IllegalAesKey"


class ReceiveIdError(WeComCryptoError):
    """The receive_id inside the plaintext is not the configured one."""

    code = -40005
    name = "ValidateCorpid_Error"


class EncryptError(WeComCryptoError):
    """The plaintext cannot be encrypted."""

    code = -40006
    name = "EncryptAES_Error"


class DecryptError(WeComCryptoError):
    """AES decryption or PKCS#7 unpadding failed."""

    code = -40007
    name = "DecryptAES_Error"


class IllegalBufferError(WeComCryptoError):
    """The decrypted buffer does not have the random|length|msg|receive_id layout."""

    code = -40008
    name = "IllegalBuffer"


class EncodeBase64Error(WeComCryptoError):
    """Base64 encoding failed (kept for the official table; not raised in practice)."""

    code = -40009
    name = "EncodeBase64_Error"


class DecodeBase64Error(WeComCryptoError):
    """The ciphertext is not strict base64."""

    code = -40010
    name = "DecodeBase64_Error"


class GenReturnError(WeComCryptoError):
    """The reply envelope cannot be built from the given fields."""

    code = -40011
    name = "GenReturnJson_Error"
