"""PEP 740 provenance: fetched once from the upstream, checked, kept.

A file's provenance object (``application/vnd.pypi.integrity.v1+json``)
groups the attestations its publisher signed for it.  Clients that verify
attestations fetch it from the URL on the page; a cache that passed the
upstream's URL on would send them to the internet, and one that is offline
would have nothing to give.  So pages link the object beside the file
(``/files/<project>/<filename>.provenance``, web/files.py) and this module
fetches it from the upstream on the first request, stores it as a blob and
records it in the index (:class:`~pypicache.interfaces.IIndexProvenance`);
after that it is served from storage, offline and from ``/local/`` too.

What is checked before anything is stored (:func:`check_provenance`): the
object has the PEP 740 shape, and every attestation's in-toto statement
names this file -- each subject's ``digest.sha256`` is the sha256 the cache
verified the file's bytes against, and its ``name`` the filename.  So an
upstream cannot make us keep (and serve as this file's) an attestation for
other bytes.  Signatures are *not* checked: that needs Sigstore's trust root
and an identity policy (which publisher should have signed), which are the
verifying client's to hold.  The cache guarantees binding, clients check
signatures.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from twisted.logger import Logger

from pypicache.errors import DiskFull
from pypicache.interfaces import IIndexProvenance
from pypicache.model import FileRecord, UpstreamError, file_key
from pypicache.services.mirror import Coalescer
from pypicache.services.traffic import Traffic

__all__ = ["CONTENT_TYPE", "MAX_BYTES", "ProvenanceFetcher", "ProvenanceRejected", "check_provenance"]

log = Logger()

#: The media type PyPI serves provenance objects with (PEP 740).
CONTENT_TYPE = b"application/vnd.pypi.integrity.v1+json"

#: Provenance objects are a few KiB (a certificate and a signature per
#: attestation); more than this is not one, and is refused unread.
MAX_BYTES = 1024 * 1024


class ProvenanceRejected(UpstreamError):
    """A provenance object that is malformed, too big, or about another
    file: nothing was stored, and the client gets a 502."""


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise ProvenanceRejected(why)


def _statement(attestation: Any, where: str) -> dict[str, Any]:
    _require(isinstance(attestation, dict), f"{where} is not an object")
    _require(attestation.get("version") == 1, f"{where}: version is not 1")
    _require(isinstance(attestation.get("verification_material"), dict),
             f"{where}: no verification_material object")
    envelope = attestation.get("envelope")
    _require(isinstance(envelope, dict), f"{where}: no envelope object")
    for key in ("statement", "signature"):
        _require(isinstance(envelope.get(key), str) and envelope[key] != "",
                 f"{where}: envelope.{key} is not a base64 string")
    try:
        base64.b64decode(envelope["signature"], validate=True)
        statement = json.loads(base64.b64decode(envelope["statement"], validate=True))
    except (binascii.Error, ValueError):
        raise ProvenanceRejected(f"{where}: envelope.statement is not base64-encoded JSON") from None
    _require(isinstance(statement, dict), f"{where}: the statement is not a JSON object")
    return statement


def check_provenance(body: bytes, filename: str, sha256: str) -> None:
    """Raise :class:`ProvenanceRejected` unless ``body`` is a PEP 740
    provenance object whose every attestation is about ``filename`` with
    the bytes ``sha256``.

    Names compare as the index compares filenames
    (:func:`pypicache.model.file_key`), so a subject spelt ``Pkg-2.0`` binds
    ``pkg-2.0.0``; digests compare exactly.  Pure and bounded (the body is
    at most :data:`MAX_BYTES`): a few milliseconds at worst.
    """
    _require(len(body) <= MAX_BYTES, f"{len(body)} bytes is more than {MAX_BYTES}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProvenanceRejected("not JSON") from None
    _require(isinstance(doc, dict), "not a JSON object")
    _require(doc.get("version") == 1, "version is not 1")
    bundles = doc.get("attestation_bundles")
    _require(isinstance(bundles, list) and len(bundles) > 0, "no attestation_bundles")
    key = file_key(filename)
    for i, bundle in enumerate(bundles):
        where = f"attestation_bundles[{i}]"
        _require(isinstance(bundle, dict), f"{where} is not an object")
        _require(isinstance(bundle.get("publisher"), dict), f"{where}: no publisher object")
        attestations = bundle.get("attestations")
        _require(isinstance(attestations, list) and len(attestations) > 0, f"{where}: no attestations")
        for j, attestation in enumerate(attestations):
            at = f"{where}.attestations[{j}]"
            subjects = _statement(attestation, at).get("subject")
            _require(isinstance(subjects, list) and len(subjects) > 0, f"{at}: the statement has no subject")
            for subject in subjects:
                _require(isinstance(subject, dict), f"{at}: a subject is not an object")
                digest = subject.get("digest")
                got = digest.get("sha256") if isinstance(digest, dict) else None
                _require(isinstance(got, str) and got.lower() == sha256,
                         f"{at}: the statement is about sha256 {got!r}, not this file's {sha256}")
                name = subject.get("name")
                _require(isinstance(name, str) and (name == filename or file_key(name) == key),
                         f"{at}: the statement is about {name!r}, not {filename}")


class ProvenanceFetcher:
    """Fetches, checks, stores and records provenance objects; one upstream
    request per file however many clients ask at once."""

    def __init__(self, *, storage: Any, index: Any, upstream: Any, traffic: Traffic | None = None,
                 max_bytes: int = MAX_BYTES) -> None:
        self.storage = storage
        self.index = index
        self.upstream = upstream
        self.max_bytes = max_bytes
        self.traffic = traffic if traffic is not None else Traffic()
        self._fetches: Coalescer[str] = Coalescer(lambda: self.traffic.joined("file"))

    async def fetch(self, project: str, record: FileRecord) -> str:
        """The sha256 of ``record``'s stored provenance blob, fetched now.

        Raises UpstreamNotFound (the upstream has none), UpstreamError (it
        failed; :class:`ProvenanceRejected` for a refused object) or DiskFull.
        """
        return await self._fetches.run((project, record.filename), lambda: self._fetch(project, record))

    async def _fetch(self, project: str, record: FileRecord) -> str:
        sha256 = record.sha256
        if record.provenance is None:
            raise ProvenanceRejected(f"{record.filename}: the upstream offers no provenance")
        if sha256 is None:
            raise ProvenanceRejected(f"{record.filename}: no sha256 to check its provenance against")
        download = await self.traffic.timed("file", lambda: self.upstream.open_file(record.provenance))
        if download.length is not None and download.length > self.max_bytes:
            download.cancel()
            raise self._rejected(project, record, f"{download.length} bytes is more than {self.max_bytes}")
        parts: list[bytes] = []
        received = 0

        def write(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > self.max_bytes:
                raise ProvenanceRejected(f"more than {self.max_bytes} bytes")
            parts.append(chunk)

        try:
            await download.deliver(write)
        except ProvenanceRejected as e:
            download.cancel()
            raise self._rejected(project, record, str(e)) from None
        body = b"".join(parts)
        try:
            check_provenance(body, record.filename, sha256)
        except ProvenanceRejected as e:
            raise self._rejected(project, record, str(e)) from None
        try:
            writer = self.storage.open_write(None)
            writer.write(body)
        except OSError as e:
            raise DiskFull(f"{record.filename}.provenance: cannot store it: {e.strerror or e}") from None
        try:
            blob = await writer.commit()
        except BaseException:
            writer.abort()
            raise
        if IIndexProvenance.providedBy(self.index):
            try:
                await self.index.mark_provenance_stored(project, record.filename, blob.sha256)
            except Exception as e:  # served anyway; fetched again next time
                log.error("indexing {project}/{filename}.provenance failed: {error}", project=project,
                          filename=record.filename, error=repr(e))
        log.info("cached {project}/{filename}.provenance ({size} bytes)", project=project,
                 filename=record.filename, size=blob.size)
        return blob.sha256

    def _rejected(self, project: str, record: FileRecord, why: str) -> ProvenanceRejected:
        error = ProvenanceRejected(f"{record.filename}: provenance refused: {why}")
        self.traffic.upstream_error("file", error)
        log.error("not caching {project}/{filename}.provenance: {why}", project=project,
                  filename=record.filename, why=why)
        return error
