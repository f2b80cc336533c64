"""Every contract in pypicache, in one place: the file a plugin author reads.

Three kinds of provider make up a server, each chosen by name in the config:

* storage  (:class:`IStorage`)  keeps file bytes, addressed by their sha256;
* index    (:class:`IIndex`)    the catalog: projects, files, hashes, freshness;
* upstream (:class:`IUpstream`) where pages and files come from when not cached.

A provider may also offer optional capabilities, each its own interface
declared beside the main one (``@implementer(IStorage, IBlobInventory)``) and
checked with ``providedBy``, never by probing for a method name:

* :class:`IBlobInventory`  (storage) -- list and re-hash blobs: scrub, verify;
* :class:`IBlobQuarantine` (storage) -- blobs moved aside as corrupt: verify;
* :class:`IBlobAccessTime` (storage) -- when a blob was last used: eviction;
* :class:`IIndexRepair`    (index)   -- unmark a stored file, find files by
  blob: verify and scrub repair the index with it;
* :class:`IIndexProvenance` (index)  -- remember a file's stored PEP 740
  provenance object, so it is served offline;
* :class:`IClosable`       (storage, upstream) -- release resources at shutdown.

A provider is made by a factory (:class:`IProviderFactory`) registered in the
entry-point group ``pypicache.<kind>``; see docs/providers.md.  Methods that may
wait return a ``Deferred``; its result and failures are given per method.
Implementations must never block the reactor thread for long: do disk or
database work in the thread pool from :class:`pypicache.providers.ProviderContext`
or keep each call tiny.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IProviderFactory(Interface):
    """Makes one provider from its config table.

    Registered as an entry point in the group ``pypicache.storage``,
    ``pypicache.index`` or ``pypicache.upstream``; the entry point's name is the
    ``provider = "..."`` value users write in the config.
    """

    kind = Attribute("'storage', 'index' or 'upstream': the interface it provides.")

    def create(options, context):
        """Build the provider.

        :param options: the provider's config table (a dict) without the
            ``provider`` key.  Unknown keys or bad values must raise
            :class:`pypicache.daemon.config.ConfigError` naming the key.
        :param context: a :class:`pypicache.providers.ProviderContext`
            (reactor, thread pool, data directory, HTTP settings).
        :return: an object providing the interface named by ``kind``.
        """


# --------------------------------------------------------------------- storage


class IBlobWriter(Interface):
    """A blob being written.  Nothing is visible until :meth:`commit` succeeds."""

    def write(data):
        """Append ``data`` (bytes).  Synchronous and cheap (a small chunk)."""

    def commit():
        """Finish: verify the sha256 and make the blob visible atomically.

        :return: Deferred firing with :class:`pypicache.model.BlobInfo`; fails
            with :class:`pypicache.model.HashMismatch` (and stores nothing)
            when the bytes do not match the expected digest.
        """

    def abort():
        """Throw the partial blob away.  Safe to call more than once."""


class IBlobReader(Interface):
    """An open blob.  Close it when done."""

    size = Attribute("Length of the blob in bytes.")

    def seek(offset):
        """Move to ``offset`` bytes from the start."""

    def read(length):
        """Deferred firing with up to ``length`` bytes; ``b''`` at the end."""

    def fileno():
        """A readable OS file descriptor positioned like the reader, or None.

        When not None the server may use ``os.sendfile`` (zero copy)."""

    def close():
        """Release the blob."""


class IStorage(Interface):
    """A content-addressed blob store: every blob's key is its sha256 (hex).

    Keys are validated (64 lower-case hex digits), so no client-supplied
    string ever reaches a file system path.
    """

    def open_write(expected_sha256):
        """Start writing a blob.

        :param expected_sha256: hex digest the bytes must have, or None to
            accept any content (the key is then the computed digest).
        :return: an :class:`IBlobWriter`.
        """

    def ingest(path, sha256):
        """Take over a complete local temporary file whose sha256 the caller
        has computed from the bytes it wrote (the download spool).

        The storage moves (or copies, then deletes) it into place atomically.
        :return: Deferred firing with :class:`pypicache.model.BlobInfo`.
        """

    def open_read(sha256):
        """Deferred firing with an :class:`IBlobReader`; fails with
        :class:`pypicache.model.BlobNotFound`."""

    def exists(sha256):
        """Deferred firing with True when the blob is stored."""

    def size(sha256):
        """Deferred firing with the blob's size; fails with BlobNotFound."""

    def delete(sha256):
        """Deferred firing with None once the blob is gone (absent is fine)."""


