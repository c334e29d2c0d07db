"""Play WeCom against a running bot: ``python -m tools.wecom_sim "你好"``.

Sends an encrypted text callback exactly as WeCom does, polls the stream about once a second,
and prints the answer as it grows; the images of its last frame are checked (md5) and saved.
Credentials come from the environment or ``./.env``; with ``--bot ID`` they are that bot's, from
the bots file (``BOTS_FILE``), and the message goes to ``/wecom/callback/ID``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from config.settings import read_environment
from crypto import WeComCryptoError
from tools.response_inbox import ResponseInbox
from tools.wecom_client import WeComClient, WeComSigner, event_message, text_message
from tools.wecom_media import MediaHost

PLACEHOLDER_DIFY = {"DIFY_BASE_URL": "http://127.0.0.1:1/v1", "DIFY_API_KEY": "app-unused"}
"""Dify settings for loading the bots file when none are set: `make run` gives the server its own
(the built-in simulator), and playing WeCom needs only each bot's WeCom credentials."""


def _credentials(values: dict[str, str]) -> tuple[str, str, str]:
    try:
        return values["WECOM_TOKEN"], values["WECOM_ENCODING_AES_KEY"], values.get("WECOM_RECEIVE_ID", "")
    except KeyError as exc:
        raise SystemExit(f"{exc.args[0]} is not set (run `make run` once to create .env)") from None


def _bot_credentials(values: dict[str, str], bot_id: str) -> tuple[str, str, str]:
    """Bot ``bot_id``'s token, EncodingAESKey and receive id, from the bots file of ``values``."""
    from config import DEFAULT_BOT, ConfigError, Settings, load_bots

    if not values.get("BOTS_FILE"):
        if bot_id != DEFAULT_BOT:
            raise SystemExit(f"no bot {bot_id!r}: BOTS_FILE is not set (in the environment or .env), so the only "
                             f"bot is {DEFAULT_BOT!r}; pass the server's, e.g. BOTS_FILE=config/bots.example.toml")
        return _credentials(values)
    env = {**PLACEHOLDER_DIFY, **values}
    try:
        bots = load_bots(Settings.from_env(env, dotenv=None), env)
    except ConfigError as exc:
        raise SystemExit(f"cannot load the bots: {exc}") from None
    if bot_id not in bots:
        raise SystemExit(f"no bot {bot_id!r} in {values['BOTS_FILE']}; configured: {', '.join(sorted(bots))}")
    s = bots[bot_id].settings
    return s.wecom_token, s.wecom_encoding_aes_key, s.wecom_receive_id


def _with_media(payload: dict[str, Any], args: argparse.Namespace, media: MediaHost | None) -> None:
    """Turn the text message ``payload`` into the message ``args`` ask for (its media served by ``media``)."""
    del payload["text"]
    if args.voice:
        payload.update(msgtype="voice", voice={"content": args.voice})
    elif args.file and media is not None:
        payload.update(msgtype="file", file={"url": media.add(Path(args.file).read_bytes())})
    elif args.image and media is not None:
        images = [{"msgtype": "image", "image": {"url": media.add(Path(p).read_bytes())}} for p in args.image]
        if args.text or len(images) > 1:
            text = [{"msgtype": "text", "text": {"content": args.text}}] if args.text else []
            payload.update(msgtype="mixed", mixed={"msg_item": text + images})
        else:
            payload.update(msgtype="image", image=images[0]["image"])
    else:
        payload.update(msgtype="text", text={"content": args.text})
    if args.quote:
        payload["quote"] = {"msgtype": "text", "text": {"content": args.quote}}


