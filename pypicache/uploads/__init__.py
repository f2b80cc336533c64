"""Upload parsing and validation: pure, synchronous, run in a thread pool.

``parse_upload`` turns a spooled multipart body into an :class:`UploadForm`
(the distribution written to a temporary file, hashed on the way);
``validate_upload`` checks it as the public index does and returns a
:class:`ValidUpload`.  Both raise :class:`UploadError` carrying the HTTP
status and a one-line reason.  Nothing here touches the network, the
reactor or storage; the caller owns (and must remove) the spooled file.
"""

from importlib import import_module
from typing import Any

# Re-exported lazily (PEP 562): the validator pulls in zipfile, tarfile and
# lzma, which a server that never receives an upload need not load at start-up.
_HOMES = {
    "metadata_from_form": "metadata", "parse_core_metadata": "metadata",
    "UploadedFile": "multipart", "UploadError": "multipart", "UploadForm": "multipart", "parse_upload": "multipart",
    "SDIST": "validate", "WHEEL": "validate", "ValidUpload": "validate", "validate_upload": "validate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"pypicache.uploads.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'pypicache.uploads' has no attribute {name!r}")
