"""``tools.wecom_sim`` plays WeCom's events against a running bot: the welcome, a card click (its answer on
a loopback response_url), a rating; and it saves the images of an answer's last frame."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.procs import Replica
from tools import wecom_sim
from tools.dify_files import ToolFile, demo_png
from tools.dify_sim import DifySimulator, Script

pytestmark = pytest.mark.process


def test_welcome_click_and_rating(sim_replica: Replica, dify: DifySimulator,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    dify.opening_statement, dify.opening_questions = "你好。", ["多久到账？"]
    dify.script("多久到账？", Script(answer="三个工作日。"))
    assert wecom_sim.main(["--enter-chat", "--url", sim_replica.url]) == 0
    shown = capsys.readouterr().out
    click = re.search(r"--click (\S+)", shown)
    assert '"sub_title_text": "你好。"' in shown and click is not None
    assert wecom_sim.main(["--click", click.group(1), "--url", sim_replica.url]) == 0
    assert capsys.readouterr().out.rstrip().endswith("三个工作日。")  # the answer, through its response_url
    assert wecom_sim.main(["问题", "--url", sim_replica.url, "--interval", "0.1"]) == 0
    rate = re.search(r"--feedback (\S+)", capsys.readouterr().out)
    assert rate is not None
    assert wecom_sim.main(["--feedback", rate.group(1), "--rating", "dislike", "--reason", "2", "--url",
                           sim_replica.url]) == 0
    wait_for(lambda: len(dify.feedbacks) == 1, timeout=10)
    assert dify.feedbacks[0]["rating"] == "dislike" and dify.feedbacks[0]["content"] == "不准确：内容不完整"


def test_the_images_of_an_answer_are_checked_and_saved(sim_replica: Replica, dify: DifySimulator, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    png = demo_png(20, 10)
    dify.script("画", Script(answer="好。", files=(ToolFile(png, name="p.png"),)))
    assert wecom_sim.main(["画", "--url", sim_replica.url, "--interval", "0.1", "--save", "got"]) == 0
    assert "md5 ok" in capsys.readouterr().out
    [saved] = (tmp_path / "got").iterdir()
    assert saved.read_bytes() == png
