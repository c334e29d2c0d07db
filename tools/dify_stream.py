"""One simulated Dify answer on the wire: SSE frames as Dify writes them for each app type (dify-api.md §3, §4)."""

from __future__ import annotations

import json
import random
import socket
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tools.dify_forms import Form, PausedRun
from tools.dify_script import KINDS, USAGE, Abort, Ids, Script, Task, Upload

if TYPE_CHECKING:
    from tools.dify_sim import _Handler

class AnswerStream:
    """Write one SSE answer, frame by frame, as the script says."""

    def __init__(
        self, handler: _Handler, script: Script, ids: Ids, task: Task, query: str, user: str, inputs: Any,
        uploads: list[Upload] | None = None, resumed: PausedRun | None = None,
    ) -> None:
        self.h, self.s, self.ids, self.task = handler, script, ids, task
        self.resumed = resumed  # re-attached to a paused run: ping until its form is submitted
        self.query, self.user, self.inputs = query, user, inputs
        self.rng = random.Random(script.seed)
        self.pending = bytearray()
        self.next_size = self.rng.randint(1, 48)
        self.data_frames = 0
        self.run_id, self.workflow_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.text = ""
        self.files = [handler.server.sim.tool_files.publish(f) for f in script.files]
        # a Chatflow's message_end.files holds every file of its nodes' outputs: the user's own too
        self.user_files = [upload_record(u) for u in uploads or []] if script.app == "advanced-chat" else []

    # -- bytes ------------------------------------------------------------------------------------

    def chunk(self, data: bytes) -> None:
        if self.s.chunk_delay:
            self.task.stop.wait(self.s.chunk_delay)
            if self.h.server.sim._closing.is_set():
                raise Abort
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def emit(self, data: bytes) -> None:
        if self.s.rechunk == "frame":
            self.chunk(data)
        elif self.s.rechunk == "bytewise":
            for i in range(len(data)):
                self.chunk(data[i : i + 1])
        else:
            self.pending += data
            if self.s.rechunk == "random":
                self.drain(force=False)

    def drain(self, force: bool) -> None:
        """Send buffered bytes (random sizes or one merged chunk); keep a random tail unless forced."""
        if self.s.rechunk == "merged":
            if force and self.pending:
                self.chunk(bytes(self.pending))
                self.pending.clear()
            return
        while self.pending and (force or len(self.pending) >= self.next_size):
            piece = bytes(self.pending[: self.next_size])
            del self.pending[: self.next_size]
            self.chunk(piece)
            self.next_size = self.rng.randint(1, 48)

    def wait(self, seconds: float) -> bool:
        """Sleep (flushing first); True if the task was stopped meanwhile."""
        if seconds > 0:
            self.drain(force=True)
        stopped = self.task.stop.wait(seconds) if seconds > 0 else self.task.stop.is_set()
        if self.h.server.sim._closing.is_set():
            raise Abort
        return stopped

    # -- frames -----------------------------------------------------------------------------------

    def dumps(self, obj: dict[str, Any]) -> str:
        if self.s.flavour == "old":
            return json.dumps(obj)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    def ping(self) -> None:
        self.emit(b"event: ping\n\n")

    def frame(self, event: str, **fields: Any) -> None:
        obj = {
            "event": event,
            "conversation_id": self.ids.conversation,
            "message_id": self.ids.message,
            "created_at": self.ids.created,
        }
        if event != "error":
            obj["task_id"] = self.ids.task
        obj.update(fields)
        self.emit(("data: " + self.dumps(obj) + "\n\n").encode())
        self.data_frames += 1
        terminal = event in ("error", "message_end", "workflow_finished")
        if self.s.ping_every and self.data_frames % self.s.ping_every == 0 and not terminal:
            self.ping()

    def text_frame(self, text: str) -> None:
        if self.s.app == "agent":
            self.frame("agent_message", id=self.ids.message, answer=text)
        else:
            event = "message_file" if self.s.message_file_quirk else "message"
            selector = ["llm", "text"] if self.s.app == "advanced-chat" else None
            self.frame(event, id=self.ids.message, answer=text, from_variable_selector=selector)

    def thought(self, position: int, thought: str, *, tool: str = "", observation: str = "") -> None:
        self.frame(
            "agent_thought",
            id=f"{self.ids.message[:-2]}{position:02d}",
            position=position,
            thought=thought,
            observation=observation,
            tool=tool,
            tool_labels={tool: {"en_US": tool, "zh_Hans": tool}} if tool else {},
            tool_input=json.dumps({tool: {}}) if tool else "",
            message_files=[],
        )

    def workflow(self, event: str, data: dict[str, Any]) -> None:
        self.frame(event, workflow_run_id=self.run_id, data=data)

    def node(self, event: str, node_id: str, node_type: str, title: str, index: int, **more: Any) -> None:
        data: dict[str, Any] = {
            "id": f"{self.run_id[:-4]}{index:04d}",
            "node_id": node_id,
            "node_type": node_type,
            "title": title,
            "index": index,
            "predecessor_node_id": None,
        }
        if event == "node_started":
            data.update(
                inputs=None,
                inputs_truncated=False,
                created_at=self.ids.created,
                extras={},
                iteration_id=None,
                loop_id=None,
                agent_strategy=None,
            )
        else:
            data.update(
                inputs={},
                inputs_truncated=False,
                process_data=more.get("process_data", {}),
                process_data_truncated=False,
                outputs=more.get("outputs", {}),
                outputs_truncated=False,
                status=more.get("status", "succeeded"),
                error=more.get("error"),
                elapsed_time=0.01,
                execution_metadata=None,
                created_at=self.ids.created,
                finished_at=int(time.time()),
                files=[],
                iteration_id=None,
                loop_id=None,
            )
        self.workflow(event, data)

    def workflow_finished(self, status: str, error: str | None) -> None:
        self.workflow(
            "workflow_finished",
            {
                "id": self.run_id,
                "workflow_id": self.workflow_id,
                "status": status,
                "outputs": {"answer": self.text} if status == "succeeded" else {},
                "error": error,
                "elapsed_time": 0.5,
                "total_tokens": 46,
                "total_steps": 3,
                "created_by": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.user)), "user": self.user},
                "created_at": self.ids.created,
                "finished_at": int(time.time()),
                "exceptions_count": 0,
                "files": self.files if status == "succeeded" else [],
            },
        )

    def message_end(self) -> None:
        files: list[Any] | None = self.user_files + self.files if self.s.app == "advanced-chat" else None
        metadata: dict[str, Any] = {"annotation_reply": None, "retriever_resources": [], "usage": USAGE}
        self.frame("message_end", id=self.ids.message, metadata=metadata, files=files)

    # -- the answer -------------------------------------------------------------------------------

    def run(self) -> None:
        h, s = self.h, self.s
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("X-Accel-Buffering", "no")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if self.resumed is not None:
            self.run_id = self.resumed.run_id
            while not self.resumed.submitted.wait(0.2):
                self.ping()
                self.drain(force=True)
                if self.h.server.sim._closing.is_set():
                    raise Abort
            chosen = self.resumed.chosen or ""
            self.s = s = replace(self.s, answer=self.resumed.form.then.get(chosen, ""),
                                 form=self.resumed.form.next.get(chosen))
        self.opening()
        deltas = s.split()
        cut = min(len(deltas), *(n for n in (s.error_after, s.eof_after, s.stopped_after) if n is not None),
                  len(deltas))
        stopped = False
        for i, delta in enumerate(deltas[:cut]):
            if self.wait(s.delay):
                stopped = True
                break
            self.text += delta
            self.text_frame(delta)
            if s.replace_at is not None and i + 1 == s.replace_at:
                self.text = s.replace_text
                reason = "output_moderation" if s.app == "advanced-chat" else ""
                self.frame("message_replace", answer=s.replace_text, reason=reason)
        if not stopped and s.stall > 0:
            stopped = self.stall()
        stopped = stopped or s.stopped_after is not None
        if s.form is not None and s.app == "advanced-chat" and not stopped:
            self.paused_ending(s.form)
        elif stopped:
            self.stopped_ending()
        elif s.error_after is not None:
            self.error_ending()
        elif s.eof_after is not None:
            self.drain(force=True)
            if s.eof_abrupt:
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
        else:
            self.normal_ending()
        self.drain(force=True)
        h.wfile.write(b"0\r\n\r\n")

    def stall(self) -> bool:
        end = time.monotonic() + self.s.stall
        while (left := end - time.monotonic()) > 0:
            step = min(left, self.s.ping_interval) if self.s.pings_during_stall else left
            if self.wait(step):
                return True
            if self.s.pings_during_stall and end - time.monotonic() > 0:
                self.ping()
        return False

    def opening(self) -> None:
        s = self.s
        if s.leading_ping or (s.leading_ping is None and s.app == "advanced-chat"):
            self.ping()
        if s.app == "advanced-chat":
            inputs = {
                **self.inputs,
                "sys.files": [],
                "sys.user_id": self.user,
                "sys.app_id": self.h.server.sim.app_id,
                "sys.workflow_id": self.workflow_id,
                "sys.workflow_run_id": self.run_id,
                "sys.query": self.query,
                "sys.dialogue_count": self.ids.turn,
            }
            self.workflow(
                "workflow_started",
                {
                    "id": self.run_id,
                    "workflow_id": self.workflow_id,
                    "inputs": inputs,
                    "created_at": self.ids.created,
                    "reason": "initial",
                },
            )
            self.node("node_started", "1763600000001", "start", "开始", 1)
            self.node("node_finished", "1763600000001", "start", "开始", 1, outputs=inputs)
            self.node("node_started", "llm", "llm", "LLM", 2)
        elif s.app == "agent":
            self.thought(1, "")
            self.frame("agent_message", id=self.ids.message, answer="")
            for tool in s.tools:  # a tool round: the thought names the tool, then carries its observation
                self.thought(1, "", tool=tool)
                self.wait(s.delay)
                self.thought(1, "", tool=tool, observation=json.dumps({tool: "ok"}))
        if s.message_file_quirk and s.app != "agent":
            self.frame(
                "message_file",
                id=str(uuid.uuid4()),
                type="image",
                belongs_to="assistant",
                url=f"http://127.0.0.1/files/tools/{uuid.uuid4()}.png?timestamp=1&nonce=n&sign=s",
            )
        if s.app != "advanced-chat":  # a tool's files, announced as it makes them
            for record in self.files:
                self.frame("message_file", id=str(uuid.uuid4()), type=record["type"], belongs_to="assistant",
                           url=record["url"])

    def normal_ending(self) -> None:
        s = self.s
        if s.app == "advanced-chat":
            prompt = "资料" * (s.node_payload // 2)
            self.node(
                "node_finished",
                "llm",
                "llm",
                "LLM",
                2,
                outputs={"text": self.text},
                process_data={"prompts": [{"role": "user", "text": prompt or self.query, "files": []}]},
            )
            self.message_end()
            self.workflow_finished("succeeded", None)
            return
        if s.app == "agent":
            self.thought(2, self.text)
            if s.closing_message:
                self.frame("message", id=self.ids.message, answer=self.text, from_variable_selector=None)
        self.message_end()

    def paused_ending(self, form: Form) -> None:
        """Stop at a Human Input node: its form, then workflow_paused; the relay ends the stream there."""
        data = self.h.server.sim.forms.pause(self.run_id, self.user, form, self.ids)
        self.workflow("human_input_required", data)
        reason = {"TYPE": "human_input_required", **{k: v for k, v in data.items() if k != "display_in_ui"}}
        self.workflow("workflow_paused", {"workflow_run_id": self.run_id, "paused_nodes": [data["node_id"]],
                                          "outputs": {}, "reasons": [reason], "status": "paused",
                                          "created_at": self.ids.created, "elapsed_time": 1.0, "total_tokens": 46,
                                          "total_steps": 3})

    def error_ending(self) -> None:
        s = self.s
        if s.app == "advanced-chat":
            self.node("node_finished", "llm", "llm", "LLM", 2, status="failed", error=s.error_message)
            self.workflow_finished("failed", s.error_message)
        self.frame("error", code=s.error_code, status=s.error_status, message=s.error_message)

    def stopped_ending(self) -> None:
        """End as Dify does on a user stop: the partial answer is kept."""
        if self.s.app == "advanced-chat":
            self.workflow_finished("stopped", None)
        self.message_end()


def upload_record(upload: Upload) -> dict[str, Any]:
    """An uploaded file as a Chatflow hands it back (``File.to_dict()`` of a local file)."""
    extension = upload.name.rsplit(".", 1)[-1] if "." in upload.name else ""
    kind = next((k for k, exts in KINDS.items() if extension in exts), "document")
    return {"dify_model_identity": "__dify__file__", "id": None, "tenant_id": str(uuid.uuid4()), "type": kind,
            "transfer_method": "local_file", "remote_url": None, "related_id": upload.id, "filename": upload.name,
            "extension": f".{extension}", "mime_type": upload.mime, "size": len(upload.data),
            "url": f"/files/{upload.id}/file-preview?timestamp={int(time.time())}&nonce=n&sign=s"}
