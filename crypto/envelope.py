"""Callback envelopes in (JSON for AI bots, XML for classic apps) and reply envelopes out.

Inbound XML is parsed only after rejecting every markup declaration (``<!DOCTYPE``, ``<!ENTITY``,
…): without a DTD there are no entities to expand, so billion-laughs and external entities are
impossible. Outbound XML puts the nonce (attacker-controlled: it is echoed from the callback URL)
verbatim inside CDATA, where ``<`` and ``&`` are plain text; a nonce containing ``]]>``, a carriage
return (parsers turn it into ``\\n``) or a character XML cannot carry is rejected (GenReturnError).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET  # only ever fed documents without a DTD (see parse_xml)
from dataclasses import dataclass

from .errors import GenReturnError, ParseError

MAX_BODY_SIZE = 1 << 20
"""Largest envelope accepted, in bytes (or characters for ``str``); callbacks are a few KB."""

_MARKUP_DECL = re.compile(r"<!(?!\[CDATA\[|--)")
_XML_UNSAFE_NONCE = re.compile("]]>|[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class EncryptedMessage:
    """An encrypted reply: the four values WeCom expects back."""

    encrypt: str
    signature: str
    timestamp: str
    nonce: str


def _check_body(body: str | bytes) -> None:
    """Raise ParseError unless body is a str or bytes of acceptable size."""
    if not isinstance(body, str | bytes | bytearray):
        raise ParseError(f"body must be str or bytes, not {type(body).__name__}")
    if len(body) > MAX_BODY_SIZE:
        raise ParseError("body too large")


def parse_json(body: str | bytes) -> str:
    """Return the ``encrypt`` field of an AI-bot JSON envelope; other keys are ignored."""
    _check_body(body)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ParseError("body is not valid JSON") from e
    if not isinstance(document, dict):
        raise ParseError("JSON body is not an object")
    encrypt = document.get("encrypt")
    if not isinstance(encrypt, str):
        raise ParseError("JSON body has no string field 'encrypt'")
    return encrypt


def parse_xml(body: str | bytes) -> str:
    """Return the text of ``<Encrypt>`` in a classic-app XML envelope."""
    _check_body(body)
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError("XML body is not UTF-8") from e
    if _MARKUP_DECL.search(text):
        raise ParseError("XML body contains a DOCTYPE or other markup declaration")
    try:
        root = ET.fromstring(text)  # noqa: S314 - declarations rejected above
    except (ET.ParseError, ValueError, RecursionError) as e:
        raise ParseError("body is not valid XML") from e
    element = root.find("Encrypt")
    if element is None:
        raise ParseError("XML body has no <Encrypt> element")
    return element.text or ""


def build_json(message: EncryptedMessage) -> str:
    """Return the AI-bot reply envelope as compact JSON (note the key ``msgsignature``)."""
    envelope = {
        "encrypt": message.encrypt,
        "msgsignature": message.signature,
        "timestamp": message.timestamp,
        "nonce": message.nonce,
    }
    try:
        return json.dumps(envelope, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise GenReturnError("reply fields cannot be serialised as JSON") from e


def check_xml_nonce(nonce: str) -> None:
    """Raise GenReturnError unless nonce can sit verbatim inside an XML CDATA section."""
    if not isinstance(nonce, str):
        raise GenReturnError(f"nonce must be str, not {type(nonce).__name__}")
    if _XML_UNSAFE_NONCE.search(nonce):
        raise GenReturnError("nonce contains ']]>', a carriage return or a character XML cannot carry")


def build_xml(message: EncryptedMessage) -> str:
    """Return the classic-app reply envelope as XML."""
    check_xml_nonce(message.nonce)
    if not message.timestamp.isascii() or not message.timestamp.isdigit():
        raise GenReturnError("timestamp must be decimal digits")
    # encrypt is base64 and signature hex (both produced here); timestamp and nonce checked above.
    return (
        f"<xml><Encrypt><![CDATA[{message.encrypt}]]></Encrypt>"
        f"<MsgSignature><![CDATA[{message.signature}]]></MsgSignature>"
        f"<TimeStamp>{message.timestamp}</TimeStamp>"
        f"<Nonce><![CDATA[{message.nonce}]]></Nonce></xml>"
    )
