"""The bots file: per-bot settings over the global ones, ${VAR} secrets, errors naming bot and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from config import DEFAULT_BOT, ConfigError, Settings, load_bots, parse_bots
from tests.conftest import AES_KEY, TOKEN

KEY_B = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
GLOBAL = Settings(wecom_token=TOKEN, wecom_encoding_aes_key=AES_KEY, dify_base_url="http://127.0.0.1:9/v1",
                  dify_api_key="app-global", bots_file="bots.toml")
ENV = {"TOKEN_HR": "hrToken123", "KEY_HR": KEY_B, "DIFY_HR": "app-hr-secret-value"}

HR_AND_IT = """
[bots.hr]
name = "HR assistant"
wecom_token = "${TOKEN_HR}"
wecom_encoding_aes_key = "${KEY_HR}"
dify_base_url = "http://127.0.0.1:7001/v1"
dify_api_key = "${DIFY_HR}"
bot_names = ["HR助手", "人事"]
response_url_hosts = ["qyapi.weixin.qq.com", "127.0.0.1"]
conversation_scope = "chat"
conversation_idle_seconds = 600
capacity_share = 0.3
[bots.hr.messages]
busy = "HR 助手正忙"

[bots.it]
dify_api_key = "app-it"
"""


def test_each_bot_lays_its_values_over_the_global_ones() -> None:
    bots = parse_bots(HR_AND_IT, GLOBAL, ENV)
    assert list(bots) == ["hr", "it"]
    hr, it = bots["hr"].settings, bots["it"].settings
    assert (hr.wecom_token, hr.wecom_encoding_aes_key, hr.dify_api_key) == ("hrToken123", KEY_B, "app-hr-secret-value")
    assert hr.bot_names == ["HR助手", "人事"]
    assert hr.response_url_hosts == ["qyapi.weixin.qq.com", "127.0.0.1"]
    assert (hr.conversation_scope, hr.conversation_idle_seconds) == ("chat", 600)
    assert hr.msg_busy == "HR 助手正忙" and it.msg_busy == GLOBAL.msg_busy
    assert bots["hr"].name == "HR assistant"
    # what "it" leaves out comes from the environment's settings
    assert (it.wecom_token, it.dify_base_url, it.dify_api_key) == (TOKEN, GLOBAL.dify_base_url, "app-it")
    assert hr.bots_file == "" and it.redis_key_prefix == GLOBAL.redis_key_prefix
    assert bots["hr"].namespace == "hr" and bots["it"].namespace == "it"
    # hr keeps 0.3 for itself; it gets the default: half the capacity among the bots without a share
    assert bots["hr"].capacity_share == 0.3 and bots["it"].capacity_share == 0.5


def test_without_a_bots_file_the_environment_is_the_bot_default() -> None:
    single = GLOBAL.replace(bots_file="")
    bots = load_bots(single)
    assert list(bots) == [DEFAULT_BOT]
    assert bots[DEFAULT_BOT].settings is single
    assert bots[DEFAULT_BOT].namespace == ""  # today's key names: a rolling upgrade keeps live streams


def test_the_file_is_read_from_bots_file(tmp_path: Path) -> None:
    path = tmp_path / "bots.toml"
    path.write_text(HR_AND_IT, encoding="utf-8")
    bots = load_bots(GLOBAL.replace(bots_file=str(path)), ENV)
    assert set(bots) == {"hr", "it"}
    with pytest.raises(ConfigError, match=r"^BOTS_FILE: cannot read .*missing.toml: FileNotFoundError"):
        load_bots(GLOBAL.replace(bots_file=str(tmp_path / "missing.toml")), ENV)


def test_global_credentials_are_optional_with_a_bots_file() -> None:
    env = {"BOTS_FILE": "bots.toml"}
    s = Settings.from_env(env, dotenv=None)
    assert s.wecom_token == "" and s.dify_api_key == ""
    with pytest.raises(ConfigError, match="^WECOM_TOKEN: is required but not set"):
        Settings.from_env({}, dotenv=None)
    bots = parse_bots(HR_AND_IT.replace('[bots.it]\ndify_api_key = "app-it"\n', ""), s, ENV)
    assert bots["hr"].settings.wecom_token == "hrToken123"


@pytest.mark.parametrize(("text", "env", "variable", "problem"), [
    ('[bots.hr]\ndify_api_key = "x"\n', {}, "bots.hr.wecom_token", "is required but not set (here or in WECOM_TOKEN)"),
    ('[bots.hr]\nwecom_token = "${NOPE}"\n', {}, "bots.hr.wecom_token", "refers to ${NOPE}, which is not set"),
    ('[bots.hr]\nwecom_token = "no spaces allowed"\n', {}, "bots.hr.wecom_token", "must be 1-32 letters or digits"),
    ('[bots.hr]\nwecom_encoding_aes_key = "short"\n', {}, "bots.hr.wecom_encoding_aes_key", "must be 43 letters"),
    ('[bots.hr]\ndify_base_url = "ftp://x"\n', {}, "bots.hr.dify_base_url", "must be an http(s) URL"),
    ('[bots.hr]\ndify_api_key = 12345\n', {}, "bots.hr.dify_api_key", "expected str"),
    ('[bots.hr]\nconversation_idle_seconds = "soon"\n', {}, "bots.hr.conversation_idle_seconds", "expected int"),
    ('[bots.hr]\nconversation_scope = "team"\n', {}, "bots.hr.conversation_scope", "must be 'user' or 'chat'"),
    ('[bots.hr]\nresponse_url_hosts = [1, 2]\n', {}, "bots.hr.response_url_hosts", "must be a list of strings"),
    ('[bots.hr]\nauth_mode = "mysql"\n', {}, "bots.hr", "AUTH_SERVICE_URL: must be an http(s) URL"),
    ('[bots.hr]\ncolour = "blue"\n', {}, "bots.hr.colour", "unknown setting"),
    ('[bots.hr.messages]\nbsuy = "x"\n', {}, "bots.hr.messages.bsuy", "unknown text"),
    ('[bots.hr]\ncapacity_share = 0\n', {}, "bots.hr.capacity_share", "must be a number in (0, 1]"),
    ('[bots.a]\ncapacity_share = 0.7\n[bots.b]\ncapacity_share = 0.6\nwecom_token = "other"\n', {},
     "bots.*.capacity_share", "add up to 1.3"),
    ('[bots.a]\n[bots.b]\n', {}, "bots.b.wecom_token", "is the Token of bots.a too"),
    ('[bots.hr]\ndify_api_key = "$DIFY_KEY_HR"\n', {}, "bots.hr.dify_api_key", "malformed reference"),
    ('[bots.hr]\ndify_api_key = "${DIFY_KEY_HR"\n', {}, "bots.hr.dify_api_key", "malformed reference"),
    ('[bots.hr]\ndify_api_key = "${ DIFY_KEY_HR }"\n', {}, "bots.hr.dify_api_key", "malformed reference"),
    ('[bots.hr]\nwecom_encoding_aes_key = ""\n', {}, "bots.hr.wecom_encoding_aes_key", "is required but empty"),
    ('[bots.HR]\n', {}, "bots.HR", "a bot id is 1-32 characters"),
    (f'[bots.{"x" * 33}]\n', {}, f"bots.{'x' * 33}", "a bot id is 1-32 characters"),
    ('[bots]\n', {}, "bots", "lists no bots"),
    ('bots = 3\n', {}, "bots", "lists no bots"),
    ('[bot.hr]\n', {}, "bot", "unknown top-level key"),
    ('[bots.hr\n', {}, "BOTS_FILE", "is not valid TOML"),
])
def test_bad_files_fail_naming_the_bot_and_the_field(text: str, env: dict[str, str], variable: str,
                                                     problem: str) -> None:
    bare = Settings(dify_base_url="http://127.0.0.1:9/v1", bots_file="bots.toml")  # no global credentials
    with pytest.raises(ConfigError) as caught:
        parse_bots(text, bare if "required but not set" in problem else GLOBAL, env)
    assert caught.value.variable == variable
    assert problem in caught.value.problem


def test_errors_never_show_a_secret() -> None:
    secret = "app-do-not-print-me"
    text = '[bots.hr]\nwecom_token = "${T}"\nwecom_encoding_aes_key = "${K}"\ndify_api_key = 5\n'
    with pytest.raises(ConfigError) as caught:
        parse_bots(text, GLOBAL, {"T": "goodToken", "K": secret})
    assert "5" not in str(caught.value)  # even a mistyped secret is not echoed
    with pytest.raises(ConfigError) as caught:
        parse_bots('[bots.hr]\nwecom_encoding_aes_key = "${K}"\n', GLOBAL, {"K": secret})
    assert secret not in str(caught.value) and caught.value.variable == "bots.hr.wecom_encoding_aes_key"
    with pytest.raises(ConfigError) as caught:
        parse_bots('[bots.hr]\nwecom_token = "${K}"\n', GLOBAL, {"K": secret})
    assert secret not in str(caught.value)


def test_references_never_show_what_they_resolve_to() -> None:
    secret = "sup3r-secret"
    for text in ('[bots.hr]\nconversation_idle_seconds = "${S}"\n', '[bots.hr]\ndify_inputs_from_user = "${S}"\n',
                 '[bots.hr]\nresponse_url_hosts = ["${S}", 3]\n', '[bots.hr]\ndify_base_url = "https://${S}:x/v1"\n'):
        with pytest.raises(ConfigError) as caught:
            parse_bots(text, GLOBAL, {"S": secret})
        assert secret not in str(caught.value), text
        assert caught.value.variable.startswith("bots.hr."), text


def test_the_number_of_bots_is_bounded_by_the_capacity_and_a_maximum() -> None:
    three = "".join(f'[bots.b{i}]\nwecom_token = "t{i}"\n' for i in range(3))
    with pytest.raises(ConfigError, match="^ENGINE_CAPACITY: is 2, fewer than the 3 bots"):
        parse_bots(three, GLOBAL.replace(engine_capacity=2), {})
    assert len(parse_bots(three, GLOBAL.replace(engine_capacity=3), {})) == 3
    many = "".join(f'[bots.b{i}]\nwecom_token = "t{i}"\n' for i in range(101))
    with pytest.raises(ConfigError, match="^bots: lists 101 bots; at most 100"):
        parse_bots(many, GLOBAL, {})


def test_create_app_fails_fast_on_a_bad_bots_file(tmp_path: Path) -> None:
    path = tmp_path / "bots.toml"
    path.write_text('[bots.hr]\ndify_api_key = "${DIFY_KEY_HR}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^bots.hr.dify_api_key: refers to \$\{DIFY_KEY_HR\}"):
        create_app(GLOBAL.replace(bots_file=str(path)))


def test_references_resolve_from_dotenv_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DIFY_KEY_HR=app-from-dotenv\nTOKEN_HR=fromDotenv\n", encoding="utf-8")
    (tmp_path / "bots.toml").write_text('[bots.hr]\ndify_api_key = "${DIFY_KEY_HR}"\nwecom_token = "${TOKEN_HR}"\n',
                                        encoding="utf-8")
    monkeypatch.setenv("TOKEN_HR", "fromEnvironment")  # the environment wins, as for every setting
    hr = load_bots(GLOBAL.replace(bots_file="bots.toml"))["hr"].settings
    assert (hr.dify_api_key, hr.wecom_token) == ("app-from-dotenv", "fromEnvironment")


def test_long_connection_bots_need_their_botid_and_secret_not_a_token() -> None:
    text = '[bots.lan]\ntransport = "websocket"\nbot_id = "aibot-1"\nws_secret = "${WS_LAN}"\n'
    bots = parse_bots(text, GLOBAL.replace(wecom_token="", wecom_encoding_aes_key=""), {"WS_LAN": "s3cret"})
    lan = bots["lan"].settings
    assert (lan.wecom_transport, lan.wecom_bot_id, lan.wecom_ws_secret) == ("websocket", "aibot-1", "s3cret")
    for bad, variable in (('[bots.lan]\ntransport = "websocket"\nws_secret = "x"\n', "bots.lan.bot_id"),
                          ('[bots.lan]\ntransport = "websocket"\nbot_id = "b"\n', "bots.lan.ws_secret"),
                          ('[bots.lan]\ntransport = "websocket"\nbot_id = "b"\nws_secret = "x"\nws_url = "https://x"\n',
                           "bots.lan.ws_url"),
                          ('[bots.lan]\ntransport = "carrier pigeon"\n', "bots.lan.transport")):
        with pytest.raises(ConfigError) as err:
            parse_bots(bad, GLOBAL, {})
        assert err.value.variable == variable
    twice = '[bots.a]\ntransport = "websocket"\nbot_id = "b1"\nws_secret = "x"\n\n' \
            '[bots.b]\ntransport = "websocket"\nbot_id = "b1"\nws_secret = "y"\n'
    with pytest.raises(ConfigError) as err:
        parse_bots(twice, GLOBAL, {})
    assert err.value.variable == "bots.b.bot_id"  # they would kick each other's connection forever
    with pytest.raises(ConfigError) as err:  # a secret never shows in an error
        parse_bots('[bots.lan]\ntransport = "websocket"\nbot_id = 7\nws_secret = "hunter2"\n', GLOBAL, {})
    assert "hunter2" not in str(err.value)
