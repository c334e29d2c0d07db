"""``tools.wecom_sim`` sends images, files, voice and quotes to a running bot, serving the media itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import Replica
from tools import wecom_sim
from tools.dify_sim import DifySimulator

pytestmark = pytest.mark.process
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_an_image_and_a_quote_round_trip(sim_replica: Replica, dify: DifySimulator, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photo.png").write_bytes(PNG)
    code = wecom_sim.main(["这是哪里？", "--image", "photo.png", "--quote", "上周的照片", "--url", sim_replica.url,
                           "--interval", "0.1"])
    assert code == 0, capsys.readouterr().out
    [chat] = dify.chat_requests()
    assert chat.json["query"] == "「上周的照片」\n这是哪里？"
    assert [dify.uploads[f["upload_file_id"]].data for f in chat.json["files"]] == [PNG]
    assert "stream finished" in capsys.readouterr().out


def test_a_file_and_a_voice_message(sim_replica: Replica, dify: DifySimulator, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("会议纪要", encoding="utf-8")
    assert wecom_sim.main(["--file", "notes.txt", "--url", sim_replica.url, "--interval", "0.1"]) == 0
    assert wecom_sim.main(["--voice", "明天几点开会", "--url", sim_replica.url, "--interval", "0.1"]) == 0
    file_chat, voice_chat = dify.chat_requests()
    assert file_chat.json["files"][0]["type"] == "document" and voice_chat.json["query"] == "明天几点开会"
    with pytest.raises(SystemExit):
        wecom_sim.main(["text too", "--file", "notes.txt", "--url", sim_replica.url])
    with pytest.raises(SystemExit):
        wecom_sim.main(["--image", "missing.png", "--url", sim_replica.url])
