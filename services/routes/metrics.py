"""``/metrics``: Prometheus exposition, aggregated over every gunicorn worker."""

from __future__ import annotations

from flask import Blueprint, Response

from services import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    """Return all metrics in the Prometheus text format."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
