"""Files to Dify: ``POST /files/upload`` and ``files`` in a chat against the simulator, and the app's
file rules from ``GET /parameters`` (which types, how many, how large)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from services.dify import Delta
from services.dify.files import MB, FileRules, Refusal
from services.errors import DifyHTTPError
from tests import test_dify_client
from tests.test_dify_client import KEY, MakeClient, Run, collect
from tools.dify_sim import DEFAULT_FILE_UPLOAD, DifySimulator

loop_thread, run, sleeps, make_client = (test_dify_client.loop_thread, test_dify_client.run,  # the fixtures
                                         test_dify_client.sleeps, test_dify_client.make_client)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def test_an_upload_returns_its_id_and_reaches_dify_as_sent(dify: DifySimulator, make_client: MakeClient,
                                                          run: Run[Any]) -> None:
    client = make_client()
    file_id = run(client.upload(PNG, filename="photo.png", mime="image/png", user="wecom:zhangsan"))
    upload = dify.uploads[file_id]
    assert (upload.name, upload.mime, upload.user, upload.data) == ("photo.png", "image/png", "wecom:zhangsan", PNG)
    [request] = [r for r in dify.requests if r.path == "/v1/files/upload"]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    files = [{"type": "image", "transfer_method": "local_file", "upload_file_id": file_id}]
    events, error = run(collect(client.chat("这是什么", user="wecom:zhangsan", files=files)))
    assert error is None and any(isinstance(e, Delta) for e in events)
    assert dify.chat_requests()[-1].json["files"] == files


def test_an_upload_that_cannot_have_been_served_is_sent_again(dify: DifySimulator, make_client: MakeClient,
                                                               run: Run[Any]) -> None:
    dify.upload_errors = [503, 500]
    file_id = run(make_client().upload(PNG, filename="p.png", mime="image/png", user="u"))
    assert dify.uploads[file_id].data == PNG  # the third attempt, with the whole file again
    assert len([r for r in dify.requests if r.path == "/v1/files/upload"]) == 3
    dify.upload_errors = [413]  # a refusal is final
    with pytest.raises(DifyHTTPError) as refused:
        run(make_client().upload(PNG, filename="p.png", mime="image/png", user="u"))
    assert refused.value.status == 413 and len([r for r in dify.requests if r.path == "/v1/files/upload"]) == 4


def test_refusals_come_back_as_difys_error_envelopes(dify: DifySimulator, make_client: MakeClient,
                                                     run: Run[Any]) -> None:
    client = make_client()
    dify.size_limits_mb["image"] = 1
    with pytest.raises(DifyHTTPError) as too_large:
        run(client.upload(b"\x89PNG" + b"\x00" * MB, filename="big.png", mime="image/png", user="u"))
    assert (too_large.value.status, too_large.value.code) == (413, "file_too_large")
    files = [{"type": "image", "transfer_method": "local_file", "upload_file_id": "not-uploaded"}]
    _, error = run(collect(client.chat("看图", user="u", files=files)))
    assert isinstance(error, DifyHTTPError) and (error.status, error.code) == (400, "invalid_param")
    mine = run(client.upload(PNG, filename="p.png", mime="image/png", user="alice"))
    stolen = [{"type": "image", "transfer_method": "local_file", "upload_file_id": mine}]
    _, error = run(collect(client.chat("看图", user="mallory", files=stolen)))  # another user's upload
    assert isinstance(error, DifyHTTPError) and error.status == 400


def test_the_simulator_answers_malformed_uploads_as_dify_does(dify: DifySimulator) -> None:
    url, auth = f"{dify.url}/files/upload", {"Authorization": f"Bearer {KEY}"}
    no_file = requests.post(url, headers=auth, files={"user": (None, "u")}, timeout=5)
    assert (no_file.status_code, no_file.json()["code"]) == (400, "no_file_uploaded")
    two = requests.post(url, headers=auth, files=[("file", ("a.txt", b"a", "text/plain")),
                                                  ("file", ("b.txt", b"b", "text/plain"))], timeout=5)
    assert (two.status_code, two.json()["code"]) == (400, "too_many_files")
    untyped = requests.post(url, headers=auth, files={"file": ("a.txt", b"a")}, timeout=5)  # a part with no type
    assert (untyped.status_code, untyped.json()["code"]) == (415, "unsupported_file_type")
    unauthorized = requests.post(url, files={"file": ("a.txt", b"a", "text/plain")}, timeout=5)
    assert unauthorized.status_code == 401


def test_parameters_give_the_apps_file_rules(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.size_limits_mb["image"] = 3
    rules = FileRules.from_parameters(run(make_client().parameters()))
    assert rules.types == {"image", "document"} and rules.max_files == 5
    assert rules.limits_mb == {"image": 3, "document": 15, "audio": 50, "video": 100}
    dify.file_upload = {"enabled": False, "image": {"enabled": False}}
    assert FileRules.from_parameters(run(make_client().parameters())).types == frozenset()


@pytest.mark.parametrize(("file_upload", "types", "max_files"), [
    (DEFAULT_FILE_UPLOAD, {"image", "document"}, 5),
    ({"enabled": True, "allowed_file_types": ["document"], "allowed_file_upload_methods": ["local_file"],
      "number_limits": 2, "image": {"enabled": True, "number_limits": 9, "transfer_methods": ["local_file"]}},
     {"document"}, 2),  # with the new switches on, Dify ignores the old image block
    ({"image": {"enabled": True, "number_limits": 2, "transfer_methods": ["local_file"]}}, {"image"}, 2),
    ({"image": {"enabled": True, "transfer_methods": ["remote_url"]}}, set(), 0),  # we upload: local_file only
    ({"enabled": True, "allowed_file_types": ["document", "custom", 3], "allowed_file_upload_methods": ["local_file"],
      "number_limits": 4}, {"document"}, 4),
    ({"enabled": True, "allowed_file_types": ["video"], "allowed_file_upload_methods": ["remote_url"]}, set(), 0),
    ({"enabled": "yes", "allowed_file_types": ["image"], "allowed_file_upload_methods": ["local_file"]}, set(), 0),
    ({"enabled": True, "allowed_file_types": ["audio"], "allowed_file_upload_methods": ["local_file"],
      "number_limits": -1}, {"audio"}, 3),
    ("not an object", set(), 0),
])
def test_file_rules_read_every_shape_of_file_upload(file_upload: Any, types: set[str], max_files: int) -> None:
    rules = FileRules.from_parameters({"file_upload": file_upload, "system_parameters": "junk"})
    assert (set(rules.types), rules.max_files) == (types, max_files)
    assert FileRules.from_parameters(None) == FileRules()


def test_a_file_the_app_would_refuse_is_never_sent() -> None:
    rules = FileRules.from_parameters({"file_upload": DEFAULT_FILE_UPLOAD,
                                       "system_parameters": {"image_file_size_limit": 2, "file_size_limit": 1}})
    assert rules.check(["image", "image"], [2 * MB, 1]) is None
    assert rules.check(["image"], [2 * MB + 1]) == Refusal("too_large", 2)
    assert rules.check(["document"], [MB + 1]) == Refusal("too_large", 1)
    assert rules.check(["video"], [1]) == Refusal("not_accepted")
    assert rules.check(["custom"], [1]) == Refusal("not_accepted")
    assert rules.check(["image"] * 6, [1] * 6) == Refusal("too_many", 5)
    assert FileRules().check(["image"], [1]) == Refusal("not_accepted")
