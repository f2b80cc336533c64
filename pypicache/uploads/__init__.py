"""Upload parsing and validation: pure, synchronous, run in a thread pool.

``parse_upload`` turns a spooled multipart body into an :class:`UploadForm`
(the distribution written to a temporary file, hashed on the way);
``validate_upload`` checks it as the public index does and returns a
:class:`ValidUpload`.  Both raise :class:`UploadError` carrying the HTTP
status and a one-line reason.  Nothing here touches the network, the
reactor or storage; the caller owns (and must remove) the spooled file.
"""

from pypicache.uploads.metadata import metadata_from_form, parse_core_metadata
from pypicache.uploads.multipart import UploadedFile, UploadError, UploadForm, parse_upload
from pypicache.uploads.validate import SDIST, WHEEL, ValidUpload, validate_upload

__all__ = [
    "SDIST",
    "WHEEL",
    "UploadError",
    "UploadForm",
    "UploadedFile",
    "ValidUpload",
    "metadata_from_form",
    "parse_core_metadata",
    "parse_upload",
    "validate_upload",
]
