"""What a file is, from its first bytes (never from its URL or name): Dify's file type, MIME type, extension."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """A file's type as Dify's ``files`` want it (image, document, audio, video, custom), and its MIME type."""

    dify_type: str
    mime: str
    extension: str


IMAGE_JPEG = Kind("image", "image/jpeg", "jpg")
IMAGE_PNG = Kind("image", "image/png", "png")
UNKNOWN = Kind("custom", "application/octet-stream", "bin")

_PREFIXES: tuple[tuple[bytes, Kind], ...] = (
    (b"\xff\xd8\xff", IMAGE_JPEG),
    (b"\x89PNG\r\n\x1a\n", IMAGE_PNG),
    (b"GIF87a", Kind("image", "image/gif", "gif")),
    (b"GIF89a", Kind("image", "image/gif", "gif")),
    (b"%PDF-", Kind("document", "application/pdf", "pdf")),
    (b"#!AMR", Kind("audio", "audio/amr", "amr")),
    (b"ID3", Kind("audio", "audio/mpeg", "mp3")),
    (b"\x1aE\xdf\xa3", Kind("video", "video/webm", "webm")),
)
_OFFICE = (("word/", Kind("document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                          "docx")),
           ("xl/", Kind("document", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx")),
           ("ppt/", Kind("document", "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                         "pptx")))


def sniff(data: bytes) -> Kind:
    """The kind of ``data``; UNKNOWN when its bytes say nothing this bridge knows."""
    for prefix, kind in _PREFIXES:
        if data.startswith(prefix):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Kind("image", "image/webp", "webp")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return Kind("audio", "audio/wav", "wav")
    if data[4:8] == b"ftyp":  # ISO media: the brand says what it holds
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            return Kind("custom", "image/heic" if brand != b"avif" else "image/avif", brand.decode().strip())
        if brand in (b"M4A ", b"M4B "):
            return Kind("audio", "audio/mp4", "m4a")
        return Kind("video", "video/quicktime", "mov") if brand == b"qt  " else Kind("video", "video/mp4", "mp4")
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # an MPEG audio frame header
        return Kind("audio", "audio/mpeg", "mp3")
    if data.startswith(b"PK\x03\x04"):
        return _office(data)
    return _text(data)


def _office(data: bytes) -> Kind:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return UNKNOWN
    for folder, kind in _OFFICE:
        if any(name.startswith(folder) for name in names):
            return kind
    return UNKNOWN


def _text(data: bytes) -> Kind:
    head = data[:4096]
    if not head or b"\x00" in head:
        return UNKNOWN
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return UNKNOWN
    return Kind("document", "text/plain", "txt")
