"""Play WeCom against a running bot: ``python -m tools.wecom_sim "你好"``.

Sends an encrypted text callback exactly as WeCom does, polls the stream about once a second,
and prints the answer as it grows. Credentials come from the environment or ``./.env``.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from tools.wecom_client import WeComClient, WeComSigner, text_message


def _credentials() -> tuple[str, str, str]:
    values: dict[str, str] = {}
    if Path(".env").is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    values.update(os.environ)
    try:
        return values["WECOM_TOKEN"], values["WECOM_ENCODING_AES_KEY"], values.get("WECOM_RECEIVE_ID", "")
    except KeyError as exc:
        raise SystemExit(f"{exc.args[0]} is not set (run `make run` once to create .env)") from None


def main(argv: list[str] | None = None) -> int:
    """Send one message and print the streamed answer."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="the message to send")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="bot base URL (default %(default)s)")
    parser.add_argument("--user", default="dev-user", help="WeCom userid to send as")
    parser.add_argument("--chat", default=None, help="send as a group message in this chatid")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args(argv)

    token, key, receive_id = _credentials()
    client = WeComClient(WeComSigner(token, key, receive_id))
    payload = text_message(args.text, userid=args.user, chattype="group" if args.chat else "single",
                           chatid=args.chat, msgid=uuid.uuid4().hex)
    shown = ""

    def show(frame: dict[str, Any]) -> None:
        nonlocal shown
        content = frame["stream"]["content"]
        if content.startswith(shown):
            sys.stdout.write(content[len(shown):])
        else:  # the bot replaced what it had shown (e.g. a queue note or a moderation rewrite)
            sys.stdout.write("\n" + content)
        shown = content
        sys.stdout.flush()

    frames = client.converse([args.url], payload, interval=args.interval, on_frame=show)
    finished = bool(frames) and frames[-1]["stream"]["finish"]
    print(f"\n-- {len(frames)} encrypted frames, stream {'finished' if finished else 'NOT finished'}")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
