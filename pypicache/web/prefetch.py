"""``POST /requirements.txt``: pre-fill from a requirements or lock file, as
the original pypicache did; ``GET /requirements/jobs/<id>``: a large set's
progress and answer.

The body is a multipart form whose field ``requirements`` holds the file
(``python``, ``platform`` and ``format`` fields optional), or the file itself
with a non-form Content-Type (then those come in the query).  The answer is
JSON: ``{"files": [{"project", "filename", "status", "reason"...}],
"summary": {...}}``.  A set of more than ``[prefetch] job_threshold``
requirements answers 202 with ``Location: /requirements/jobs/<id>`` at once.

The route makes the server download on demand, so it needs credentials
(the upload accounts) unless ``[prefetch] open = true``, its body is bounded
by ``max_body`` (413, see pypicache.web.request), its set by
``max_requirements`` (413), and pre-fills run a few at a time (503).
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource

from pypicache.services.environments import InvalidEnvironment, environments
from pypicache.services.lockfiles import FORMATS, detect_format, parse_any
from pypicache.services.prefetch import Prefetcher, Report
from pypicache.uploads.multipart import UploadError, parse_upload
from pypicache.web.auth import AUTH_CHALLENGE, authenticate
from pypicache.web.util import HTTPError, finish_bytes, handle

if TYPE_CHECKING:  # the daemon builds the routes: only the type comes from it
    from pypicache.daemon.config import PrefetchConfig

log = Logger()

#: Pre-fills (answered or jobs) running at once; more get 503.
MAX_RUNNING = 4
#: Finished jobs remembered for their GET (oldest forgotten first).
MAX_JOBS = 100
#: ``python``/``platform`` values one request may name.
MAX_TARGETS = 8
_LABELS = {"requirements": "requirements.txt", "pylock": "pylock.toml", "uv.lock": "uv.lock",
           "poetry.lock": "poetry.lock"}


@attrs.define
class Job:
    id: str
    planned: int = 0
    done: int = 0
    report: Report | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        state = "running" if self.report is None and self.error is None else "failed" if self.error else "done"
        out: dict[str, Any] = {"job": self.id, "status": state,
                               "progress": {"files_planned": self.planned, "files_done": self.done}}
        if self.error:
            out["error"] = self.error
        if self.report is not None:
            out.update(self.report.as_dict())
        return out


def _json(request: Any, code: int, body: Any) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    finish_bytes(request, json.dumps(body, indent=1).encode() + b"\n")


class PrefetchRoute(Resource):
    """Both ``/requirements.txt`` and ``/requirements/`` (one object: the jobs are shared)."""

    isLeaf = True

    def __init__(self, *, app: Any, accounts: Any, config: PrefetchConfig) -> None:
        super().__init__()
        self.app = app
        self.accounts = accounts
        self.config = config
        self.prefetcher = Prefetcher(mirror=app.mirror, downloader=app.downloader, storage=app.storage,
                                     reactor=app.reactor, policy=lambda: app.policy)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.running = 0

    # ------------------------------------------------------------------ GET
    def render_GET(self, request: Any) -> Any:
        return handle(request, lambda: self._get(request))

    render_HEAD = render_GET

    async def _get(self, request: Any) -> None:
        if request.prepath[-1:] == [b"requirements.txt"] and request.postpath in ([], [b""]):
            raise HTTPError(405, "POST a requirements or lock file here", {b"allow": b"POST"})
        post = request.postpath
        if request.prepath[-1:] != [b"requirements"] or len(post) != 2 or post[0] != b"jobs":
            raise HTTPError(404, "not found")
        await self._authorize(request)
        job = self.jobs.get(post[1].decode("ascii", "replace"))
        if job is None:
            raise HTTPError(404, "no such job (finished jobs are forgotten after a while)")
        _json(request, 200, job.as_dict())

    # ----------------------------------------------------------------- POST
    def render_POST(self, request: Any) -> Any:
        if request.prepath[-1:] != [b"requirements.txt"] or request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: POST to /requirements.txt\n"
        return handle(request, lambda: self._post(request))

    async def _authorize(self, request: Any) -> None:
        if self.config.open:
            return
        if await authenticate(self.accounts, request) is None:
            reason = ("pre-filling needs credentials (a user and password, or __token__ and a token)"
                      if request.getHeader(b"authorization") is None else "invalid credentials")
            raise HTTPError(401, reason, AUTH_CHALLENGE)

    async def _read(self, request: Any) -> tuple[str, dict[str, list[str]]]:
        """The file's text and the options (form fields, else the query)."""
        options = {k.decode("ascii", "replace"): [v.decode("utf-8", "replace") for v in vs]
                   for k, vs in (request.args or {}).items()}
        ctype = request.getHeader(b"content-type") or b""
        body, request.content = request.content, None
        app = self.app
        try:
            body.seek(0)
            if ctype.split(b";")[0].strip().lower() == b"multipart/form-data":
                form = await deferToThreadPool(app.reactor, app.threadpool, parse_upload, body, ctype,
                                               app.downloader.spool_dir, max_field_bytes=self.config.max_body,
                                               max_file_bytes=self.config.max_body,
                                               max_form_bytes=self.config.max_body)
                form.discard()
                options.update({k: list(v) for k, v in form.fields.items() if k != "requirements"})
                raw = form.extras.get("requirements")
                text = raw.decode("utf-8") if raw is not None else form.first("requirements")
                if text is None:
                    raise HTTPError(400, "the form has no 'requirements' field")
                return text, options
            return (await deferToThreadPool(app.reactor, app.threadpool, body.read)).decode("utf-8"), options
        except UploadError as e:
            raise HTTPError(e.status, e.reason) from None
        except UnicodeDecodeError:
            raise HTTPError(400, "the requirements are not UTF-8 text") from None
        finally:
            body.close()

    async def _post(self, request: Any) -> None:
        await self._authorize(request)
        text, options = await self._read(request)
        fmt = (options.get("format") or [None])[0]
        if fmt is not None and fmt not in FORMATS:
            raise HTTPError(400, f"format: expected one of {', '.join(FORMATS)}")
        fmt = fmt or detect_format(None, text)
        pythons, platforms = options.get("python", []), options.get("platform", [])
        if len(pythons) > MAX_TARGETS or len(platforms) > MAX_TARGETS:
            raise HTTPError(400, f"at most {MAX_TARGETS} python and {MAX_TARGETS} platform values")
        try:
            envs = environments(pythons or self.config.python, platforms or self.config.platforms)
        except InvalidEnvironment as e:
            raise HTTPError(400, str(e)) from None
        inputs = parse_any(text, label=_LABELS[fmt], fmt=fmt)
        if inputs.size > self.config.max_requirements:
            raise HTTPError(413, f"too many requirements: {inputs.size}, the limit is "
                                 f"{self.config.max_requirements}")
        if self.running >= MAX_RUNNING:
            raise HTTPError(503, f"{MAX_RUNNING} pre-fills are running: retry shortly", {b"retry-after": b"30"})
        if inputs.size > self.config.job_threshold:
            job = self._start_job(inputs, envs)
            location = f"/requirements/jobs/{job.id}"
            request.setHeader(b"location", location.encode())
            _json(request, 202, {**job.as_dict(), "status_url": location})
            return
        self.running += 1
        try:
            report = await self.prefetcher.run(inputs, envs)
        finally:
            self.running -= 1
        _json(request, 200, report.as_dict())

    def _start_job(self, inputs: Any, envs: Any) -> Job:
        job = Job(uuid.uuid4().hex)
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS:
            oldest = next((k for k, j in self.jobs.items() if j.report is not None or j.error), None)
            if oldest is None:
                break
            del self.jobs[oldest]
        self.running += 1

        def planned(files: list[Any]) -> None:
            job.planned = len(files)

        def one(result: Any) -> None:
            if result.filename is not None:
                job.done += 1

        async def run() -> None:
            try:
                job.report = await self.prefetcher.run(inputs, envs, on_plan=planned, on_file=one)
            except Exception as e:
                log.failure("pre-fill job {job} failed", job=job.id)
                job.error = f"{type(e).__name__}: {e}"
            finally:
                self.running -= 1

        defer.ensureDeferred(run())
        return job