def main(argv: list[str] | None = None) -> int:
    """Send one message and print the streamed answer."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", nargs="?", default="", help="the message to send (may be empty with media)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="bot base URL (default %(default)s)")
    parser.add_argument("--bot", default=None, metavar="ID",
                        help="talk to bot ID of the bots file (BOTS_FILE), at /wecom/callback/ID")
    parser.add_argument("--user", default="dev-user", help="WeCom userid to send as")
    parser.add_argument("--chat", default=None, help="send as a group message in this chatid")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="send this image (repeat for several; with text: a mixed message)")
    parser.add_argument("--file", default=None, metavar="PATH", help="send this file")
    parser.add_argument("--voice", default=None, metavar="TEXT", help="send a voice message WeCom transcribed as TEXT")
    parser.add_argument("--quote", default=None, metavar="TEXT", help="quote an earlier message saying TEXT")
    parser.add_argument("--ws", nargs="?", const="http://127.0.0.1:8002", default=None, metavar="SIM_URL",
                        help="talk to a long-connection bot through the long-connection simulator (make run with "
                             "WECOM_TRANSPORT=websocket serves one at %(const)s)")
    parser.add_argument("--save", default="var/received", metavar="DIR",
                        help="where to save the images of the answer (default %(default)s)")
    events = parser.add_mutually_exclusive_group()
    events.add_argument("--enter-chat", action="store_true", help="open the chat (enter_chat): show the welcome")
    events.add_argument("--feedback", metavar="STREAM_ID", help="rate the answer of this stream (see --rating)")
    events.add_argument("--click", metavar="TASK_ID:KEY", help="click a card's button; the answer comes back "
                        "through a local response_url")
    parser.add_argument("--rating", choices=["like", "dislike", "cancel"], default="like")
    parser.add_argument("--reason", type=int, action="append", default=[], metavar="N",
                        help="with --rating dislike: WeCom's reason codes (1 unrelated, 2 incomplete, 3 wrong, "
                             "4 wrong analysis)")
    args = parser.parse_args(argv)
    if args.enter_chat or args.feedback or args.click:
        return _event(args)
    if args.file and (args.image or args.text or args.voice) or args.voice and (args.image or args.text):
        parser.error("a file or a voice message is sent alone (text and images go together as a mixed message)")
    if not (args.text or args.image or args.file or args.voice):
        parser.error("say something: TEXT, --image, --file or --voice")

    values = read_environment()  # ./.env overlaid with the process environment, as the server reads them
    if args.ws:
        return _over_ws(args, values)
    if args.bot is None:
        token, key, receive_id = _credentials(values)
        client = WeComClient(WeComSigner(token, key, receive_id))
    else:
        token, key, receive_id = _bot_credentials(values, args.bot)
        client = WeComClient(WeComSigner(token, key, receive_id), path=f"/wecom/callback/{args.bot}")
    payload = text_message(args.text, userid=args.user, chattype="group" if args.chat else "single",
                           chatid=args.chat, msgid=uuid.uuid4().hex)
    media = MediaHost(key) if args.image or args.file else None  # serves them encrypted, as WeCom does
    try:
        _with_media(payload, args, media)
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")
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

    try:
        with explained(args.url):
            frames = client.converse([args.url], payload, interval=args.interval, on_frame=show)
    finally:
        if media is not None:
            media.close()
    finished = bool(frames) and frames[-1]["stream"]["finish"]
    print(f"\n-- {len(frames)} encrypted frames, stream {'finished' if finished else 'NOT finished'}")
    images_ok = _save_images(frames[-1]["stream"] if frames else {}, Path(args.save))
    if frames:
        print(f"-- rate it: python -m tools.wecom_sim --feedback {frames[-1]['stream']['id']} --rating like")
        _show_card(frames[-1].get("template_card"))
    return 0 if finished and images_ok else 1


@contextmanager
def explained(url: str) -> Iterator[None]:
    """Turn what goes wrong talking to the bot into one line saying what to check (never a traceback)."""
    try:
        yield
    except requests.ConnectionError:
        raise SystemExit(f"cannot reach the bot at {url}: is it running (make run)? (--url sets the address)") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        hints = {403: "the bot refused the signature: WECOM_TOKEN differs from the server's",
                 400: "the bot could not decrypt the message: WECOM_ENCODING_AES_KEY differs from the server's",
                 404: "no such bot there: check --bot, BOTS_FILE and --url"}
        raise SystemExit(hints.get(status, f"the bot answered HTTP {status}")) from None
    except requests.Timeout:
        raise SystemExit(f"the bot at {url} did not answer in time") from None
    except WeComCryptoError:
        raise SystemExit("the bot's reply did not verify: its token or EncodingAESKey differ from .env") from None


def _over_ws(args: argparse.Namespace, values: dict[str, str]) -> int:
    """Send the message as WeCom's long connection would, and print the frames the bot pushes."""
    import time

    import requests

    bot_id = values.get("WECOM_BOT_ID", "")
    if not bot_id:
        raise SystemExit("WECOM_BOT_ID is not set (run `make run WECOM_TRANSPORT=websocket` once)")
    payload = text_message(args.text, userid=args.user, chattype="group" if args.chat else "single",
                           chatid=args.chat, msgid=uuid.uuid4().hex, response_url="")
    del payload["response_url"]
    if args.voice:
        del payload["text"]
        payload.update(msgtype="voice", voice={"content": args.voice})
    sent = requests.post(f"{args.ws}/control/send", json={"bot_id": bot_id, "body": payload}, timeout=5)
    if sent.status_code != 200:
        raise SystemExit(f"the long-connection simulator says: {sent.text.strip()}")
    req_id, shown, deadline = sent.json()["req_id"], 0, time.monotonic() + 400
    while time.monotonic() < deadline:
        answers = requests.get(f"{args.ws}/control/answers", params={"req_id": req_id}, timeout=5).json()["answers"]
        for frame in answers[shown:]:
            print(frame.get("stream", {}).get("content", frame), flush=True)
        shown = len(answers)
        if answers and answers[-1].get("stream", {}).get("finish"):
            print(f"-- {shown} frames pushed over the long connection, stream finished")
            return 0
        time.sleep(args.interval)
    print("-- the stream did not finish")
    return 1


