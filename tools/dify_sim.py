"""Dify simulator: a real HTTP server speaking Dify's service-API wire format (reference: dify-api.md).

    python -m tools.dify_sim --port 8001 [--delay 0.05]

Serves ``POST /v1/chat-messages`` (streaming and blocking) and ``POST /v1/chat-messages/<task_id>/stop``
with Dify's exact frame shapes, key order, JSON flavours (≤ 1.8.0 ``json.dumps`` vs ≥ 1.8.1 orjson),
error envelopes and conversation scoping by ``user``.  Each query can be scripted (``Script``) to
re-chunk the bytes, ping, replace, fail, stall or cut the stream; unscripted queries are echoed.
Loopback only.  Nothing here is used in production.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tools.dify_files import ToolFile, ToolFiles, demo_png
from tools.dify_forms import Form, Forms
from tools.dify_script import (
    DEFAULT_FILE_UPLOAD,
    KINDS,
    USAGE,
    Abort,
    Ids,
    RecordedRequest,
    Script,
    Task,
    Upload,
)
from tools.dify_stream import AnswerStream

__all__ = ["DEFAULT_FILE_UPLOAD", "DifySimulator", "Form", "RecordedRequest", "Script", "ToolFile", "Upload", "main"]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
_STOP_PATH = re.compile(r"/v1/chat-messages/([^/]+)/stop")
_FEEDBACK_PATH = re.compile(r"/v1/messages/([^/]+)/feedbacks")
_SUGGESTED_PATH = re.compile(r"/v1/messages/([^/]+)/suggested")
_EVENTS_PATH = re.compile(r"/v1/workflow/([^/]+)/events")
_FORM_PATH = re.compile(r"/v1/form/human_input/([^/]+)")
_DEFAULT_ERRORS = {
    400: ("invalid_param", "Invalid parameter."),
    401: ("unauthorized", "Access token is invalid"),
    403: ("forbidden", "The app's API service has been disabled."),
    404: ("not_found", "Conversation Not Exists."),
    429: (
        "too_many_requests",
        "Too many requests. Please try again later. The current maximum concurrent "
        "requests allowed for 00000000-0000-4000-8000-000000000000 is 1.",
    ),
    500: (
        "internal_server_error",
        "The server encountered an internal error and was unable to complete "
        "your request. Either the server is overloaded or there is an error in the application.",
    ),
}
_MISSING_INPUTS = "1 validation error for ChatRequestPayload\ninputs\n  Field required"
_RESTX_HINT = " You have requested this URI [/v1/chat-messages] but did you mean /v1/chat-messages ?"


class DifySimulator:
    """A threaded HTTP server imitating one Dify app's service API on loopback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Script | None = None,
        *,
        api_keys: set[str] | None = None,
        restx_404_hint: bool = False,
        draw: bool = False,
    ) -> None:
        if host not in LOOPBACK:
            raise ValueError("the Dify simulator binds to loopback only")
        self.host, self.port = host, port
        self.default = default or Script()
        self.api_keys = api_keys
        self.restx_404_hint = restx_404_hint
        self.draw = draw  # an unscripted query asking to draw ("画", "draw") is answered with a picture
        self.tool_files = ToolFiles()  # the answers' files, served at signed /files/tools/ URLs
        self.forms = Forms()  # runs paused at a Human Input form
        self.app_id = str(uuid.uuid4())
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, Script] = {}
        self._attempts: dict[str, int] = {}
        self._conversations: dict[str, tuple[str, int]] = {}  # id -> (user, dialogue count)
        self._tasks: dict[str, Task] = {}
        self._peak_open = 0  # most chat requests ever open at once (since the last reset)
        self.file_upload: dict[str, Any] = dict(DEFAULT_FILE_UPLOAD)  # what GET /parameters says
        self.size_limits_mb: dict[str, int] = {"image": 10, "document": 15, "audio": 50, "video": 100}
        self.uploads: dict[str, Upload] = {}  # upload_file_id -> what was uploaded
        self.upload_errors: list[int] = []  # statuses the next uploads are answered with (Dify's envelope)
        self.dead_conversation_pings = False  # a Chatflow asked with a conversation it lost: only pings
        self.messages: dict[str, str] = {}  # message_id -> its user
        self.opening_statement = ""  # what GET /parameters says
        self.opening_questions: list[str] = []
        self.suggestions: list[str] | None = None  # questions after each answer (None: the feature is off)
        self.parameters_delay = 0.0  # seconds GET /parameters takes
        self.feedbacks: list[dict[str, Any]] = []  # the feedback bodies received, with their message_id
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the base URL including ``/v1``."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._server.server_address[1]}/v1"

    def start(self) -> DifySimulator:
        """Bind and serve in a daemon thread."""
        self._server = _Server((self.host, self.port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="dify-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open streams and close every socket."""
        self._closing.set()
        with self._lock:
            for task in self._tasks.values():
                task.stop.set()
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> DifySimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, query: str, script: Script) -> None:
        """Answer ``query`` with ``script`` from now on."""
        with self._lock:
            self._scripts[query] = script
            self._attempts.pop(query, None)

    def reset(self) -> None:
        """Forget scripts, recorded requests, failure counters and conversations."""
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self._attempts.clear()
            self._conversations.clear()
            self._peak_open = len(self._tasks)
            self.uploads.clear()
            self.upload_errors = []
            self.dead_conversation_pings = False
            self.messages.clear()
            self.opening_statement, self.opening_questions, self.suggestions = "", [], None
            self.parameters_delay = 0.0
            self.feedbacks.clear()
            self.file_upload = dict(DEFAULT_FILE_UPLOAD)
            self.tool_files = ToolFiles()
            self.forms = Forms()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a copy of every request received so far."""
        with self._lock:
            return list(self._requests)

    @property
    def open_now(self) -> int:
        """Chat requests open (answering) right now."""
        with self._lock:
            return len(self._tasks)

    @property
    def peak_open(self) -> int:
        """The most chat requests that were open (answering) at the same time since the last reset."""
        with self._lock:
            return self._peak_open

    def chat_requests(self) -> list[RecordedRequest]:
        """Return the ``POST /v1/chat-messages`` requests received so far."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/chat-messages"]

    def stop_requests(self) -> list[RecordedRequest]:
        """Return the stop requests received so far."""
        return [r for r in self.requests if _STOP_PATH.fullmatch(r.path)]

    def new_conversation(self, user: str) -> str:
        """Create a conversation owned by ``user`` and return its id."""
        conversation_id = str(uuid.uuid4())
        with self._lock:
            self._conversations[conversation_id] = (user, 0)
        return conversation_id

    # -- used by the request handler --------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _script_for(self, query: str) -> tuple[Script, bool]:
        """Return the query's script and whether this request must fail with its http_status."""
        with self._lock:
            script = self._scripts.get(query)
            if script is None:
                script = self.default
                if not script.answer and script.deltas is None:
                    script = replace(script, answer=f"echo: {query}")
                if self.draw and ("画" in query or "draw" in query.lower()):
                    script = replace(script, files=(ToolFile(demo_png(), name="picture.png"),))
            attempt = self._attempts[query] = self._attempts.get(query, 0) + 1
        fail = script.http_status != 200 and (script.fail_times == 0 or attempt <= script.fail_times)
        return script, fail

    def _open_conversation(self, conversation_id: str, user: str) -> int | None:
        """Count one more turn in a conversation of ``user``; None if it is unknown or not theirs."""
        with self._lock:
            owner = self._conversations.get(conversation_id)
            if owner is None or owner[0] != user:
                return None
            self._conversations[conversation_id] = (user, owner[1] + 1)
            return owner[1] + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of streams may connect at once (a burst to one engine)

    def __init__(self, address: tuple[str, int], handler: type[_Handler], sim: DifySimulator) -> None:
        self.sim = sim
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, Abort)):
            log.exception("dify simulator: error while handling a request")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dify-sim/1.14"
    server: _Server
    timeout = 120

    def setup(self) -> None:
        super().setup()
        with self.server.sim._lock:
            self.server.sim._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.sim._lock:
            self.server.sim._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dify simulator: " + format, *args)

    def do_GET(self) -> None:
        self._record(None)
        if self.path.startswith("/files/tools/"):  # signed URLs: no API key, as in Dify
            status, body, mime = self.server.sim.tool_files.serve(self.path)
            self._send(status, body, mime)
            return
        if not self._authorized():
            return
        if urlsplit(self.path).path == "/v1/messages":
            self._messages()
            return
        events = _EVENTS_PATH.fullmatch(urlsplit(self.path).path)
        if events:
            self._resume(events.group(1))
            return
        suggested = _SUGGESTED_PATH.fullmatch(urlsplit(self.path).path)
        if suggested:
            self._suggested(suggested.group(1))
            return
        if urlsplit(self.path).path == "/v1/parameters":
            sim = self.server.sim
            limits = {"file_size_limit": sim.size_limits_mb["document"],
                      "image_file_size_limit": sim.size_limits_mb["image"],
                      "audio_file_size_limit": sim.size_limits_mb["audio"],
                      "video_file_size_limit": sim.size_limits_mb["video"], "workflow_file_upload_limit": 10}
            time.sleep(sim.parameters_delay)
            body = {"opening_statement": sim.opening_statement, "suggested_questions": sim.opening_questions,
                    "suggested_questions_after_answer": {"enabled": sim.suggestions is not None},
                    "user_input_form": [], "file_upload": sim.file_upload, "system_parameters": limits}
            self._send(200, json.dumps(body).encode(), "application/json")
            return
        self._error(404, "not_found", "The requested URL was not found on the server.")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            self._record(body)
            path = urlsplit(self.path).path
            if not self._authorized():
                return
            stop = _STOP_PATH.fullmatch(path)
            feedback = _FEEDBACK_PATH.fullmatch(path)
            form = _FORM_PATH.fullmatch(path)
            if path == "/v1/files/upload":
                self._upload(raw)
            elif path == "/v1/chat-messages":
                self._chat(body if isinstance(body, dict) else {})
            elif stop:
                self._stop(stop.group(1), body if isinstance(body, dict) else {})
            elif form:
                submitted = body if isinstance(body, dict) else {}
                status, code, message = self.server.sim.forms.submit(form.group(1), submitted)
                if status != 200:
                    return self._error(status, code, message)
                self._send(200, b"{}", "application/json")
            elif feedback:
                self._feedback(feedback.group(1), body if isinstance(body, dict) else {})
            else:
                self._error(404, "not_found", "The requested URL was not found on the server.")
        except (ConnectionError, TimeoutError, Abort):
            self.close_connection = True

    # -- plumbing ---------------------------------------------------------------------------------

    def _record(self, body: Any) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.sim._record(
            RecordedRequest(self.command, urlsplit(self.path).path, headers, body, time.time())
        )

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        envelope = {"code": code, "message": message, "status": status}
        self._send(status, (json.dumps(envelope) + "\n").encode(), "application/json", headers)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, key = header.partition(" ")
        problem, keys = None, self.server.sim.api_keys
        if not key:
            problem = "Authorization header must be provided and start with 'Bearer'"
        elif scheme.lower() != "bearer":
            problem = "Authorization scheme must be 'Bearer'"
        elif not key.strip() or (keys is not None and key not in keys):
            problem = "Access token is invalid"
        if problem:
            self._error(401, "unauthorized", problem, {"WWW-Authenticate": 'Bearer realm="api"'})
        return problem is None

    # -- endpoints --------------------------------------------------------------------------------

    def _upload(self, raw: bytes) -> None:
        """Dify's /files/upload: one multipart ``file`` part and a ``user`` field; 201 with the record."""
        import email.parser
        import email.policy

        with self.server.sim._lock:
            failure = self.server.sim.upload_errors.pop(0) if self.server.sim.upload_errors else None
        if failure is not None:
            code, message = _DEFAULT_ERRORS.get(failure, ("internal_server_error", "Internal Server Error."))
            return self._error(failure, code, message)
        head = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        files = [p for p in parts if p.get_param("name", header="content-disposition") == "file"]
        users = [p for p in parts if p.get_param("name", header="content-disposition") == "user"]
        if not files:
            return self._error(400, "no_file_uploaded", "Please upload your file.")
        if len(files) > 1:
            return self._error(400, "too_many_files", "Only one file is allowed.")
        part, sim = files[0], self.server.sim
        name = part.get_filename() or ""
        if not name:
            return self._error(400, "filename_not_exists_error", "The specified filename does not exist.")
        mime = part.get("Content-Type", "")
        if not mime:
            return self._error(415, "unsupported_file_type", "File type not allowed.")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        kind = next((k for k, exts in KINDS.items() if extension in exts), "document")
        if len(data) > sim.size_limits_mb[kind] * 1024 * 1024:
            return self._error(413, "file_too_large", "")
        given = users[0].get_payload(decode=True) if users else None
        user = given.decode() if isinstance(given, bytes) and given else "DEFAULT-USER"
        upload = Upload(str(uuid.uuid4()), name, mime, user, bytes(data))
        with sim._lock:
            sim.uploads[upload.id] = upload
        record = {"id": upload.id, "name": name, "size": len(data), "extension": extension, "mime_type": mime,
                  "created_by": str(uuid.uuid5(uuid.NAMESPACE_OID, user)), "created_at": int(time.time()),
                  "preview_url": None, "source_url": f"/files/{upload.id}/file-preview"}
        self._send(201, json.dumps(record).encode(), "application/json")

    def _feedback(self, message_id: str, body: dict[str, Any]) -> None:
        """``POST /messages/{id}/feedbacks``: the message must be the user's (dify-api.md §6)."""
        sim, user, rating = self.server.sim, body.get("user"), body.get("rating", "missing")
        if not isinstance(user, str) or not user or rating not in ("like", "dislike", None):
            return self._error(400, "invalid_param", "Invalid parameter.")
        with sim._lock:
            owner = sim.messages.get(message_id)
            if owner is None or owner != user:
                return self._error(404, "not_found", "Message Not Exists.")
            withdrawn_nothing = rating is None and not any(f["message_id"] == message_id for f in sim.feedbacks)
            if not withdrawn_nothing:
                sim.feedbacks.append({"message_id": message_id, **body})
        if withdrawn_nothing:
            return self._error(400, "invalid_param", "Feedback does not exist.")
        self._send(200, json.dumps({"result": "success"}).encode(), "application/json")

    def _stop(self, task_id: str, body: dict[str, Any]) -> None:
        user = body.get("user")
        if not isinstance(user, str) or not user:
            self._error(400, "invalid_param", "Arg user must be provided.")
            return
        with self.server.sim._lock:
            task = self.server.sim._tasks.get(task_id)
        if task is not None and task.user == user:  # another user's stop is a silent no-op, as in Dify
            task.stop.set()
        self._send(200, json.dumps({"result": "success"}).encode(), "application/json")

    def _chat(self, body: dict[str, Any]) -> None:
        sim = self.server.sim
        user, query, mode = body.get("user"), body.get("query"), body.get("response_mode") or "blocking"
        if not isinstance(user, str) or not user:
            return self._error(400, "invalid_param", "Arg user must be provided.")
        if not isinstance(query, str) or not query.replace("\x00", ""):
            return self._error(400, "invalid_param", "query is required")
        if not isinstance(body.get("inputs"), dict):
            return self._error(400, "invalid_param", _MISSING_INPUTS)
        if mode not in ("streaming", "blocking"):
            return self._error(400, "invalid_param", "response_mode must be 'streaming' or 'blocking'")
        for item in body.get("files") or []:  # local files must be this user's uploads
            upload = sim.uploads.get(item.get("upload_file_id", "")) if isinstance(item, dict) else None
            if upload is None or upload.user != user or item.get("transfer_method") != "local_file":
                return self._error(400, "invalid_param", "Invalid upload file id.")
        script, fail = sim._script_for(query)
        if mode == "blocking" and script.app == "agent":
            return self._error(400, "invalid_param", "Agent Chat App does not support blocking mode")
        if fail:
            return self._scripted_error(script)
        conversation_id = str(body.get("conversation_id") or "").strip()
        if conversation_id:
            try:
                uuid.UUID(conversation_id)
            except ValueError:
                return self._error(400, "invalid_param", "conversation_id must be a valid UUID")
            turn = sim._open_conversation(conversation_id, user)
            if turn is None and sim.dead_conversation_pings and mode == "streaming" and script.app == "advanced-chat":
                return self._pings_only()  # Dify >= 1.13 validates in the worker: 200, then only pings (#37197)
            if turn is None:
                hint = _RESTX_HINT if sim.restx_404_hint else ""
                return self._error(404, "not_found", "Conversation Not Exists." + hint)
        else:
            conversation_id, turn = sim.new_conversation(user), 1
            sim._open_conversation(conversation_id, user)
        task = Task(user)
        ids = Ids(conversation_id, str(uuid.uuid4()), str(uuid.uuid4()), int(time.time()), turn)
        with sim._lock:
            sim.messages[ids.message] = user
            sim._tasks[ids.task] = task
            sim._peak_open = max(sim._peak_open, len(sim._tasks))
        try:
            if mode == "blocking":
                self._blocking(script, ids, task, query)
            else:
                uploads = [sim.uploads[item["upload_file_id"]] for item in body.get("files") or []]
                AnswerStream(self, script, ids, task, query, user, body["inputs"], uploads).run()
        finally:
            with sim._lock:
                sim._tasks.pop(ids.task, None)

    def _pings_only(self) -> None:
        """A stream that only pings (every 0.2 s here, 10 s in Dify) until the client leaves or 300 s pass."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = time.monotonic() + 300
        while time.monotonic() < end and not self.server.sim._closing.wait(0.2):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(b"event: ping\n\n"), b"event: ping\n\n"))
            self.wfile.flush()
        self.close_connection = True

    def _messages(self) -> None:
        """``GET /messages?conversation_id=&user=``: 404 unless the conversation is the user's (dify-api.md §6)."""
        query = dict(parse_qsl(urlsplit(self.path).query))
        sim = self.server.sim
        with sim._lock:
            owner = sim._conversations.get(query.get("conversation_id", ""))
        if owner is None or owner[0] != query.get("user"):
            return self._error(404, "not_found", "Conversation Not Exists.")
        body = {"limit": int(query.get("limit") or 20), "has_more": False, "data": []}
        self._send(200, json.dumps(body).encode(), "application/json")

    def _resume(self, run_id: str) -> None:
        """``GET /workflow/{run_id}/events?user=``: the rest of a paused run once its form is submitted."""
        sim = self.server.sim
        run = sim.forms.waiting(run_id, dict(parse_qsl(urlsplit(self.path).query)).get("user", ""))
        if run is None:
            return self._error(404, "not_found", "Workflow run not found")
        task = Task(run.user)
        with sim._lock:
            sim._tasks[run.ids.task] = task
        try:
            script = Script(app="advanced-chat", leading_ping=True, delta_size=2)
            AnswerStream(self, script, run.ids, task, "", run.user, {}, resumed=run).run()
        finally:
            with sim._lock:
                sim._tasks.pop(run.ids.task, None)

    def _suggested(self, message_id: str) -> None:
        """``GET /messages/{id}/suggested?user=``: the questions after an answer (dify-api.md §6)."""
        sim, user = self.server.sim, dict(parse_qsl(urlsplit(self.path).query)).get("user")
        with sim._lock:
            owner = sim.messages.get(message_id)
        if sim.suggestions is None:
            return self._error(400, "bad_request", "Suggested Questions Is Disabled.")
        if owner is None or owner != user:
            return self._error(404, "not_found", "Message Not Exists.")
        self._send(200, json.dumps({"result": "success", "data": sim.suggestions}).encode(), "application/json")

    def _scripted_error(self, script: Script) -> None:
        status = script.http_status
        if script.html_error:
            phrase = _phrase(status)
            page = (
                f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n<center><h1>"
                f"{status} {phrase}</h1></center>\r\n"
                + "<!-- padding -->\r\n" * 40
                + "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            return self._send(status, page.encode(), "text/html")
        code, message = _DEFAULT_ERRORS.get(status, (f"http_{status}", _phrase(status)))
        self._error(status, script.error_envelope_code or code, script.error_envelope_message or message)

    def _blocking(self, script: Script, ids: Ids, task: Task, query: str) -> None:
        deltas = script.split()
        wait = script.delay * len(deltas) + script.stall
        if task.stop.wait(wait) and self.server.sim._closing.is_set():
            raise Abort
        if script.error_after is not None:
            return self._error(script.error_status, script.error_code, script.error_message)
        if script.eof_after is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        answer = "".join(deltas)
        if script.replace_at is not None:
            answer = script.replace_text + "".join(deltas[script.replace_at :])
        obj = {
            "event": "message",
            "task_id": ids.task,
            "id": ids.message,
            "message_id": ids.message,
            "conversation_id": ids.conversation,
            "mode": script.app,
            "answer": answer,
            "metadata": {"annotation_reply": None, "retriever_resources": [], "usage": USAGE},
            "created_at": ids.created,
        }
        self._send(200, json.dumps(obj).encode(), "application/json; charset=utf-8")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def demo(sim: DifySimulator, delay: float = 0.08) -> DifySimulator:
    """Dress the simulator as a demo app for ``make run``: an opening with questions, suggestions after each
    answer, and queries that draw, use a tool, think, or pause at a form."""
    sim.draw = True
    sim.opening_statement = "你好，我是模拟的 Dify 助手。可以直接提问，也可以试试下面的问题。"
    sim.opening_questions = ["画一只猫", "现在几点了？", "帮我审批一份报价", "1+1 等于几？想清楚再说"]
    sim.suggestions = ["再画一张", "换个说法解释一下"]
    sim.script("现在几点了？", Script(answer="现在是模拟时间 10:50。", app="agent", tools=("current_time",),
                                  delay=delay, delta_size=2))
    sim.script("1+1 等于几？想清楚再说", Script(think="先想一想：一加一……等于二。", answer="等于 2。",
                                           delay=delay, delta_size=2))
    sim.script("帮我审批一份报价", Script(answer="报价单已生成：ACME 公司，¥12,000。", app="advanced-chat",
                                     delay=delay, delta_size=3,
                                     form=Form(title="审批", content="是否把报价发给客户？",
                                               then={"approve": "已发送报价。", "reject": "已取消，报价未发送。"})))
    return sim


def main(argv: list[str] | None = None) -> int:
    """Serve a demo Dify app until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--delay", type=float, default=0.05, help="seconds between deltas (default %(default)s)"
    )
    parser.add_argument("--app", default="chat", choices=["chat", "agent", "advanced-chat"])
    parser.add_argument("--flavour", default="new", choices=["new", "old"])
    parser.add_argument("--api-key", action="append", help="accept only these keys (default: any)")
    args = parser.parse_args(argv)
    default = Script(delay=args.delay, app=args.app, flavour=args.flavour, delta_size=2)
    sim = demo(DifySimulator(args.host, args.port, default, api_keys=set(args.api_key) if args.api_key else None),
               args.delay)
    sim.start()
    keys = "the --api-key values" if args.api_key else "any API key"
    print(f"Dify simulator at {sim.url}  (set DIFY_BASE_URL={sim.url}; accepts {keys})")
    print("unscripted queries are echoed back in small deltas (ask it to 画/draw for a picture); Ctrl-C to stop",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