class IBlobInventory(Interface):
    """Optional for a storage: list its blobs and re-check one.

    What the background scrub (:mod:`pypicache.services.scrub`) and ``pypicache
    verify`` need to walk the whole store; a storage without it is simply not
    scrubbed.  Declare it with ``@implementer(IStorage, IBlobInventory)``.
    """

    scrub_rate = Attribute("Bytes per second the background scrub may read (int, 0 = no scrub).")

    def iter_blobs():
        """Every blob as ``(sha256, size)``.  Blocking: called in a thread,
        and consumed a batch at a time, so it should be a lazy iterator."""

    def check_blob(sha256, remove_corrupt=False, pace=None):
        """Hash the blob now, whatever was remembered about it.

        :param remove_corrupt: move a corrupt or unreadable blob out of the
            way (never served again) unless a good copy replaced it meanwhile.
        :param pace: None, or a callable taking a byte count and returning a
            Deferred: called after each chunk read, the next chunk waits for it
            (the scrub's rate limit).  Cancelling that Deferred abandons the check.
        :return: Deferred firing with a
            :class:`pypicache.model.BlobCheck` (status "ok", "missing",
            "corrupt" or "unreadable"; ``removed`` when moved aside).
        """


class IBlobQuarantine(Interface):
    """Optional for a storage: the blobs it moved aside as corrupt.

    ``pypicache verify`` reports how many there are and, with ``--repair``,
    deletes them.  A storage without it keeps no quarantine (or keeps it to
    itself): verify then reports none.
    """

    def quarantined():
        """Every quarantined blob, as a list of entries only this storage
        interprets (the filesystem storage's are paths).  Blocking: called
        in a thread."""

    def discard_quarantined(entry):
        """Delete one entry of :meth:`quarantined` for good.  Blocking.

        :return: True when it was deleted, False when it was already gone.
        """


class IBlobAccessTime(Interface):
    """Optional for a storage: when a blob was last read or written.

    Eviction's guess at the least recently used order for files it has no
    record of (stored by another process, or before a server ran with
    ``[cache] max_size``); without it the index's ``first_seen`` is used.
    """

    def last_used(sha256):
        """Seconds since the epoch the blob was last read or written, as far
        as the storage can tell, or None (no such blob, or it cannot say).
        Blocking: called in a thread."""


# ------------------------------------------------------------- any provider


class IClosable(Interface):
    """Optional for a storage or an upstream: something to release at shutdown.

    The server calls :meth:`close` once, after the last request, on every
    provider that declares this (an index always has ``close``: it is part
    of :class:`IIndex`).  A provider holding connections, threads or files
    open declares it so a stop (and a test) leaves nothing behind; one
    without it is simply dropped.
    """

    def close():
        """Release what the provider holds.  Returns None or a Deferred
        firing once it is released; it should not fail."""


# -------------------------------------------------------------------- upstream


class IUpstreamDownload(Interface):
    """A file download from the upstream whose headers have arrived."""

    length = Attribute("Content-Length announced by the upstream, or None.")

    def deliver(write):
        """Stream the body: ``write(bytes)`` is called for every chunk.

        :return: Deferred firing with None when the whole body arrived; fails
            with :class:`pypicache.model.UpstreamError` on reset, stall
            (read timeout), or fewer/more bytes than announced.
        """

    def cancel():
        """Abort the transfer (the Deferred from deliver then fails)."""


class IUpstream(Interface):
    """An index the server proxies: the public PyPI by default."""

    url = Attribute("Root of the upstream Simple API, ending in '/'.")

    def fetch_project_list(validators):
        """Deferred firing with :class:`pypicache.model.ProjectList`.

        :param validators: :class:`pypicache.model.Validators` of the copy we
            hold, for a conditional request.  Fails with NotModified when
            the copy is current, UpstreamError when the upstream fails.
        """

    def fetch_project(name, validators):
        """Deferred firing with :class:`pypicache.model.ProjectPage`.

        :param name: normalised project name.
        Fails with NotModified, UpstreamNotFound (404/410) or UpstreamError.
        File URLs in the result are absolute; sha256 hashes, requires-python,
        yanked, core-metadata, size and upload-time are kept when given.
        """

    def open_file(url):
        """Deferred firing with an :class:`IUpstreamDownload` once headers
        arrived; fails with UpstreamNotFound or UpstreamError."""


# ----------------------------------------------------------------------- index


