"""An external moderation service, spoken to in Dify's moderation API-extension contract.

Dify sends the same requests to an "API extension" for its own input/output moderation, so one
service can serve both (docs.dify.ai: API Extension → Moderation). Request, ``POST MODERATION_URL``
with ``Authorization: Bearer MODERATION_API_KEY``:

- question: ``{"point": "app.moderation.input", "params": {"app_id": BOT, "inputs": {}, "query": TEXT}}``
- answer:   ``{"point": "app.moderation.output", "params": {"app_id": BOT, "text": TEXT}}``

Reply: ``{"flagged": bool, "action": "direct_output" | "overridden", "preset_response": str,
"query": str | "text": str}``. Flagged with ``direct_output``: the question is refused with
``preset_response`` (or ``MSG_MODERATION_REFUSED``), an answer's part is replaced by it (or by
``MODERATION_REPLACEMENT``). Flagged with ``overridden``: the returned ``query``/``text`` is used instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

MAX_REPLY_BYTES = 256 * 1024


class ModerationUnavailable(Exception):
    """The moderation service did not give a usable answer in time."""


@dataclass(frozen=True)
class Verdict:
    """What the service said: ``flagged``, the text to use instead (None: none given), and whether that
    text is a corrected question or answer (``overridden``) rather than a preset response."""

    flagged: bool
    instead: str | None = None
    overridden: bool = False


class RemoteModeration:
    """Blocking client of one moderation URL (run it off the event loop)."""

    def __init__(self, url: str, api_key: str, timeout: float, session: requests.Session | None = None) -> None:
        self.url, self.api_key, self.timeout = url, api_key, timeout
        self.session = session or requests.Session()

    def check_query(self, app_id: str, query: str) -> Verdict:
        """Check a question (``app.moderation.input``)."""
        return self._ask("app.moderation.input", {"app_id": app_id, "inputs": {}, "query": query}, "query")

    def check_text(self, app_id: str, text: str) -> Verdict:
        """Check a part of an answer (``app.moderation.output``)."""
        return self._ask("app.moderation.output", {"app_id": app_id, "text": text}, "text")

    def _ask(self, point: str, params: dict[str, Any], field: str) -> Verdict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout
        try:
            with self.session.post(self.url, data=json.dumps({"point": point, "params": params}, ensure_ascii=False)
                                   .encode(), headers=headers, timeout=self.timeout, stream=True,
                                   allow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise ModerationUnavailable(f"HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_content(16384):  # bounded in size, and in time as a whole
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES or time.monotonic() > deadline:
                        raise ModerationUnavailable("reply too large or too slow")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ModerationUnavailable(type(exc).__name__) from exc
        try:
            reply = json.loads(body)
        except ValueError as exc:
            raise ModerationUnavailable("reply is not JSON") from exc
        if not isinstance(reply, dict) or not isinstance(reply.get("flagged"), bool):
            raise ModerationUnavailable("reply has no boolean 'flagged'")
        if not reply["flagged"]:
            return Verdict(False)
        overridden = reply.get("action") == "overridden"
        instead = reply.get(field if overridden else "preset_response")
        usable = isinstance(instead, str) and (overridden or bool(instead))  # an empty preset: ours instead
        return Verdict(True, instead if usable else None, overridden)
