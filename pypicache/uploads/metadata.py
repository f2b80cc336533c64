"""Core metadata as uploads see it: :mod:`pypicache.metadata`'s reader, its
refusals as :class:`~pypicache.uploads.multipart.UploadError` (400).

The reader itself (built on ``packaging.metadata``) is shared with the JSON
API, so an upload and the ``info`` served for it come from one reading.
"""

from __future__ import annotations

from typing import Any

from pypicache.metadata import (
    MAX_METADATA_BYTES,
    MULTI_FIELDS,
    SINGLE_FIELDS,
    MetadataError,
    metadata_from_form,
    read_core_metadata,
)
from pypicache.uploads.multipart import UploadError

__all__ = ["parse_core_metadata", "metadata_from_form", "SINGLE_FIELDS", "MULTI_FIELDS", "MAX_METADATA_BYTES"]


def parse_core_metadata(raw: bytes, *, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """:func:`pypicache.metadata.read_core_metadata`, refusing with UploadError(400)."""
    try:
        return read_core_metadata(raw, max_bytes=max_bytes)
    except MetadataError as e:
        raise UploadError(400, e.reason) from None
