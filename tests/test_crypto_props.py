"""Property tests for crypto/: round trips, the 32-byte padding boundary, and fuzzing every entry point.

The fuzz tests assert the package's contract: whatever the input, a public function returns normally
or raises a WeComCryptoError subclass, never anything else. Signatures are also computed over the
garbage so the paths after the signature check (base64, AES, padding, framing, UTF-8) are fuzzed too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
from crypto import GenReturnError, WeComCrypto, WeComCryptoError

TOKEN = "QDG6eK"
ENCODING_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
KEY = base64.b64decode(ENCODING_AES_KEY + "=")
TIMESTAMP = "1409659813"
NONCE = "1372623149"

AI_BOT = WeComCrypto(TOKEN, ENCODING_AES_KEY, "")
APP = WeComCrypto(TOKEN, ENCODING_AES_KEY, "wx5823bf96d3bd56c7")

ROUND_TRIP = settings(max_examples=200, deadline=None, database=None)
FUZZ = settings(max_examples=300, deadline=None, database=None)

timestamps = st.integers(min_value=0, max_value=10**12).map(str)
anything: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=3),
    st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
)


def sign(encrypt: str, timestamp: str = TIMESTAMP, nonce: str = NONCE) -> str:
    return hashlib.sha1("".join(sorted([TOKEN, timestamp, nonce, encrypt])).encode()).hexdigest()


def raises_only_crypto_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except WeComCryptoError as e:
        assert isinstance(e.code, int) and -40011 <= e.code <= -40001
        assert isinstance(e.message, str) and e.message


def pad32(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


def seal(data: bytes) -> str:
    """AES-encrypt data (zero-extended to 16 bytes if needed) with the test key and base64 it."""
    data += b"\x00" * (-len(data) % 16)
    return base64.b64encode(AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).encrypt(data)).decode()


# Garbage that increasingly gets past each decoding stage: any text, valid base64 of any bytes, valid
# AES of any bytes, valid AES of correctly padded bytes, and correctly padded random frames.
frames = st.builds(
    lambda random, length, body: random + length.to_bytes(4, "big") + body,
    st.binary(min_size=16, max_size=16),
    st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
    st.binary(max_size=80),
)
garbage_ciphertexts = st.one_of(
    st.text(),
    st.binary().map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=200).map(seal),
    st.binary(max_size=200).map(lambda b: seal(pad32(b))),
    frames.map(lambda f: seal(pad32(f))),
)


# --- round trips ----------------------------------------------------------------------------------
@ROUND_TRIP
@given(plaintext=st.text(), receive_id=st.text(max_size=40), nonce=st.text(), timestamp=timestamps)
def test_encrypt_decrypt_round_trip(plaintext: str, receive_id: str, nonce: str, timestamp: str) -> None:
    wecom = WeComCrypto(TOKEN, ENCODING_AES_KEY, receive_id)
    message = wecom.encrypt(plaintext, nonce, timestamp)
    assert (message.timestamp, message.nonce) == (timestamp, nonce)
    assert message.signature == sign(message.encrypt, timestamp, nonce)
    assert wecom.decrypt(message.signature, timestamp, nonce, message.encrypt) == plaintext
    assert wecom.verify_url(message.signature, timestamp, nonce, message.encrypt) == plaintext


@ROUND_TRIP
@given(plaintext=st.text(), receive_id=st.text(max_size=40), nonce=st.text(), timestamp=timestamps)
def test_json_round_trip(plaintext: str, receive_id: str, nonce: str, timestamp: str) -> None:
    wecom = WeComCrypto(TOKEN, ENCODING_AES_KEY, receive_id)
    body = wecom.encrypt_json(plaintext, nonce, timestamp)
    envelope = json.loads(body)
    assert list(envelope) == ["encrypt", "msgsignature", "timestamp", "nonce"]
    assert (envelope["timestamp"], envelope["nonce"]) == (timestamp, nonce)
    assert wecom.decrypt_json(envelope["msgsignature"], timestamp, nonce, body) == plaintext
    assert wecom.decrypt_json(envelope["msgsignature"], timestamp, nonce, body.encode()) == plaintext


XML_UNSAFE = re.compile("]]>|[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@ROUND_TRIP
@given(plaintext=st.text(), receive_id=st.text(max_size=40), nonce=st.text(), timestamp=timestamps)
def test_xml_round_trip(plaintext: str, receive_id: str, nonce: str, timestamp: str) -> None:
    wecom = WeComCrypto(TOKEN, ENCODING_AES_KEY, receive_id)
    if XML_UNSAFE.search(nonce):
        try:
            wecom.encrypt_xml(plaintext, nonce, timestamp)
        except GenReturnError:
            return
        raise AssertionError("an XML-unsafe nonce was accepted")
    body = wecom.encrypt_xml(plaintext, nonce, timestamp)
    root = ET.fromstring(body)
    assert [child.tag for child in root] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert (root.findtext("TimeStamp"), root.findtext("Nonce") or "") == (timestamp, nonce)
    signature = root.findtext("MsgSignature") or ""
    assert wecom.decrypt_xml(signature, timestamp, nonce, body) == plaintext


@ROUND_TRIP
@given(nonce=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r")).filter(
    lambda n: "]]>" not in n and not XML_UNSAFE.search(n)))
def test_xml_nonce_survives_cdata(nonce: str) -> None:
    body = AI_BOT.encrypt_xml("x", nonce, TIMESTAMP)
    assert (ET.fromstring(body).findtext("Nonce") or "") == nonce


@ROUND_TRIP
@given(receive_id=st.sampled_from(["", "wx5823bf96d3bd56c7", "ww1436e0e65a779aee", "你好"]), data=st.data())
def test_aligned_frames_get_and_lose_a_full_pad_block(receive_id: str, data: st.DataObject) -> None:
    wecom = WeComCrypto(TOKEN, ENCODING_AES_KEY, receive_id, random_bytes=lambda n: b"\x00" * n)
    rid = len(receive_id.encode())
    blocks = data.draw(st.integers(min_value=2, max_value=8))
    unit = data.draw(st.sampled_from(["a", "é", "你", "😀"]))  # 1, 2, 3 and 4 UTF-8 bytes
    size = 32 * blocks - 20 - rid  # bytes of message that make the frame exactly `blocks` blocks
    count, rest = divmod(size, len(unit.encode()))
    plaintext = unit * count + "a" * rest
    assert (16 + 4 + len(plaintext.encode()) + rid) % 32 == 0
    message = wecom.encrypt(plaintext, NONCE, TIMESTAMP)
    raw = AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).decrypt(base64.b64decode(message.encrypt))
    assert len(raw) == 32 * blocks + 32 and raw[-32:] == b"\x20" * 32
    assert wecom.decrypt(message.signature, TIMESTAMP, NONCE, message.encrypt) == plaintext


@ROUND_TRIP
@given(plaintext=st.text(), receive_id=st.text(max_size=40))
def test_padding_is_always_1_to_32_bytes(plaintext: str, receive_id: str) -> None:
    wecom = WeComCrypto(TOKEN, ENCODING_AES_KEY, receive_id, random_bytes=lambda n: b"\x00" * n)
    message = wecom.encrypt(plaintext, NONCE, TIMESTAMP)
    raw = AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).decrypt(base64.b64decode(message.encrypt))
    framed = 20 + len(plaintext.encode()) + len(receive_id.encode())
    assert len(raw) % 32 == 0 and raw[-1] == len(raw) - framed and 1 <= raw[-1] <= 32
    assert int.from_bytes(raw[16:20], "big") == len(plaintext.encode())


@ROUND_TRIP
@given(data=st.binary(max_size=2000))
def test_media_round_trip(data: bytes) -> None:
    sealed = crypto.encrypt_media(ENCODING_AES_KEY, data)
    assert len(sealed) % 32 == 0 and len(data) < len(sealed) <= len(data) + 32
    assert AES.new(KEY, AES.MODE_CBC, iv=KEY[:16]).decrypt(sealed) == pad32(data)
    assert crypto.decrypt_media(ENCODING_AES_KEY, sealed) == data
    assert crypto.decrypt_media(KEY, sealed) == data


@ROUND_TRIP
@given(data=st.binary(max_size=200))
def test_pkcs7_round_trip(data: bytes) -> None:
    padded = crypto.cipher.pkcs7_pad(data)
    assert len(padded) % 32 == 0 and 1 <= len(padded) - len(data) <= 32
    assert crypto.cipher.pkcs7_unpad(padded) == data


# --- fuzz: only WeComCryptoError escapes ------------------------------------------------------------
@FUZZ
@given(
    method=st.sampled_from(["decrypt", "verify_url", "decrypt_json", "decrypt_xml"]),
    wecom=st.sampled_from([AI_BOT, APP]),
    args=st.tuples(anything, anything, anything, anything),
)
def test_fuzz_decrypt_methods_with_arbitrary_arguments(method: str, wecom: WeComCrypto, args: Any) -> None:
    raises_only_crypto_errors(lambda: getattr(wecom, method)(*args))


@FUZZ
@given(position=st.integers(0, 3), value=anything, wecom=st.sampled_from([AI_BOT, APP]))
def test_fuzz_one_bad_argument_among_valid_ones(position: int, value: Any, wecom: WeComCrypto) -> None:
    message = wecom.encrypt("hello", NONCE, TIMESTAMP)
    args: list[Any] = [message.signature, TIMESTAMP, NONCE, message.encrypt]
    args[position] = value
    raises_only_crypto_errors(lambda: wecom.decrypt(*args))
    body_args = list(args)
    body_args[3] = value if position == 3 else wecom.encrypt_json("hello", NONCE, TIMESTAMP)
    raises_only_crypto_errors(lambda: wecom.decrypt_json(*body_args))
    body_args[3] = value if position == 3 else wecom.encrypt_xml("hello", NONCE, TIMESTAMP)
    raises_only_crypto_errors(lambda: wecom.decrypt_xml(*body_args))


@FUZZ
@given(
    encrypt=garbage_ciphertexts, timestamp=timestamps, nonce=st.text(), wecom=st.sampled_from([AI_BOT, APP])
)
def test_fuzz_validly_signed_garbage(encrypt: str, timestamp: str, nonce: str, wecom: WeComCrypto) -> None:
    signature = sign(encrypt, timestamp, nonce)
    raises_only_crypto_errors(lambda: wecom.decrypt(signature, timestamp, nonce, encrypt))
    json_body = json.dumps({"encrypt": encrypt})
    raises_only_crypto_errors(lambda: wecom.decrypt_json(signature, timestamp, nonce, json_body))
    xml_body = f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    raises_only_crypto_errors(lambda: wecom.decrypt_xml(signature, timestamp, nonce, xml_body))


@FUZZ
@given(body=st.one_of(anything, st.text().map(str.encode)), wecom=st.sampled_from([AI_BOT, APP]))
def test_fuzz_envelope_bodies(body: Any, wecom: WeComCrypto) -> None:
    raises_only_crypto_errors(lambda: wecom.decrypt_json("0" * 40, TIMESTAMP, NONCE, body))
    raises_only_crypto_errors(lambda: wecom.decrypt_xml("0" * 40, TIMESTAMP, NONCE, body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(document=st.dictionaries(st.text(max_size=8), json_values, max_size=4), encrypt=garbage_ciphertexts)
def test_fuzz_json_envelopes_with_valid_signature(document: dict[str, Any], encrypt: str) -> None:
    document["encrypt"] = encrypt
    body = json.dumps(document)
    raises_only_crypto_errors(lambda: AI_BOT.decrypt_json(sign(encrypt), TIMESTAMP, NONCE, body))


@FUZZ
@given(
    method=st.sampled_from(["encrypt", "encrypt_json", "encrypt_xml"]),
    args=st.tuples(anything, anything, st.one_of(st.none(), anything)),
)
def test_fuzz_encrypt_methods(method: str, args: Any) -> None:
    raises_only_crypto_errors(lambda: getattr(AI_BOT, method)(*args))


@FUZZ
@given(args=st.tuples(anything, anything, anything, anything, anything))
def test_fuzz_module_functions(args: Any) -> None:
    raises_only_crypto_errors(lambda: crypto.compute_signature(*args[:4]))
    raises_only_crypto_errors(lambda: crypto.verify_signature(*args))
    raises_only_crypto_errors(lambda: crypto.decode_aes_key(args[0]))
    raises_only_crypto_errors(lambda: crypto.decrypt_media(args[0], args[1]))
    raises_only_crypto_errors(lambda: crypto.encrypt_media(args[0], args[1]))


@FUZZ
@given(key=st.one_of(st.just(ENCODING_AES_KEY), st.just(KEY), anything), data=st.one_of(
    st.binary(), st.binary(max_size=200).map(lambda b: base64.b64decode(seal(b))), anything))
def test_fuzz_media(key: Any, data: Any) -> None:
    raises_only_crypto_errors(lambda: crypto.decrypt_media(key, data))


@FUZZ
@given(
    token=anything,
    key=st.one_of(anything, st.text(alphabet="ABCabc019+/=é ", min_size=40, max_size=46)),
    receive_id=anything,
    window=st.one_of(st.none(), anything),
)
def test_fuzz_constructor(token: Any, key: Any, receive_id: Any, window: Any) -> None:
    raises_only_crypto_errors(lambda: WeComCrypto(token, key, receive_id, timestamp_window=window))
