"""GET /wecom/callback: URL verification through the real route."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.wecom_client import WeComSigner

# Official vector V3a (receive_id "", the AI-bot case) from wecom-protocol.md §7.2.
V3A = {
    "msg_signature": "9d0ed3ee55d2bfe0b82dc14db76b2c5f0443ad73",
    "timestamp": "1700000000",
    "nonce": "263014780",
    "echostr": "BDXwBah1UBgzbW/KNrMgV80N72HQKY268jIcoeJ0dC1DLGczUqA/h/KHYqKcZMbVLPOT6DrmHrjRnWUoj6wb4Q==",
}


def url(params: dict[str, str]) -> str:
    return "/wecom/callback?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


@pytest.fixture
def no_window(app):  # type: ignore[no-untyped-def]
    """The official vector's timestamp is from 2023: disable the replay window for it."""
    from services.bridge import get_bridge

    with app.app_context():
        get_bridge().bots["default"].crypto.timestamp_window = None
    return app


def test_official_vector_answers_bare_plaintext(no_window) -> None:  # type: ignore[no-untyped-def]
    resp = no_window.test_client().get(url(V3A))
    assert resp.status_code == 200
    assert resp.data == b"1616140317555161061"  # no quotes, no newline, no BOM
    assert resp.mimetype == "text/plain"


def test_signed_by_our_signer(client: FlaskClient, signer: WeComSigner) -> None:
    req = signer.verify_request("hello-ä")
    resp = client.get("/wecom/callback?" + req.query_string)
    assert resp.status_code == 200
    assert resp.get_data(as_text=True) == "hello-ä"


def test_bad_signature_is_403_and_nothing_decrypted(client: FlaskClient, signer: WeComSigner,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import crypto.cipher

    calls: list[str] = []
    real = crypto.cipher.MessageCipher.decrypt

    def spy(self: crypto.cipher.MessageCipher, ciphertext: str) -> str:
        calls.append(ciphertext)
        return real(self, ciphertext)

    monkeypatch.setattr(crypto.cipher.MessageCipher, "decrypt", spy)
    req = signer.verify_request("x")
    bad = {**req.query, "msg_signature": "0" * 40}
    assert client.get(url(bad)).status_code == 403
    assert calls == []
    assert client.get(url(req.query)).status_code == 200  # control: the spy does see real decryption
    assert calls == [req.query["echostr"]]


def test_stale_timestamp_is_rejected(client: FlaskClient, signer: WeComSigner) -> None:
    req = signer.verify_request("x", timestamp="1000000000")
    assert client.get("/wecom/callback?" + req.query_string).status_code == 403


@pytest.mark.parametrize("missing", ["msg_signature", "timestamp", "nonce", "echostr"])
def test_missing_parameter_is_400(client: FlaskClient, signer: WeComSigner, missing: str) -> None:
    req = signer.verify_request("x")
    params = {k: v for k, v in req.query.items() if k != missing}
    assert client.get(url(params)).status_code == 400


def test_wrong_receive_id_is_400_not_500(client: FlaskClient) -> None:
    corp_signer = WeComSigner("hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo",
                              "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt", "ww1436e0e65a779aee")
    req = corp_signer.verify_request("x")
    assert client.get("/wecom/callback?" + req.query_string).status_code == 400


text = st.text(min_size=0, max_size=80)
raw = st.binary(max_size=80).map(lambda b: quote(b, safe=""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sig=text | raw, ts=text | raw, nonce=text | raw, echo=text | raw, extra=st.booleans())
def test_fuzzed_query_never_5xx(client: FlaskClient, sig: str, ts: str, nonce: str, echo: str,
                                extra: bool) -> None:
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in
                  {"msg_signature": sig, "timestamp": ts, "nonce": nonce, "echostr": echo}.items())
    if extra:
        qs += "&" + echo  # raw, possibly malformed, query fragment
    resp = client.get("/wecom/callback?" + qs)
    assert resp.status_code < 500


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(echo=st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s))
def test_any_text_round_trips(client: FlaskClient, signer: WeComSigner, echo: str) -> None:
    req = signer.verify_request(echo)
    resp = client.get("/wecom/callback?" + req.query_string)
    assert resp.status_code == 200
    assert resp.get_data(as_text=True) == echo
