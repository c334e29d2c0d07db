"""Unit tests for crypto/: error mapping, signature-before-AES, timestamp window, envelopes, API surface.

Malformed ciphertexts are built here with pycryptodome directly and signed with hashlib directly, so
each one passes the signature check and reaches exactly the stage under test.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import pickle
import re
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES

import crypto
import crypto.cipher
import crypto.envelope
import crypto.signature
from crypto import (
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
    WeComCrypto,
    WeComCryptoError,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
ENCODING_AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
KEY = base64.b64decode(ENCODING_AES_KEY + "=")
RECEIVE_ID = "ww1436e0e65a779aee"
TIMESTAMP = "1476416373"
NONCE = "47744683"

CRYPTO = WeComCrypto(TOKEN, ENCODING_AES_KEY, RECEIVE_ID)


# --- independent helpers (pycryptodome + hashlib, not the code under test) ----------------------
def sign(encrypt: str, timestamp: str = TIMESTAMP, nonce: str = NONCE, token: str = TOKEN) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


def pad32(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


def frame(msg: bytes, receive_id: bytes = RECEIVE_ID.encode(), length: int | None = None) -> bytes:
    size = len(msg) if length is None else length
    return b"R" * 16 + size.to_bytes(4, "big") + msg + receive_id


def seal(plain: bytes) -> str:
    """AES-256-CBC encrypt already-padded bytes and base64 them."""
    return base64.b64encode(AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).encrypt(plain)).decode()


GOOD = seal(pad32(frame(b"hello")))


def expect(error: type[WeComCryptoError], code: int, call: Callable[[], object]) -> WeComCryptoError:
    with pytest.raises(WeComCryptoError) as info:
        call()
    assert type(info.value) is error
    assert info.value.code == code
    return info.value


# --- the malformed-ciphertext table --------------------------------------------------------------
CIPHERTEXT_CASES = [
    ("non-base64 characters", GOOD[:-4] + "!!!!", DecodeBase64Error, -40010),
    ("non-ascii character", "ü" + GOOD[1:], DecodeBase64Error, -40010),
    ("missing = padding", GOOD.rstrip("="), DecodeBase64Error, -40010),
    ("extra = padding", GOOD + "==", DecodeBase64Error, -40010),
    ("= in the middle", GOOD[:8] + "=" + GOOD[9:], DecodeBase64Error, -40010),
    ("whitespace inside", GOOD[:10] + "\n" + GOOD[10:], DecodeBase64Error, -40010),
    ("leading space", " " + GOOD, DecodeBase64Error, -40010),
    ("url-safe alphabet", GOOD.replace("+", "-").replace("/", "_") + ("-" if "+" not in GOOD else ""),
     DecodeBase64Error, -40010),
    ("empty ciphertext", "", DecryptError, -40007),
    ("length 17 (not a multiple of 16)", base64.b64encode(b"x" * 17).decode(), DecryptError, -40007),
    ("length 40 (not a multiple of 16)", base64.b64encode(b"x" * 40).decode(), DecryptError, -40007),
    ("pad byte 0", seal(frame(b"hello")[:31] + b"\x00" + b"\x00" * 32), DecryptError, -40007),
    ("pad byte 33", seal(frame(b"x" * 27)[:31] + b"A" + bytes([33]) * 32), DecryptError, -40007),
    ("pad byte 255", seal(frame(b"x" * 26) + b"\xff" * 32), DecryptError, -40007),
    ("inconsistent pad bytes", seal(frame(b"hello")[:-3] + b"\x07" * 6 + b"\x05" + b"\x07"), DecryptError,
     -40007),
    ("pad longer than buffer", seal(b"\x20" * 16), DecryptError, -40007),
    ("buffer shorter than 20 bytes", seal(pad32(b"R" * 16 + b"\x00\x00")), IllegalBufferError, -40008),
    ("16-byte ciphertext of padding", seal(bytes([16]) * 16), IllegalBufferError, -40008),
    ("length field larger than remaining", seal(pad32(frame(b"hello", length=1000))), IllegalBufferError,
     -40008),
    ("length field 0xffffffff", seal(pad32(frame(b"hello", length=0xFFFFFFFF))), IllegalBufferError, -40008),
    ("invalid UTF-8 message", seal(pad32(frame(b"\xff\xfe"))), IllegalBufferError, -40008),
    ("truncated UTF-8 message", seal(pad32(frame("你".encode()[:2]))), IllegalBufferError, -40008),
    ("invalid UTF-8 receive_id", seal(pad32(frame(b"hello", b"\xffww"))), IllegalBufferError, -40008),
    ("wrong receive_id", seal(pad32(frame(b"hello", b"wx5823bf96d3bd56c7"))), ReceiveIdError, -40005),
    ("empty receive_id", seal(pad32(frame(b"hello", b""))), ReceiveIdError, -40005),
    ("receive_id with suffix", seal(pad32(frame(b"hi", RECEIVE_ID.encode() + b"x"))), ReceiveIdError, -40005),
    ("length field too short", seal(pad32(frame(b"hello", length=4))), ReceiveIdError, -40005),
]


@pytest.mark.parametrize(
    ("encrypt", "error", "code"),
    [case[1:] for case in CIPHERTEXT_CASES],
    ids=[case[0] for case in CIPHERTEXT_CASES],
)
def test_malformed_ciphertext_has_exact_code(encrypt: str, error: type[WeComCryptoError], code: int) -> None:
    sig = sign(encrypt)
    exc = expect(error, code, lambda: CRYPTO.decrypt(sig, TIMESTAMP, NONCE, encrypt))
    expect(error, code, lambda: CRYPTO.verify_url(sig, TIMESTAMP, NONCE, encrypt))
    expect(error, code, lambda: CRYPTO.decrypt_json(sig, TIMESTAMP, NONCE, json.dumps({"encrypt": encrypt})))
    if code == -40010:
        assert isinstance(exc.__cause__, binascii.Error | ValueError)


def test_well_formed_control_case_decrypts() -> None:
    assert CRYPTO.decrypt(sign(GOOD), TIMESTAMP, NONCE, GOOD) == "hello"


def test_receive_id_is_strict_for_empty_receive_id() -> None:
    ai_bot = WeComCrypto(TOKEN, ENCODING_AES_KEY, "")
    with_corpid = seal(pad32(frame(b"hello", RECEIVE_ID.encode())))
    expect(ReceiveIdError, -40005, lambda: ai_bot.decrypt(sign(with_corpid), TIMESTAMP, NONCE, with_corpid))
    bare = seal(pad32(frame(b"hello", b"")))
    assert ai_bot.decrypt(sign(bare), TIMESTAMP, NONCE, bare) == "hello"


# --- EncodingAESKey -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoding_aes_key",
    [
        pytest.param(ENCODING_AES_KEY[:-1], id="42 chars"),
        pytest.param(ENCODING_AES_KEY + "A", id="44 chars (decodes to 33 bytes)"),
        pytest.param(ENCODING_AES_KEY[:40], id="40 chars (decodes to 30 bytes)"),
        pytest.param(ENCODING_AES_KEY[:-1] + "=", id="43 chars ending in ="),
        pytest.param(ENCODING_AES_KEY[:-1] + "+", id="non-alnum +"),
        pytest.param(ENCODING_AES_KEY[:-1] + "-", id="non-alnum -"),
        pytest.param(ENCODING_AES_KEY[:-1] + "é", id="non-ascii letter"),
        pytest.param(ENCODING_AES_KEY[:-1] + "٣", id="non-ascii digit"),
        pytest.param(" " + ENCODING_AES_KEY[1:], id="space"),
        pytest.param("", id="empty"),
        pytest.param(None, id="None"),
        pytest.param(ENCODING_AES_KEY.encode(), id="bytes"),
        pytest.param(KEY, id="raw key bytes"),
    ],
)
def test_bad_encoding_aes_key_fails_at_construction(encoding_aes_key: Any) -> None:
    expect(IllegalAesKeyError, -40004, lambda: WeComCrypto(TOKEN, encoding_aes_key, RECEIVE_ID))
    expect(IllegalAesKeyError, -40004, lambda: crypto.decode_aes_key(encoding_aes_key))


def test_decode_aes_key() -> None:
    assert crypto.decode_aes_key(ENCODING_AES_KEY) == KEY and len(KEY) == 32


# --- envelopes -------------------------------------------------------------------------------------
LOLS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
BILLION_LAUGHS = (
    f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY lol0 "lol">{LOLS}]><xml><Encrypt>&lol9;</Encrypt></xml>'
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<xml><Encrypt>&xxe;</Encrypt></xml>"
)
JSON_BODY_CASES = [
    ("missing encrypt", '{"tousername": "x"}'),
    ("encrypt not a string", '{"encrypt": 1}'),
    ("encrypt null", '{"encrypt": null}'),
    ("JSON array", '["encrypt"]'),
    ("JSON string", '"encrypt"'),
    ("JSON number", "1"),
    ("invalid JSON", '{"encrypt": '),
    ("empty body", ""),
    ("not UTF-8", b'{"encrypt": "\xff"}'),
    ("deeply nested", "[" * 100_000 + "]" * 100_000),
    ("huge integer", '{"encrypt": "x", "n": ' + "9" * 5000 + "}"),
    ("too large", '{"encrypt": "' + "A" * (1 << 20) + '"}'),
    ("None", None),
    ("int", 42),
    ("dict", {"encrypt": GOOD}),
]
XML_BODY_CASES = [
    ("invalid XML", "<xml><Encrypt>abc</xml>"),
    ("not XML", "encrypt=abc"),
    ("empty body", ""),
    ("missing Encrypt", "<xml><ToUserName>x</ToUserName></xml>"),
    ("Encrypt not a direct child", "<xml><a><Encrypt>abc</Encrypt></a></xml>"),
    ("DTD", '<!DOCTYPE xml><xml><Encrypt>abc</Encrypt></xml>'),
    ("lowercase doctype", "<!doctype xml><xml><Encrypt>abc</Encrypt></xml>"),
    ("billion laughs", BILLION_LAUGHS),
    ("external entity", EXTERNAL_ENTITY),
    ("billion laughs as bytes", BILLION_LAUGHS.encode()),
    ("not UTF-8", b"<xml><Encrypt>\xff</Encrypt></xml>"),
    ("UTF-16", "<xml><Encrypt>abc</Encrypt></xml>".encode("utf-16")),
    ("lone surrogate", "<xml><Encrypt>\ud800</Encrypt></xml>"),
    ("too large", "<xml><Encrypt>" + "A" * (1 << 20) + "</Encrypt></xml>"),
    ("None", None),
]


@pytest.mark.parametrize("body", [c[1] for c in JSON_BODY_CASES], ids=[c[0] for c in JSON_BODY_CASES])
def test_bad_json_body_is_parse_error(body: Any) -> None:
    expect(ParseError, -40002, lambda: CRYPTO.decrypt_json(sign(GOOD), TIMESTAMP, NONCE, body))


@pytest.mark.parametrize("body", [c[1] for c in XML_BODY_CASES], ids=[c[0] for c in XML_BODY_CASES])
def test_bad_xml_body_is_parse_error(body: Any) -> None:
    started = time.perf_counter()
    expect(ParseError, -40002, lambda: CRYPTO.decrypt_xml(sign(GOOD), TIMESTAMP, NONCE, body))
    assert time.perf_counter() - started < 0.5


def test_entity_documents_are_rejected_before_expat_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise AssertionError("ElementTree must not see a document with a DTD")

    monkeypatch.setattr("crypto.envelope.ET.fromstring", explode)
    for body in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        expect(ParseError, -40002, functools.partial(CRYPTO.decrypt_xml, sign(GOOD), TIMESTAMP, NONCE, body))


def test_envelopes_accept_extra_fields_and_bytes() -> None:
    json_body = json.dumps({"tousername": "x", "encrypt": GOOD, "agentid": 1}).encode()
    assert CRYPTO.decrypt_json(sign(GOOD), TIMESTAMP, NONCE, json_body) == "hello"
    xml_body = f"<xml><ToUserName><![CDATA[x]]></ToUserName><Encrypt><![CDATA[{GOOD}]]></Encrypt></xml>"
    assert CRYPTO.decrypt_xml(sign(GOOD), TIMESTAMP, NONCE, xml_body.encode()) == "hello"
    assert CRYPTO.decrypt_xml(sign(GOOD), TIMESTAMP, NONCE, "\ufeff" .encode() + xml_body.encode()) == "hello"


def test_envelope_parse_errors_come_before_signature_errors() -> None:
    expect(ParseError, -40002, lambda: CRYPTO.decrypt_json("bad", TIMESTAMP, NONCE, "{}"))
    expect(SignatureError, -40001, lambda: CRYPTO.decrypt_json("bad", TIMESTAMP, NONCE, '{"encrypt": "x"}'))


# --- signature first, constant time ---------------------------------------------------------------
class Spy:
    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return self if obj is None else functools.partial(self, obj)  # bind like a method


def test_wrong_signature_never_reaches_base64_or_aes(monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = seal(pad32(frame(b"evil")))  # well-formed, but sent with the original's signature
    good_sig = sign(GOOD)
    aes_new = Spy(AES.new)
    b64decode = Spy(base64.b64decode)
    cipher_decrypt = Spy(crypto.cipher.MessageCipher.decrypt)
    monkeypatch.setattr("crypto.cipher.AES.new", aes_new)
    monkeypatch.setattr("crypto.cipher.base64.b64decode", b64decode)
    monkeypatch.setattr(crypto.cipher.MessageCipher, "decrypt", cipher_decrypt)

    for call in (
        lambda: CRYPTO.decrypt(good_sig, TIMESTAMP, NONCE, tampered),
        lambda: CRYPTO.verify_url(good_sig, TIMESTAMP, NONCE, tampered),
        lambda: CRYPTO.decrypt_json(good_sig, TIMESTAMP, NONCE, json.dumps({"encrypt": tampered})),
        lambda: CRYPTO.decrypt_xml(good_sig, TIMESTAMP, NONCE, f"<xml><Encrypt>{tampered}</Encrypt></xml>"),
        lambda: CRYPTO.decrypt(good_sig.upper(), TIMESTAMP, NONCE, GOOD),
        lambda: CRYPTO.decrypt(good_sig, "1476416374", NONCE, GOOD),
        lambda: CRYPTO.decrypt(good_sig, TIMESTAMP, NONCE + "0", GOOD),
    ):
        expect(SignatureError, -40001, call)
    assert (aes_new.calls, b64decode.calls, cipher_decrypt.calls) == (0, 0, 0)

    # The spies are wired: a correctly signed message goes through all three.
    assert CRYPTO.decrypt(good_sig, TIMESTAMP, NONCE, GOOD) == "hello"
    assert (aes_new.calls, b64decode.calls, cipher_decrypt.calls) == (1, 1, 1)


def test_signature_compare_uses_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[object, object]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(crypto.signature, "hmac", types.SimpleNamespace(compare_digest=compare_digest))
    assert CRYPTO.decrypt(sign(GOOD), TIMESTAMP, NONCE, GOOD) == "hello"
    expect(SignatureError, -40001, lambda: CRYPTO.decrypt("0" * 40, TIMESTAMP, NONCE, GOOD))
    assert calls == [(sign(GOOD).encode(), sign(GOOD).encode()), (sign(GOOD).encode(), b"0" * 40)]


SIGNATURE_EQUALITY = re.compile(r"(==|!=)\s*\w*(signature|digest)\b|\b\w*(signature|digest)\w*\s*(==|!=)")


def test_no_equality_comparison_of_signatures_in_sources() -> None:
    assert SIGNATURE_EQUALITY.search("if msg_signature != expected:")  # the grep can fail
    assert SIGNATURE_EQUALITY.search("ok = expected == signature")
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((ROOT / "crypto").glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SIGNATURE_EQUALITY.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "signature",
    [None, b"0" * 40, 40, "", "é" * 40, "\ud800" * 40, "0" * 41, sign(GOOD) + "\x00"],
    ids=["None", "bytes", "int", "empty", "non-ascii", "surrogates", "41 chars", "NUL suffix"],
)
def test_bad_signature_values_are_signature_errors(signature: Any) -> None:
    expect(SignatureError, -40001, lambda: CRYPTO.decrypt(signature, TIMESTAMP, NONCE, GOOD))
    expect(SignatureError, -40001, lambda: crypto.verify_signature(TOKEN, TIMESTAMP, NONCE, GOOD, signature))


@pytest.mark.parametrize("position", [1, 2, 3])
@pytest.mark.parametrize("value", [None, b"1476416373", 1476416373, "\ud800"], ids=["None", "b", "i", "s"])
def test_non_str_request_values_are_signature_errors(position: int, value: Any) -> None:
    args: list[Any] = [sign(GOOD), TIMESTAMP, NONCE, GOOD]
    args[position] = value
    expect(SignatureError, -40001, lambda: CRYPTO.decrypt(*args))
    expect(SignatureError, -40001, lambda: CRYPTO.verify_url(*args))


def test_compute_signature_rejects_non_str() -> None:
    expect(ComputeSignatureError, -40003, lambda: crypto.compute_signature(TOKEN, 1, NONCE, GOOD))  # type: ignore[arg-type]
    expect(ComputeSignatureError, -40003, lambda: crypto.compute_signature(TOKEN, TIMESTAMP, "\udc00", GOOD))


# --- timestamp window -------------------------------------------------------------------------------
NOW = 1_700_000_000


def windowed(window: int = 300, clock: Callable[[], float] = lambda: float(NOW)) -> WeComCrypto:
    return WeComCrypto(TOKEN, ENCODING_AES_KEY, RECEIVE_ID, clock=clock, timestamp_window=window)


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamp_inside_window_passes(offset: int) -> None:
    ts = str(NOW + offset)
    assert windowed().decrypt(sign(GOOD, ts), ts, NONCE, GOOD) == "hello"


@pytest.mark.parametrize("offset", [-301, 301, -NOW, 10**9])
def test_timestamp_outside_window_fails(offset: int) -> None:
    ts = str(NOW + offset)
    expect(SignatureError, -40001, lambda: windowed().decrypt(sign(GOOD, ts), ts, NONCE, GOOD))


def test_zero_window_and_fractional_clock() -> None:
    ts = str(NOW)
    assert windowed(0).decrypt(sign(GOOD, ts), ts, NONCE, GOOD) == "hello"
    assert windowed(300, lambda: NOW + 300.0).decrypt(sign(GOOD, ts), ts, NONCE, GOOD) == "hello"
    late = windowed(300, lambda: NOW + 300.5)
    expect(SignatureError, -40001, lambda: late.decrypt(sign(GOOD, ts), ts, NONCE, GOOD))


@pytest.mark.parametrize(
    "timestamp",
    ["", "abc", " 1700000000", "1700000000 ", "+1700000000", "-1700000000", "1.7e9", "1700000000.0",
     "1_700_000_000", "١٧٠٠٠٠٠٠٠٠", "0x6553f100", "9" * 20],
)
def test_non_numeric_timestamp_fails_with_window(timestamp: str) -> None:
    expect(SignatureError, -40001, lambda: windowed().decrypt(sign(GOOD, timestamp), timestamp, NONCE, GOOD))


def test_non_numeric_timestamp_is_only_signed_data_without_window() -> None:
    assert CRYPTO.decrypt(sign(GOOD, "abc"), "abc", NONCE, GOOD) == "hello"  # like the official library


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1700000000", None])
def test_broken_clock_fails_closed(now: Any) -> None:
    ts = str(NOW)
    broken = windowed(300, lambda: now)
    expect(SignatureError, -40001, lambda: broken.decrypt(sign(GOOD, ts), ts, NONCE, GOOD))


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"token": ""}, ComputeSignatureError, -40003),
        ({"token": None}, ComputeSignatureError, -40003),
        ({"token": b"token"}, ComputeSignatureError, -40003),
        ({"token": "\ud800"}, ComputeSignatureError, -40003),
        ({"receive_id": None}, ReceiveIdError, -40005),
        ({"receive_id": b"ww"}, ReceiveIdError, -40005),
        ({"receive_id": "\ud800"}, ReceiveIdError, -40005),
        ({"timestamp_window": -1}, SignatureError, -40001),
        ({"timestamp_window": True}, SignatureError, -40001),
        ({"timestamp_window": "300"}, SignatureError, -40001),
        ({"timestamp_window": 1.5}, SignatureError, -40001),
        ({"clock": 0}, SignatureError, -40001),
        ({"random_bytes": b"x" * 16}, EncryptError, -40006),
    ],
    ids=lambda v: repr(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v),
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[WeComCryptoError], code: int) -> None:
    arguments: dict[str, Any] = {"token": TOKEN, "encoding_aes_key": ENCODING_AES_KEY}
    arguments.update(kwargs)
    expect(error, code, lambda: WeComCrypto(**arguments))


def test_properties() -> None:
    assert CRYPTO.receive_id == RECEIVE_ID and CRYPTO.timestamp_window is None
    assert windowed(42).timestamp_window == 42
    with pytest.raises(AttributeError):
        CRYPTO.receive_id = "other"  # type: ignore[misc]


def test_timestamp_window_can_be_reassigned_but_stays_validated() -> None:
    wecom = windowed(300)
    stale = str(NOW - 1000)
    expect(SignatureError, -40001, lambda: wecom.decrypt(sign(GOOD, stale), stale, NONCE, GOOD))
    wecom.timestamp_window = None
    assert wecom.decrypt(sign(GOOD, stale), stale, NONCE, GOOD) == "hello"
    wecom.timestamp_window = 1000
    assert wecom.decrypt(sign(GOOD, stale), stale, NONCE, GOOD) == "hello"
    for bad in (-1, True, "300", 1.5):
        def assign(bad: Any = bad) -> None:
            wecom.timestamp_window = bad

        expect(SignatureError, -40001, assign)
    assert wecom.timestamp_window == 1000
    assert TOKEN not in repr(CRYPTO) and ENCODING_AES_KEY not in repr(CRYPTO)


# --- encrypt side ---------------------------------------------------------------------------------
def test_encrypt_json_has_exactly_the_four_keys() -> None:
    fixed = WeComCrypto(TOKEN, ENCODING_AES_KEY, "", clock=lambda: 1_700_000_123.9)
    text = fixed.encrypt_json('{"msgtype":"stream"}', "263014780")
    envelope = json.loads(text)
    assert list(envelope) == ["encrypt", "msgsignature", "timestamp", "nonce"]
    assert "msg_signature" not in text and " " not in text
    assert envelope["timestamp"] == "1700000123" and envelope["nonce"] == "263014780"
    assert envelope["msgsignature"] == sign(envelope["encrypt"], "1700000123", "263014780")
    plaintext = fixed.decrypt_json(envelope["msgsignature"], "1700000123", "263014780", text)
    assert plaintext == '{"msgtype":"stream"}'


def test_encrypt_xml_layout_and_nonce_handling() -> None:
    text = CRYPTO.encrypt_xml("reply", "a<b&c>d", "1700000000")
    root = ET.fromstring(text)
    assert [child.tag for child in root] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert root.findtext("Nonce") == "a<b&c>d" and root.findtext("TimeStamp") == "1700000000"
    assert text.startswith("<xml><Encrypt><![CDATA[") and "<TimeStamp>1700000000</TimeStamp>" in text
    encrypt = root.findtext("Encrypt") or ""
    signature = sign(encrypt, "1700000000", "a<b&c>d")
    assert root.findtext("MsgSignature") == signature
    assert CRYPTO.decrypt_xml(signature, "1700000000", "a<b&c>d", text) == "reply"


@pytest.mark.parametrize(
    "nonce", ["x]]><Evil/>", "]]>", "a\rb", "\x00", "\x1b", "\ufffe", 123, None, b"123"]
)
def test_encrypt_xml_rejects_unsafe_nonce(nonce: Any) -> None:
    expect(GenReturnError, -40011, lambda: CRYPTO.encrypt_xml("reply", nonce, "1700000000"))


def test_json_reply_escapes_any_nonce() -> None:
    nonce = 'x"},"encrypt":"evil'
    envelope = json.loads(CRYPTO.encrypt_json("reply", nonce, "1"))
    assert envelope["nonce"] == nonce and len(envelope) == 4


@pytest.mark.parametrize("timestamp", ["", "abc", "-1", "1.5", " 1", 1700000000, b"1", "9" * 20, "١"])
def test_bad_reply_timestamp(timestamp: Any) -> None:
    for method in (CRYPTO.encrypt, CRYPTO.encrypt_json, CRYPTO.encrypt_xml):
        expect(GenReturnError, -40011, functools.partial(method, "reply", NONCE, timestamp))


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -5.0, None])
def test_bad_clock_for_reply_timestamp(now: Any) -> None:
    broken = WeComCrypto(TOKEN, ENCODING_AES_KEY, clock=lambda: now)
    expect(GenReturnError, -40011, lambda: broken.encrypt("reply", NONCE))


@pytest.mark.parametrize("plaintext", [None, b"bytes", 1, "\ud800"])
def test_bad_plaintext_is_encrypt_error(plaintext: Any) -> None:
    expect(EncryptError, -40006, lambda: CRYPTO.encrypt(plaintext, NONCE, TIMESTAMP))


@pytest.mark.parametrize("output", [b"x" * 15, b"x" * 17, "x" * 16, None])
def test_bad_random_bytes_output_is_encrypt_error(output: Any) -> None:
    bad = WeComCrypto(TOKEN, ENCODING_AES_KEY, random_bytes=lambda n: output)
    expect(EncryptError, -40006, lambda: bad.encrypt("reply", NONCE, TIMESTAMP))


def test_reply_nonce_with_lone_surrogate_cannot_be_signed() -> None:
    expect(ComputeSignatureError, -40003, lambda: CRYPTO.encrypt("reply", "\ud800", TIMESTAMP))


def test_aligned_frame_gets_full_pad_block() -> None:
    message = "x" * (64 - 20 - len(RECEIVE_ID))  # 16 + 4 + len(msg) + len(receive_id) == 64
    sealed = CRYPTO.encrypt(message, NONCE, TIMESTAMP)
    raw = AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).decrypt(base64.b64decode(sealed.encrypt))
    assert len(raw) == 96 and raw[-32:] == b"\x20" * 32
    assert CRYPTO.decrypt(sealed.signature, TIMESTAMP, NONCE, sealed.encrypt) == message


def test_cipher_padding_helpers() -> None:
    assert crypto.cipher.pkcs7_pad(b"") == b"\x20" * 32
    assert crypto.cipher.pkcs7_pad(b"1" * 32) == b"1" * 32 + b"\x20" * 32
    assert crypto.cipher.pkcs7_pad(b"1" * 31) == b"1" * 31 + b"\x01"
    assert crypto.cipher.pkcs7_unpad(b"1" * 16 + b"\x10" * 16) == b"1" * 16
    for bad in (b"", b"\x00" * 32, b"1" * 31 + b"\x21", b"1" * 4 + b"\x05", b"\x02" * 31 + b"\x03"):
        expect(DecryptError, -40007, functools.partial(crypto.cipher.pkcs7_unpad, bad))


# --- media ----------------------------------------------------------------------------------------
def test_media_round_trip_and_independent_decrypt() -> None:
    data = bytes(range(256)) * 3
    sealed = crypto.encrypt_media(ENCODING_AES_KEY, data)
    raw = AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).decrypt(sealed)
    assert raw == pad32(data) and len(sealed) == 768 + 32
    assert crypto.decrypt_media(ENCODING_AES_KEY, sealed) == data
    assert crypto.decrypt_media(KEY, sealed) == data
    assert crypto.decrypt_media(bytearray(KEY), bytearray(sealed)) == data  # type: ignore[arg-type]
    independent = AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).encrypt(pad32(b"%PNG-not-really"))
    assert crypto.decrypt_media(ENCODING_AES_KEY, independent) == b"%PNG-not-really"


@pytest.mark.parametrize(
    ("key", "data", "error", "code"),
    [
        (KEY[:31], b"x" * 32, IllegalAesKeyError, -40004),
        ("short", b"x" * 32, IllegalAesKeyError, -40004),
        (None, b"x" * 32, IllegalAesKeyError, -40004),
        (KEY, b"", DecryptError, -40007),
        (KEY, b"x" * 33, DecryptError, -40007),
        (KEY, "x" * 32, DecryptError, -40007),
        (KEY, None, DecryptError, -40007),
        (KEY, AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).encrypt(b"x" * 31 + b"\x00"), DecryptError, -40007),
    ],
)
def test_bad_media_input(key: Any, data: Any, error: type[WeComCryptoError], code: int) -> None:
    expect(error, code, lambda: crypto.decrypt_media(key, data))


def test_bad_media_encrypt_input() -> None:
    expect(EncryptError, -40006, lambda: crypto.encrypt_media(KEY, "text"))  # type: ignore[arg-type]
    expect(IllegalAesKeyError, -40004, lambda: crypto.encrypt_media(b"k", b"data"))


# --- exceptions and API surface ---------------------------------------------------------------------
OFFICIAL_CODES = {  # sbzhu/weworkapi_python callback_json_python3/ierror.py, WXBizMsgCrypt_ prefix dropped
    SignatureError: (-40001, "ValidateSignature_Error"),
    ParseError: (-40002, "ParseJson_Error"),
    ComputeSignatureError: (-40003, "ComputeSignature_Error"),
    IllegalAesKeyError: (-40004, "IllegalAesKey"),
    ReceiveIdError: (-40005, "ValidateCorpid_Error"),
    EncryptError: (-40006, "EncryptAES_Error"),
    DecryptError: (-40007, "DecryptAES_Error"),
    IllegalBufferError: (-40008, "IllegalBuffer"),
    EncodeBase64Error: (-40009, "EncodeBase64_Error"),
    DecodeBase64Error: (-40010, "DecodeBase64_Error"),
    GenReturnError: (-40011, "GenReturnJson_Error"),
}


def test_exception_codes_and_names_match_official_table() -> None:
    assert set(WeComCryptoError.__subclasses__()) == set(OFFICIAL_CODES)
    for cls, (code, name) in OFFICIAL_CODES.items():
        error = cls("detail")
        assert (error.code, error.name, cls.code, error.message) == (code, name, code, "detail")
        assert str(error) == f"[{code}] {name}: detail"
        assert isinstance(error, WeComCryptoError) and isinstance(error, Exception)
        clone = pickle.loads(pickle.dumps(error))
        assert (type(clone), clone.code, clone.message) == (cls, code, "detail")
    assert cls().message == name  # default message is the official name
    assert sorted(code for code, _ in OFFICIAL_CODES.values()) == list(range(-40011, -40000))


def test_exported_members() -> None:
    assert set(crypto.__all__) == {
        "WeComCrypto",
        "EncryptedMessage",
        "compute_signature",
        "verify_signature",
        "decode_aes_key",
        "decrypt_media",
        "encrypt_media",
        "WeComCryptoError",
        "SignatureError",
        "ParseError",
        "ComputeSignatureError",
        "IllegalAesKeyError",
        "ReceiveIdError",
        "EncryptError",
        "DecryptError",
        "IllegalBufferError",
        "EncodeBase64Error",
        "DecodeBase64Error",
        "GenReturnError",
    }
    assert len(crypto.__all__) == len(set(crypto.__all__))
    for name in crypto.__all__:
        assert getattr(crypto, name).__module__.startswith("crypto.")


def test_public_functions_have_docstrings() -> None:
    for name in crypto.__all__:
        obj = getattr(crypto, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    for name, member in vars(WeComCrypto).items():
        if not name.startswith("_") and callable(member):
            assert member.__doc__, name


def test_encrypted_message_is_frozen() -> None:
    message = CRYPTO.encrypt("x", NONCE, TIMESTAMP)
    with pytest.raises(AttributeError):
        message.encrypt = "y"  # type: ignore[misc]


FORBIDDEN_PREFIXES = ("flask", "redis", "werkzeug", "requests", "pymysql")


def test_import_is_isolated_from_the_web_stack() -> None:
    script = "import sys, crypto; print(crypto.__file__); print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    crypto_file, *modules = result.stdout.split()
    assert Path(crypto_file).resolve() == ROOT / "crypto" / "__init__.py"
    assert "Crypto.Cipher.AES" in modules  # the check sees real imports
    assert [m for m in modules if m.split(".")[0].startswith(FORBIDDEN_PREFIXES)] == []


def test_crypto_sources_import_only_stdlib_and_pycryptodome() -> None:
    allowed = set(sys.stdlib_module_names) | {"Crypto"}
    for path in sorted((ROOT / "crypto").glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if match and not match.group(1).startswith("."):
                assert match.group(1).split(".")[0] in allowed, f"{path.name}: {line}"


def test_modules_stay_small() -> None:
    for path in (ROOT / "crypto").glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 200, path.name