class IIndex(Interface):
    """The catalog of what the server knows: projects, files and freshness."""

    def get_project(name):
        """Deferred firing with a :class:`pypicache.model.ProjectRecord`, or
        None when the project is unknown."""

    def list_projects():
        """Deferred firing with a sorted list of normalised names of every
        project that has a record."""

    def save_upstream_page(page, refreshed_at, merge=False):
        """Replace a project's upstream-listed files with those of ``page``.

        Files that are stored keep their ``stored``/``metadata_stored`` state;
        a stored file the upstream no longer lists is kept with
        ``listed=False``; other unlisted files are dropped.
        :param merge: True when the name is listed in ``[uploads] merge``.
            Unless it is, a page for a private project (``origin="local"``)
            is dropped and the stored record returned unchanged -- checked
            in the same transaction as the write, since an upload may have
            made the name private while the page was being fetched
            (:func:`pypicache.providers.index.rules.merge_upstream_page` does both).
        :return: Deferred firing with the new ProjectRecord.
        """

    def mark_refreshed(name, refreshed_at, validators):
        """The upstream confirmed the page is current (a 304).
        Deferred firing with the ProjectRecord, or None if unknown."""

    def mark_stored(name, filename, blob):
        """Record that a file's bytes are in storage (``blob`` is BlobInfo).
        Deferred firing with the new ProjectRecord."""

    def mark_metadata_stored(name, filename, sha256):
        """Record that a file's METADATA is in storage under ``sha256``.
        Deferred firing with the new ProjectRecord."""

    def add_file(name, record):
        """Add an uploaded file to project ``name``.

        The project is created private (``origin="local"``) if it does not
        exist; an existing upstream-origin project becomes private (its
        unstored upstream files are dropped, stored ones kept unlisted).
        ``record.origin`` must be ``"local"``.  The filename is remembered as
        used forever, with the file's sha256.
        Fails with :class:`pypicache.model.FileExists` when the filename was
        ever used before (even if that file was deleted since), compared as
        :meth:`used_filename` compares them.
        :return: Deferred firing with the new ProjectRecord.
        """

    def create_project(name, origin):
        """Make sure project ``name`` exists with ``origin`` ("local" makes a
        private project with no files).  An existing project keeps its files;
        its origin becomes ``origin``.  Deferred firing with the ProjectRecord."""

    def used_filename(filename):
        """Deferred firing with the sha256 of what was uploaded under
        ``filename`` (in any project, even if deleted since), or None.
        Filenames compare as the public index compares them: by
        :func:`pypicache.model.file_key` (normalised name, version, build
        and tags), so ``pkg-2.0.0-py3-none-any.whl`` is used once
        ``pkg-2.0-py3-none-any.whl`` was."""

    def set_yanked(name, filename, yanked, reason):
        """Mark one file yanked (PEP 592) with an optional reason, or not.
        Fails with KeyError for an unknown project or file.
        Deferred firing with the new ProjectRecord."""

    def remove_file(name, filename):
        """Delete one file from the catalog (its filename stays used).
        Fails with KeyError for an unknown project or file.
        Deferred firing with the new ProjectRecord (the project itself stays,
        even with no files: a private name stays private)."""

    def get_project_list():
        """Deferred firing with ``(ProjectList, refreshed_at)`` or None."""

    def save_project_list(project_list, refreshed_at):
        """Store the upstream's root list.  Deferred firing with None."""

    def close():
        """Deferred firing once all pending writes are durable."""


class IIndexRepair(Interface):
    """Optional for an index: take back a ``stored`` mark, find files by blob.

    What ``pypicache verify --repair`` and the background scrub need once a
    blob is found missing or corrupt: every entry naming it is marked not
    stored, so the next request fetches the file from the upstream again
    (eviction will use the same).  With an index without it, verify and the
    scrub only report; the server still notices a lost blob on the next
    request for it (the storage has no such blob) and fetches it again.
    """

    def mark_unstored(name, filename, metadata):
        """Record that a file's bytes (``metadata`` False) or its METADATA's
        (``metadata`` True) are no longer in storage.  Its sha256 stays: it is
        what the bytes fetched again must hash to.  Nothing changes when it
        was not marked stored.
        Fails with KeyError for an unknown project or file.
        :return: Deferred firing with the new ProjectRecord.
        """

    def stored_with_blob(sha256):
        """Deferred firing with a list of ``(project, filename, part)`` for
        every file marked stored whose bytes (``part`` "file") or METADATA
        (``part`` "metadata") are the blob ``sha256``; sorted."""


class IIndexProvenance(Interface):
    """Optional for an index: remember where a file's PEP 740 provenance is.

    The server fetches a provenance object from the upstream on its first
    request, checks that it names the file (pypicache.services.provenance)
    and stores it as a blob; with this capability the index records that
    blob in the file's ``provenance_sha256``, so the object is served again
    from storage, offline too.  Without it every request asks the upstream.
    Records must keep ``provenance`` and ``provenance_sha256`` as written.
    """

    def mark_provenance_stored(name, filename, sha256):
        """Record the provenance blob ``sha256`` of one file (None: it is
        no longer stored).  Fails with KeyError for an unknown project or
        file.  Deferred firing with the new ProjectRecord."""
