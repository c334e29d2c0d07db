"""The WeComCrypto facade: verify, decrypt and encrypt callbacks for one bot or app."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .cipher import RANDOM_SIZE, MessageCipher, decode_aes_key
from .envelope import EncryptedMessage, build_json, build_xml, check_xml_nonce, parse_json, parse_xml
from .errors import ComputeSignatureError, EncryptError, GenReturnError, SignatureError
from .signature import check_timestamp, compute_signature, is_finite_number, is_timestamp, verify_signature


class WeComCrypto:
    """Verify, decrypt and encrypt WeCom callbacks for one Token/EncodingAESKey/receive_id.

    receive_id is ``""`` for internal AI bots and the corpid for classic self-built apps; it is
    compared strictly. With ``timestamp_window`` set, callbacks whose timestamp is more than that
    many seconds away from ``clock()`` are rejected as SignatureError. Instances hold no per-call
    state and are safe to share between threads; only ``timestamp_window`` can be reassigned.
    """

    __slots__ = ("_token", "_cipher", "_random_bytes", "_clock", "_window")

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        receive_id: str = "",
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        timestamp_window: int | None = None,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ComputeSignatureError("token must be a non-empty str")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ComputeSignatureError("token is not encodable as UTF-8") from e
        self._cipher = MessageCipher(decode_aes_key(encoding_aes_key), receive_id)
        if not callable(random_bytes):
            raise EncryptError("random_bytes must be callable")
        if not callable(clock):
            raise SignatureError("clock must be callable")
        self._token = token
        self._random_bytes = random_bytes
        self._clock = clock
        self.timestamp_window = timestamp_window

    @property
    def receive_id(self) -> str:
        """Return the receive_id plaintexts must carry."""
        return self._cipher.receive_id

    @property
    def timestamp_window(self) -> int | None:
        """Return the accepted clock skew in seconds, or None when timestamps are not checked."""
        return self._window

    @timestamp_window.setter
    def timestamp_window(self, window: int | None) -> None:
        """Set the accepted clock skew in seconds (None disables the check)."""
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
            raise SignatureError("timestamp_window must be a non-negative int or None")
        self._window = window

    def _authenticate(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """Raise SignatureError unless the request is signed and, if configured, fresh."""
        verify_signature(self._token, timestamp, nonce, encrypt, msg_signature)
        if self._window is not None:
            check_timestamp(timestamp, self._clock(), self._window)

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Return the decrypted echostr, to be written verbatim as the HTTP response body."""
        return self.decrypt(msg_signature, timestamp, nonce, echostr)

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        """Return the plaintext of a signed ciphertext field, checking the signature first."""
        self._authenticate(msg_signature, timestamp, nonce, encrypt)
        return self._cipher.decrypt(encrypt)

    def decrypt_json(self, msg_signature: str, timestamp: str, nonce: str, body: str | bytes) -> str:
        """Return the plaintext of an AI-bot JSON callback body ``{"encrypt": …}``."""
        return self.decrypt(msg_signature, timestamp, nonce, parse_json(body))

    def decrypt_xml(self, msg_signature: str, timestamp: str, nonce: str, body: str | bytes) -> str:
        """Return the plaintext of a classic-app XML callback body ``<xml><Encrypt>…</Encrypt></xml>``."""
        return self.decrypt(msg_signature, timestamp, nonce, parse_xml(body))

    def _reply_timestamp(self, timestamp: str | None) -> str:
        """Return the reply timestamp: the given one, or now in whole seconds."""
        if timestamp is None:
            now = self._clock()
            if not is_finite_number(now):
                raise GenReturnError("clock returned a non-finite or non-numeric time")
            timestamp = str(int(now))
        if not is_timestamp(timestamp):
            raise GenReturnError("reply timestamp must be decimal seconds")
        return timestamp

    def encrypt(self, plaintext: str, nonce: str, timestamp: str | None = None) -> EncryptedMessage:
        """Return plaintext encrypted and signed; nonce must be the callback's nonce."""
        timestamp = self._reply_timestamp(timestamp)
        if not isinstance(nonce, str):
            raise GenReturnError(f"nonce must be str, not {type(nonce).__name__}")
        encrypted = self._cipher.encrypt(plaintext, self._random_bytes(RANDOM_SIZE))
        signature = compute_signature(self._token, timestamp, nonce, encrypted)
        return EncryptedMessage(encrypted, signature, timestamp, nonce)

    def encrypt_json(self, plaintext: str, nonce: str, timestamp: str | None = None) -> str:
        """Return the AI-bot reply ``{"encrypt","msgsignature","timestamp","nonce"}`` as JSON text."""
        return build_json(self.encrypt(plaintext, nonce, timestamp))

    def encrypt_xml(self, plaintext: str, nonce: str, timestamp: str | None = None) -> str:
        """Return the classic-app reply ``<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>``."""
        check_xml_nonce(nonce)
        return build_xml(self.encrypt(plaintext, nonce, timestamp))

