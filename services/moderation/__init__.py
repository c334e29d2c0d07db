"""Moderation: a word list and/or an external service check questions before Dify and answers before WeCom."""

from services.moderation.guard import AnswerGuard
from services.moderation.moderator import Moderator, QueryVerdict
from services.moderation.remote import ModerationUnavailable, RemoteModeration, Verdict
from services.moderation.words import WordList

__all__ = ["AnswerGuard", "ModerationUnavailable", "Moderator", "QueryVerdict", "RemoteModeration", "Verdict",
           "WordList"]
