"""What files a Dify app takes, from its ``GET /parameters``: types, how many, how large.

``file_upload`` holds the app's switches (``enabled``, ``allowed_file_types``,
``allowed_file_upload_methods``, ``number_limits``; older apps only ``image`` with its own
``enabled``, ``number_limits`` and ``transfer_methods``); ``system_parameters`` the size limits in
MB. A file the app would ignore or refuse is never uploaded: the user is told the limit instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utils.payload import as_dict

MB = 1024 * 1024
DEFAULT_LIMITS_MB = {"image": 10, "document": 15, "audio": 50, "video": 100}
"""Dify's defaults (UPLOAD_*_FILE_SIZE_LIMIT) when ``system_parameters`` does not say."""
_LIMIT_KEYS = {"image": "image_file_size_limit", "document": "file_size_limit", "audio": "audio_file_size_limit",
               "video": "video_file_size_limit"}


@dataclass(frozen=True)
class Refusal:
    """Why a file will not go to Dify: ``code`` (not_accepted, too_large, too_many) and the limit that says so."""

    code: str
    limit: int = 0  # MB for too_large, files for too_many


@dataclass(frozen=True)
class FileRules:
    """The file types an app takes by local upload, how many per message, and the size limit of each type."""

    types: frozenset[str] = frozenset()
    max_files: int = 0
    limits_mb: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS_MB))

    @classmethod
    def from_parameters(cls, parameters: Any) -> FileRules:
        """Read ``/parameters``; anything missing or malformed means "takes no files"."""
        params = as_dict(parameters)
        upload = as_dict(params.get("file_upload"))
        image = as_dict(upload.get("image"))
        types: set[str] = set()
        if upload.get("enabled") is True:  # as Dify reads it: the new fields, and the image block is ignored
            if "local_file" in _strings(upload.get("allowed_file_upload_methods")):
                types = {t for t in _strings(upload.get("allowed_file_types")) if t in DEFAULT_LIMITS_MB}
            number = upload.get("number_limits")
        else:  # an older app: only its image block
            if image.get("enabled") is True and "local_file" in _strings(image.get("transfer_methods")):
                types = {"image"}
            number = image.get("number_limits")
        system = as_dict(params.get("system_parameters"))
        limits = {kind: _positive(system.get(key), DEFAULT_LIMITS_MB[kind]) for kind, key in _LIMIT_KEYS.items()}
        return cls(frozenset(types), _positive(number, 3) if types else 0, limits)

    def check(self, kinds: list[str], sizes: list[int]) -> Refusal | None:
        """Why these files (their Dify types and byte sizes, in order) cannot go to the app, or None."""
        for kind in kinds:
            if kind not in self.types:
                return Refusal("not_accepted")
        if len(kinds) > self.max_files:
            return Refusal("too_many", self.max_files)
        for kind, size in zip(kinds, sizes, strict=True):
            if size > self.limits_mb[kind] * MB:
                return Refusal("too_large", self.limits_mb[kind])
        return None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _positive(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
