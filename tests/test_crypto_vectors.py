"""Official WeCom test vectors (docs/reference wecom-protocol.md §7.2), reproduced exactly.

V1: official Python samples (sbzhu/weworkapi_python @ 16e0b05). V2: the legacy vector used by the Go
sample and many SDKs. V3: derived vectors for receive_id "" (the AI-bot case), accepted by the
official JSON library. Strings are copied verbatim from the reference.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import xml.etree.ElementTree as ET

import pytest
from Crypto.Cipher import AES

from crypto import EncryptedMessage, ReceiveIdError, SignatureError, WeComCrypto, compute_signature

# --- V1: official Python samples -----------------------------------------------------------------
V1_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
V1_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
V1_RECEIVE_ID = "ww1436e0e65a779aee"

V1A_SIGNATURE = "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb"
V1A_TIMESTAMP = "1476416373"
V1A_NONCE = "47744683"
V1A_ECHOSTR = "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA=="
V1A_PLAINTEXT = "1288432023552776189"
V1A_RANDOM = b"8908d0ff052afda0"

V1B_SIGNATURE = "0c3914025cb4b4d68103f6bfc8db550f79dcf48e"
V1B_TIMESTAMP = "1476422779"
V1B_NONCE = "1597212914"
V1B_ENCRYPT = (
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTk"
    "AgGzBhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJP"
    "QbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7Mhm"
    "EbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/"
    "oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+"
)
V1B_ENVELOPE = (
    "<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\n"
    f"<Encrypt><![CDATA[{V1B_ENCRYPT}]]></Encrypt>\n"
    "<AgentID><![CDATA[1000002]]></AgentID>\n"
    "</xml>"
)
V1B_PLAINTEXT = (
    "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName>"
    "<CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content>"
    "<MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>"
)

V1C_SIGNATURE = "e3647471e395139e2308c1fa963f2d648a00b90e"
V1C_TIMESTAMP = "1409659813"
V1C_NONCE = "1372623149"
V1C_BODY = (
    '{ "tousername": "wx5823bf96d3bd56c7", "encrypt": "cjhLUX7UU4yCSelv1vz7T0zT8huF51bAMVWriN'
    "vO1FMegHrQZNrtvRxbwf0fUPsFvwqR0U0fgiJNEA5Y30F2MoI2S7vv3EjVQ68C0cjw9frBoUE2Hj0BvFp9h3u6Vb"
    "sg4lc1C8AtHdaN8orKuNKkLRLuYEL52R1J3v8olJGZRLnRdVKIivixmX/eQpzgeExtp20jI1HxRP1AAZ6xZoILdq"
    'DPO549LO4WeG+685JRUTdiwcY5fjZlqeMxuT4PpMn1X9OWsS7NRj06Wa5E3Tvg4twjWp39KPfOdRte6P1T4JU=",'
    ' "agentid": 218 }'
)
# Intentionally NOT valid JSON (":mycreate"): compare strings, never parse.
V1C_PLAINTEXT = (
    '{ "ToUserName": "wx5823bf96d3bd56c7", "FromUserName": :mycreate", "CreateTime": 1409659813, '
    '"MsgType": "text", "Content": "hello", "MsgId": 4561255354251345929, "AgentID": 218}'
)

# --- V2: legacy official vector --------------------------------------------------------------------
V2_TOKEN = "QDG6eK"
V2_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
V2_RECEIVE_ID = "wx5823bf96d3bd56c7"

V2A_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
V2A_TIMESTAMP = "1409659589"
V2A_NONCE = "263014780"
V2A_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
V2A_ECHOSTR_URLENCODED = (
    "P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D"
)
V2A_PLAINTEXT = "1616140317555161061"

V2B_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
V2B_TIMESTAMP = "1409659813"
V2B_NONCE = "1372623149"
V2B_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3Qczc"
    "dCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLj"
    "vd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMn"
    "vw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k"
    "22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Yoy"
    "yH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
V2B_ENVELOPE = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
    f"<Encrypt><![CDATA[{V2B_ENCRYPT}]]></Encrypt>\n"
    "<AgentID><![CDATA[218]]></AgentID>\n"
    "</xml>"
)
V2B_PLAINTEXT = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
    "<FromUserName><![CDATA[mycreate]]></FromUserName>\n"
    "<CreateTime>1409659813</CreateTime>\n"
    "<MsgType><![CDATA[text]]></MsgType>\n"
    "<Content><![CDATA[hello]]></Content>\n"
    "<MsgId>4561255354251345929</MsgId>\n"
    "<AgentID>218</AgentID>\n"
    "</xml>"
)
WRONG_TOKEN_SIGNATURE = "0a0e97529eaef1b21bb08d9355da85e8dc08c2e1"

# --- V3: derived, receive_id "" (V1 token and key) -------------------------------------------------
V3A_SIGNATURE = "9d0ed3ee55d2bfe0b82dc14db76b2c5f0443ad73"
V3A_TIMESTAMP = "1700000000"
V3A_NONCE = "263014780"
V3A_ECHOSTR = "BDXwBah1UBgzbW/KNrMgV80N72HQKY268jIcoeJ0dC1DLGczUqA/h/KHYqKcZMbVLPOT6DrmHrjRnWUoj6wb4Q=="
V3A_PLAINTEXT = "1616140317555161061"

V3B_SIGNATURE = "7c2e41a341c7b0ff286cc1c8eab833b4f1a37e87"
V3B_TIMESTAMP = "1700000000"
V3B_NONCE = "1372623149"
V3B_ENCRYPT = (
    "/K4xJYsBwQssQzE/v2nbvHSINLbXLyYgMOTIJtmEaT6Bdk5Bd4nUikZzqRLT8zylYaInKmAi4oPazesRIbaZ4q4e"
    "+8qk8iIFt57vPzi6O8uKsj/crb003BgER2bpqtHnFw4PPjpVxvSEcF7tZo1hzsGJdubU7iF6S4hVhPThE7+FZ9CB"
    "ZUoDvukePxntVfAFA2WYrXr5okXZpkMVzbqf/QHHDciLzalApSBbEH5iN2wEgsXGBEJQ2/Pqo5AAEm1q"
)
V3B_PLAINTEXT = (
    '{"msgid":"MSGID1","aibotid":"AIBOTID","chattype":"single","from":{"userid":"USERID"},'
    '"response_url":"RESPONSEURL","msgtype":"text","text":{"content":"你好"}}'
)

V1 = WeComCrypto(V1_TOKEN, V1_KEY, V1_RECEIVE_ID)
V2 = WeComCrypto(V2_TOKEN, V2_KEY, V2_RECEIVE_ID)
V3 = WeComCrypto(V1_TOKEN, V1_KEY, "")


def _raw_decrypt(encoding_aes_key: str, encrypt: str) -> bytes:
    """Decrypt with pycryptodome directly (independent of the code under test), padding kept."""
    key = base64.b64decode(encoding_aes_key + "=")
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(base64.b64decode(encrypt))


def test_v1a_verify_url() -> None:
    assert V1.verify_url(V1A_SIGNATURE, V1A_TIMESTAMP, V1A_NONCE, V1A_ECHOSTR) == V1A_PLAINTEXT


def test_v1a_signature_known_answer() -> None:
    assert compute_signature(V1_TOKEN, V1A_TIMESTAMP, V1A_NONCE, V1A_ECHOSTR) == V1A_SIGNATURE


def test_v1b_xml_decrypt() -> None:
    plaintext = V1B_PLAINTEXT
    assert V1.decrypt_xml(V1B_SIGNATURE, V1B_TIMESTAMP, V1B_NONCE, V1B_ENVELOPE) == plaintext
    assert V1.decrypt_xml(V1B_SIGNATURE, V1B_TIMESTAMP, V1B_NONCE, V1B_ENVELOPE.encode()) == plaintext
    assert V1.decrypt(V1B_SIGNATURE, V1B_TIMESTAMP, V1B_NONCE, V1B_ENCRYPT) == plaintext
    # msg_len counts bytes: 224 characters, 228 UTF-8 bytes (two CJK characters).
    assert (len(plaintext), len(plaintext.encode())) == (224, 228)


def test_v1c_json_decrypt_compares_strings() -> None:
    plaintext = V1.decrypt_json(V1C_SIGNATURE, V1C_TIMESTAMP, V1C_NONCE, V1C_BODY)
    assert plaintext == V1C_PLAINTEXT
    assert len(plaintext.encode()) == 176
    with pytest.raises(json.JSONDecodeError):
        json.loads(plaintext)  # the official sample plaintext is not JSON; the library must not care
    assert V1.decrypt_json(V1C_SIGNATURE, V1C_TIMESTAMP, V1C_NONCE, V1C_BODY.encode()) == V1C_PLAINTEXT


def test_v2a_verify_url_through_query_decoding() -> None:
    query = (
        f"msg_signature={V2A_SIGNATURE}&timestamp={V2A_TIMESTAMP}&nonce={V2A_NONCE}"
        f"&echostr={V2A_ECHOSTR_URLENCODED}"
    )
    params = {k: v[0] for k, v in urllib.parse.parse_qs(query, strict_parsing=True).items()}
    assert params["echostr"] == V2A_ECHOSTR
    body = V2.verify_url(params["msg_signature"], params["timestamp"], params["nonce"], params["echostr"])
    assert body == V2A_PLAINTEXT


def test_v2a_still_percent_encoded_echostr_fails_signature() -> None:
    with pytest.raises(SignatureError) as info:
        V2.verify_url(V2A_SIGNATURE, V2A_TIMESTAMP, V2A_NONCE, V2A_ECHOSTR_URLENCODED)
    assert info.value.code == -40001


def test_v2b_xml_decrypt() -> None:
    plaintext = V2.decrypt_xml(V2B_SIGNATURE, V2B_TIMESTAMP, V2B_NONCE, V2B_ENVELOPE)
    assert plaintext == V2B_PLAINTEXT
    assert len(plaintext.encode()) == 284
    assert plaintext.count("\n") == 7 and not plaintext.endswith("\n")


def test_v3a_verify_url_empty_receive_id() -> None:
    assert V3.verify_url(V3A_SIGNATURE, V3A_TIMESTAMP, V3A_NONCE, V3A_ECHOSTR) == V3A_PLAINTEXT


def test_v3b_json_decrypt_empty_receive_id() -> None:
    body = json.dumps({"encrypt": V3B_ENCRYPT})
    assert V3.decrypt_json(V3B_SIGNATURE, V3B_TIMESTAMP, V3B_NONCE, body) == V3B_PLAINTEXT
    assert json.loads(V3B_PLAINTEXT)["text"]["content"] == "你好"


def test_wrong_token_is_signature_error() -> None:
    assert compute_signature(V1_TOKEN, V2A_TIMESTAMP, V2A_NONCE, V2A_ECHOSTR) == WRONG_TOKEN_SIGNATURE
    wrong = WeComCrypto(V1_TOKEN, V2_KEY, V2_RECEIVE_ID)
    with pytest.raises(SignatureError) as info:
        wrong.verify_url(V2A_SIGNATURE, V2A_TIMESTAMP, V2A_NONCE, V2A_ECHOSTR)
    assert (info.value.code, info.value.name) == (-40001, "ValidateSignature_Error")


def test_v1a_with_empty_receive_id_is_receive_id_error() -> None:
    with pytest.raises(ReceiveIdError) as info:
        V3.verify_url(V1A_SIGNATURE, V1A_TIMESTAMP, V1A_NONCE, V1A_ECHOSTR)
    assert info.value.code == -40005


def test_v3a_with_corpid_receive_id_is_receive_id_error() -> None:
    with pytest.raises(ReceiveIdError):
        V1.verify_url(V3A_SIGNATURE, V3A_TIMESTAMP, V3A_NONCE, V3A_ECHOSTR)


@pytest.mark.parametrize(
    ("key", "encrypt", "pad"),
    [
        (V1_KEY, V1A_ECHOSTR, 7),
        (V1_KEY, V1B_ENCRYPT, 22),
        (V1_KEY, json.loads(V1C_BODY)["encrypt"], 10),
        (V2_KEY, V2A_ECHOSTR, 7),
        (V2_KEY, V2B_ENCRYPT, 30),
        (V1_KEY, V3B_ENCRYPT, 13),
    ],
)
def test_official_ciphertexts_use_32_byte_pkcs7(key: str, encrypt: str, pad: int) -> None:
    raw = _raw_decrypt(key, encrypt)
    assert raw[-pad:] == bytes([pad]) * pad and len(raw) % 32 == 0


def test_deterministic_encrypt_reproduces_v1a() -> None:
    def random_bytes(n: int) -> bytes:
        assert n == 16
        return V1A_RANDOM

    crypto = WeComCrypto(V1_TOKEN, V1_KEY, V1_RECEIVE_ID, random_bytes=random_bytes)
    message = crypto.encrypt(V1A_PLAINTEXT, V1A_NONCE, V1A_TIMESTAMP)
    assert message == EncryptedMessage(V1A_ECHOSTR, V1A_SIGNATURE, V1A_TIMESTAMP, V1A_NONCE)
    assert json.loads(crypto.encrypt_json(V1A_PLAINTEXT, V1A_NONCE, V1A_TIMESTAMP)) == {
        "encrypt": V1A_ECHOSTR,
        "msgsignature": V1A_SIGNATURE,
        "timestamp": V1A_TIMESTAMP,
        "nonce": V1A_NONCE,
    }
    assert crypto.encrypt_xml(V1A_PLAINTEXT, V1A_NONCE, V1A_TIMESTAMP) == (
        f"<xml><Encrypt><![CDATA[{V1A_ECHOSTR}]]></Encrypt>"
        f"<MsgSignature><![CDATA[{V1A_SIGNATURE}]]></MsgSignature>"
        f"<TimeStamp>{V1A_TIMESTAMP}</TimeStamp><Nonce><![CDATA[{V1A_NONCE}]]></Nonce></xml>"
    )


V1_CREDENTIALS = (V1_TOKEN, V1_KEY, V1_RECEIVE_ID)
V2_CREDENTIALS = (V2_TOKEN, V2_KEY, V2_RECEIVE_ID)
V3_CREDENTIALS = (V1_TOKEN, V1_KEY, "")
_ENCRYPT_VECTORS = {
    # id: ((token, key, receive_id), plaintext, encrypt, timestamp, nonce, signature)
    "V1b": (V1_CREDENTIALS, V1B_PLAINTEXT, V1B_ENCRYPT, V1B_TIMESTAMP, V1B_NONCE, V1B_SIGNATURE),
    "V2a": (V2_CREDENTIALS, V2A_PLAINTEXT, V2A_ECHOSTR, V2A_TIMESTAMP, V2A_NONCE, V2A_SIGNATURE),
    "V2b": (V2_CREDENTIALS, V2B_PLAINTEXT, V2B_ENCRYPT, V2B_TIMESTAMP, V2B_NONCE, V2B_SIGNATURE),
    "V3a": (V3_CREDENTIALS, V3A_PLAINTEXT, V3A_ECHOSTR, V3A_TIMESTAMP, V3A_NONCE, V3A_SIGNATURE),
    "V3b": (V3_CREDENTIALS, V3B_PLAINTEXT, V3B_ENCRYPT, V3B_TIMESTAMP, V3B_NONCE, V3B_SIGNATURE),
}


@pytest.mark.parametrize("vector", list(_ENCRYPT_VECTORS))
def test_deterministic_encrypt_reproduces_every_vector(vector: str) -> None:
    (token, key, receive_id), plaintext, encrypt, timestamp, nonce, signature = _ENCRYPT_VECTORS[vector]
    prefix = _raw_decrypt(key, encrypt)[:16]  # the vector's own random prefix
    crypto = WeComCrypto(token, key, receive_id, random_bytes=lambda n: prefix)
    expected = EncryptedMessage(encrypt, signature, timestamp, nonce)
    assert crypto.encrypt(plaintext, nonce, timestamp) == expected


# --- W: wechatpy's WeCom known-answer tests (wechatpy/wechatpy tests/test_crypto.py) ----------------
W_TOKEN = "123456"
W_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
W_CORP_ID = "wx49f0ab532d5d035a"
W_ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
W_REPLY = (
    "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n"
    "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n"
    "<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n"
    "<CreateTime>1411525903</CreateTime>\n</xml>"
)
W_REPLY_ENCRYPT = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGs"
    "L8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSj"
    "PUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJv"
    "FurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFY"
    "FMNMpatF9XiKzHo3"
)
W_MESSAGE = (
    "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n"
    "<Encrypt><![CDATA[RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPat"
    "fjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpX"
    "aG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vX"
    "UaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7ml"
    "sl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=]]></Encrypt>\n"
    "<AgentID><![CDATA[1]]></AgentID>\n</xml>"
)


def test_wechatpy_check_signature() -> None:
    wecom = WeComCrypto(W_TOKEN, W_KEY, W_CORP_ID)
    echo = wecom.verify_url("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374425", W_ECHOSTR)
    assert echo == "5927782489442352469"  # wechatpy only checks that this does not raise; value recorded here
    with pytest.raises(SignatureError):  # wechatpy's negative case: nonce off by one
        wecom.verify_url("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374424", W_ECHOSTR)


def test_wechatpy_deterministic_encrypt() -> None:
    wecom = WeComCrypto(W_TOKEN, W_KEY, W_CORP_ID, random_bytes=lambda n: b"1234567890123456")
    message = wecom.encrypt(W_REPLY, "461056294", "1411525903")
    assert message.encrypt == W_REPLY_ENCRYPT
    assert message.signature == "407518b7649e86ef23978113f92d27afa9296533"


def test_wechatpy_decrypt_message() -> None:
    wecom = WeComCrypto(W_TOKEN, W_KEY, W_CORP_ID)
    signature = "74d92dfeb87ba7c714f89d98870ae5eb62dff26d"
    for body in (W_MESSAGE, W_MESSAGE.encode()):
        plaintext = wecom.decrypt_xml(signature, "1411525903", "461056294", body)
        root = ET.fromstring(plaintext)
        assert (root.findtext("Content"), root.findtext("FromUserName")) == ("test", "messense")