def _client(args: argparse.Namespace) -> WeComClient:
    values = read_environment()  # ./.env overlaid with the process environment, as the server reads them
    if args.bot is None:
        return WeComClient(WeComSigner(*_credentials(values)))
    return WeComClient(WeComSigner(*_bot_credentials(values, args.bot)), path=f"/wecom/callback/{args.bot}")


def _event(args: argparse.Namespace) -> int:
    """Send one event (enter_chat, feedback_event, template_card_event) and show what comes back."""
    client, inbox = _client(args), None
    if args.enter_chat:
        payload = event_message("enter_chat", userid=args.user)
    elif args.feedback:
        kind = {"like": 1, "dislike": 2, "cancel": 3}[args.rating]
        body = {"id": args.feedback, "type": kind, **({"inaccurate_reason_list": args.reason} if kind == 2 else {})}
        payload = event_message("feedback_event", body, userid=args.user)
    else:
        task_id, _, key = args.click.partition(":")
        inbox = ResponseInbox()  # `make run` lets the bot call loopback response_urls
        payload = event_message("template_card_event", {"card_type": "button_interaction", "event_key": key,
                                                        "task_id": task_id}, userid=args.user, response_url=inbox.url())
    try:
        with explained(args.url):
            reply = client.send(args.url, payload)
        print(json.dumps(reply, ensure_ascii=False, indent=2) if reply else "-- empty reply")
        _show_card((reply or {}).get("template_card"))
        if inbox is not None and reply:
            print("-- waiting for the answer through response_url …", flush=True)
            if inbox.arrived.wait(120):
                print(inbox.received[0].get("markdown", {}).get("content", inbox.received[0]))
            else:
                print("-- no answer within 120 s")
                return 1
    finally:
        if inbox is not None:
            inbox.close()
    return 0


def _show_card(card: Any) -> None:
    """Print how to click each button of a card."""
    if not isinstance(card, dict) or "task_id" not in card:
        return
    for button in card.get("button_list") or []:
        command = f"python -m tools.wecom_sim --click {card['task_id']}:{button.get('key')}"
        print(f"-- click \"{button.get('text')}\": {command}")


def _save_images(stream: dict[str, Any], folder: Path) -> bool:
    """Check and save the last frame's images (``msg_item``); False if one is not what WeCom would accept."""
    ok = True
    for number, item in enumerate(stream.get("msg_item") or [], 1):
        image = item.get("image", {}) if isinstance(item, dict) else {}
        try:
            data = base64.b64decode(image.get("base64", ""), validate=True)
        except ValueError:
            data = b""
        kind = "png" if data.startswith(b"\x89PNG") else "jpg" if data.startswith(b"\xff\xd8\xff") else ""
        md5_ok = hashlib.md5(data, usedforsecurity=False).hexdigest() == image.get("md5")
        ok = ok and bool(kind) and md5_ok and item.get("msgtype") == "image"
        if not (kind and md5_ok):
            print(f"-- image {number}: NOT valid ({'md5 mismatch' if kind else 'not a JPG or PNG'})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stream.get('id', 'stream')}-{number}.{kind}"
        path.write_bytes(data)
        print(f"-- image {number}: {len(data)} bytes {kind.upper()}, md5 ok, saved to {path}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
