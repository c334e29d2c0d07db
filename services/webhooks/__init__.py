"""Signed event webhooks (``WEBHOOK_URL``): message received, answer finished and feedback, POSTed at least once."""

from services.webhooks.sender import WebhookSender
from services.webhooks.signature import sign, verify

__all__ = ["WebhookSender", "sign", "verify"]
