"""The msg_signature: SHA1 over the four sorted strings, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import math

from .errors import ComputeSignatureError, SignatureError

MAX_TIMESTAMP_DIGITS = 19
"""Longest timestamp accepted by the window check (seconds since the epoch fit in 10 digits)."""


def compute_signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """Return sha1("".join(sorted([token, timestamp, nonce, encrypt]))) as lowercase hex."""
    parts = [token, timestamp, nonce, encrypt]
    for part in parts:
        if not isinstance(part, str):
            raise ComputeSignatureError(f"signature input must be str, not {type(part).__name__}")
    # Plain string order of the four values, as the official libraries sort them.
    parts.sort()
    try:
        data = "".join(parts).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ComputeSignatureError("signature input is not encodable as UTF-8") from e
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - SHA1 is what the WeCom protocol mandates


def verify_signature(token: str, timestamp: str, nonce: str, encrypt: str, signature: str) -> None:
    """Raise SignatureError unless signature matches the four values (constant-time compare)."""
    if not isinstance(signature, str):
        raise SignatureError(f"signature must be str, not {type(signature).__name__}")
    try:
        expected = compute_signature(token, timestamp, nonce, encrypt)
    except ComputeSignatureError as e:
        raise SignatureError("signature cannot be computed over the request values") from e
    try:
        given = signature.encode("ascii")
    except UnicodeEncodeError as e:
        raise SignatureError("signature is not ASCII") from e
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise SignatureError("signature mismatch")


def is_timestamp(value: object) -> bool:
    """Return whether value is a str of 1..19 ASCII decimal digits."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TIMESTAMP_DIGITS
        and value.isascii()
        and value.isdigit()
    )


def is_finite_number(value: object) -> bool:
    """Return whether value is a finite int or float (bool excluded)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_timestamp(timestamp: str, now: float, window: int) -> None:
    """Raise SignatureError unless timestamp is decimal seconds within window of now."""
    if not is_timestamp(timestamp):
        raise SignatureError("timestamp is not a decimal number of seconds")
    if not is_finite_number(now):
        raise SignatureError("clock returned a non-finite or non-numeric time")
    if abs(now - int(timestamp)) > window:
        raise SignatureError("timestamp outside the accepted window")
