"""The signature of a webhook delivery: HMAC-SHA256 over ``<timestamp>.<body>`` with ``WEBHOOK_SECRET``.

Headers: ``X-WeComDify-Timestamp`` (Unix seconds of this delivery) and ``X-WeComDify-Signature``
(``sha256=<hex>``). A receiver recomputes the HMAC over the raw body, compares in constant time and
refuses a timestamp too far from its clock (a replayed delivery). ``verify`` is that check; the
README shows the same in a few lines for n8n.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP = "X-WeComDify-Timestamp"
SIGNATURE = "X-WeComDify-Signature"
TOLERANCE = 300
"""Seconds a receiver accepts between a delivery's timestamp and its own clock."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-WeComDify-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance: int = TOLERANCE) -> bool:
    """True when ``signature`` is ``body``'s at ``timestamp`` and the timestamp is recent."""
    if not timestamp.isdigit() or abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
