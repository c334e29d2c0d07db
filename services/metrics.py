"""Prometheus metrics (``/metrics``), correct across gunicorn workers.

Per-bot series carry a ``bot`` label whose values are only the configured bot ids (unknown ids are
refused before anything is counted), so the label's cardinality is bounded by the bots file.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py sets it before workers import this module)
each worker writes its samples to files there and ``/metrics`` aggregates all of them; without it
(tests, a single process) the default in-process registry is used. With ``METRICS_PORT`` set, the
app's ``/metrics`` is not routed (404) and the gunicorn master serves it on that port instead
(services/metrics_server.py).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.metrics_server import multiprocess_registry

NS = "wecom_dify"
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOW = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 330, 600, 1800)

CALLBACKS = Counter(f"{NS}_callbacks_total", "WeCom callbacks by msgtype and outcome", ["bot", "msgtype", "outcome"])
CALLBACK_SECONDS = Histogram(f"{NS}_callback_seconds", "Time to answer a WeCom callback (server side)",
                             ["msgtype"], buckets=FAST)
FIRST_TEXT_SECONDS = Histogram(f"{NS}_first_text_seconds", "From the user's message to the first Dify text",
                               ["bot"], buckets=SLOW)
STREAM_SECONDS = Histogram(f"{NS}_stream_seconds", "From the user's message to the end of the answer",
                           ["bot", "status"], buckets=SLOW)
POLLS_PER_STREAM = Histogram(f"{NS}_polls_per_stream", "Stream refreshes WeCom sent before the last frame",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 400))
DUPLICATES = Counter(f"{NS}_duplicate_deliveries_total", "Re-delivered message callbacks (same msgid)", ["bot"])
STREAMS_ENDED = Counter(f"{NS}_streams_ended_total",
                        "Streams by how they ended for WeCom: done, failed, stopped, refused, interrupted, "
                        "expired, window (closed early, answer follows), overflow (rest follows)", ["bot", "reason"])
DIFY_ERRORS = Counter(f"{NS}_dify_errors_total", "Dify failures by error code", ["bot", "code"])
RESPONSE_URL = Counter(f"{NS}_response_url_total", "response_url deliveries by outcome", ["bot", "outcome"])
MEDIA = Counter(f"{NS}_media_total", "Files of messages: uploaded to Dify, or why not (expired, too_large, "
                "host_not_allowed, undecryptable, unavailable, not_accepted, too_many, upload_refused)",
                ["bot", "outcome"])
ANSWER_FILES = Counter(f"{NS}_answer_files_total", "Files of Dify's answers: inline (an image in the last "
                       "frame), image_linked, file_linked, host_not_allowed (linked), failed (could not be fetched), "
                       "unlinkable (not an http(s) URL: named only)",
                       ["bot", "outcome"])
FEEDBACK = Counter(f"{NS}_feedback_total", "Users' ratings of answers: sent to Dify, duplicate, unknown_answer, "
                   "nothing_to_withdraw, unauthorized, failed, redis_unavailable, invalid", ["bot", "outcome"])
MODERATION = Counter(f"{NS}_moderation_total", "Moderation decisions: point (query, answer) and decision (passed, "
                     "blocked, overridden, replaced, error_open, error_closed)", ["bot", "point", "decision"])
RECORDS = Counter(f"{NS}_records_total", "Conversation records: queued, written, feedback, overflow (buffer full), "
                  "unavailable (Redis away), rejected (MySQL refused its data), "
                  "dropped (feedback without its record)", ["bot", "outcome"])
RECORDS_BACKLOG = Gauge(f"{NS}_records_backlog", "Records waiting in Redis for MySQL (as last seen by this worker)",
                        ["bot"], multiprocess_mode="max")
WEBHOOKS = Counter(f"{NS}_webhooks_total", "Webhook events: queued, delivered, retried, expired (deadline passed), "
                   "overflow, unavailable (Redis away), refused (host not allowed)", ["bot", "outcome"])
AUTH = Counter(f"{NS}_auth_total", "User authentication: hit, miss (refreshed), refused, unavailable",
               ["bot", "result"])
ENGINE_JOBS = Gauge(f"{NS}_engine_jobs", "Answers admitted (authenticating, waiting for their turn or running)",
                    ["bot"], multiprocess_mode="livesum")
ENGINE_CAPACITY = Gauge(f"{NS}_engine_capacity", "Answers the engines may hold at once (ENGINE_CAPACITY per worker)",
                        multiprocess_mode="livesum")
ENGINE_RESERVED = Gauge(f"{NS}_engine_reserved", "Answers kept for each bot alone (its capacity_share)",
                        ["bot"], multiprocess_mode="livesum")
UNKNOWN_BOT = Counter(f"{NS}_unknown_bot_total", "Callbacks to a bot id that is not configured (404, not decrypted)")
ENGINE_REJECTED = Counter(f"{NS}_engine_rejected_total",
                          "Messages refused because the engine was at capacity (or the bot at its share of it)",
                          ["bot"])
ENGINE_JOBS_TRACKED = Gauge(f"{NS}_engine_leases", "Owner leases the keeper renewed at its last renewal",
                            multiprocess_mode="livesum")
ENGINE_LOOP_LAG = Gauge(f"{NS}_engine_loop_lag_seconds",
                        "How late the engine's event loop ran its last keeper tick (a busy loop delays every answer)",
                        multiprocess_mode="livemax")
KEEPER_ERRORS = Counter(f"{NS}_keeper_errors_total",
                        "Unexpected errors in the lease keeper (each logged with its traceback, rate-limited)")

def render() -> tuple[bytes, str]:
    """Return the exposition text and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(multiprocess_registry()), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
