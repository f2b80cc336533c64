"""Raw-socket HTTP for tests that send what no client library would.

A *verdict* is what a client can observe of a server's handling of some bytes:
the status codes of the answers, in order, and whether the server closed the
connection afterwards.  Two routes that agree on the verdict for every odd
request treat them the same way as far as request smuggling is concerned (the
count of answers is the count of requests the server saw).

:func:`h11_requests` says how many requests h11, a strict independent parser,
finds in the same bytes: an HTTP server must never answer more.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import attrs
from twisted.internet.threads import deferToThread


@attrs.frozen
class Verdict:
    statuses: tuple[int, ...]
    closed: bool
    #: The Server header of each answer (not compared: it tells which route answered).
    servers: tuple[bytes, ...] = attrs.field(default=(), eq=False)

    @property
    def final(self) -> tuple[int, ...]:
        """The final answers (no 100 Continue): one per request the server saw."""
        return tuple(s for s in self.statuses if s >= 200)


def parse_answers(raw: bytes) -> list[tuple[int, bytes]]:
    """Status code and Server header of each (GET) answer in ``raw``: bodies by Content-Length,
    chunked, or up to the end for an answer with neither."""
    statuses = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete answer: {raw[:200]!r}")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        statuses.append((status, headers.get(b"server", b"")))
        if status in (204, 304) or 100 <= status < 200:
            raw = rest
        elif b"content-length" in headers:
            raw = rest[int(headers[b"content-length"]):]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                rest = rest[size + 2:]
                if size == 0:
                    break
            raw = rest
        else:
            raw = b""
    return statuses


def verdict(port: int, payload: bytes, *, first_byte: float = 5.0, idle: float = 0.75) -> Verdict:
    """Send ``payload`` and watch: the connection counts as kept open when
    nothing more arrives for ``idle`` seconds after the last byte (or for
    ``first_byte`` seconds when nothing arrives at all).  Blocking: run it in
    a thread (``deferToThread``) while the server runs on the reactor."""
    chunks: list[bytes] = []
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=first_byte) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up early; what it answered is still readable
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s.settimeout(idle if chunks else first_byte)
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            chunks.append(data)
    answers = parse_answers(b"".join(chunks))
    return Verdict(tuple(a[0] for a in answers), closed, tuple(a[1] for a in answers))


def h11_requests(payload: bytes) -> tuple[int, bool]:
    """How many requests h11 finds in ``payload`` (each answered with an empty
    200 so that it reads on), and whether it then rejected the bytes."""
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(payload)
    conn.receive_data(b"")  # the client is done sending
    count = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return count, True
        if isinstance(event, h11.Request):
            count += 1
        elif isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return count, False
        elif event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            # NEED_DATA after EOF means h11 would reject a truncated request:
            # it is not one more request either way.
            return count, event is h11.NEED_DATA and conn.their_state is not h11.IDLE


# ------------------------------------------------- one request, byte-exact


@attrs.define
class RawResponse:
    """What a byte-level client saw: nothing normalised away."""

    status: int | None
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: True only when the body ended as its framing says it must
    #: (Content-Length reached, or the final chunk of a chunked body).
    complete: bool
    error: str | None
    raw: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        values = [v for k, v in self.headers if k.lower() == wanted]
        return values[-1].decode("latin-1") if values else None

    def header_names(self) -> list[bytes]:
        return [k.lower() for k, _ in self.headers]

    @property
    def announced(self) -> int | None:
        value = self.header("content-length")
        return int(value) if value is not None else None


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            return bytes(out), True
        chunk = data[end + 2 : end + 2 + size]
        out += chunk
        if len(chunk) < size:
            return bytes(out), False
        pos = end + 2 + size + 2


def parse_raw(raw: bytes, *, head: bool = False, error: str | None = None) -> RawResponse:
    sep = raw.find(b"\r\n\r\n")
    if sep < 0:
        return RawResponse(None, b"", [], b"", False, error or "no complete head", raw)
    lines = raw[:sep].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    rest = raw[sep + 4 :]
    response = RawResponse(status, parts[2] if len(parts) > 2 else b"", headers, rest, False, error, raw)
    if head or status in (204, 304):
        response.complete = True
        return response
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body, response.complete = _dechunk(rest)
    elif response.announced is not None:
        response.body = rest[: response.announced]
        response.complete = len(rest) >= response.announced
    else:
        response.complete = error is None
    return response


def _exchange(port: int, data: bytes, timeout: float, rcvbuf: int | None) -> tuple[bytes, str | None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    error = None
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        while True:
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        error = "reset"
    except socket.timeout:
        error = "timeout"
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    return b"".join(chunks), error


async def raw_request(server: Any, method: str, path: str | bytes, *, headers: dict[str, str] | None = None,
                      body: bytes = b"", timeout: float = 10.0, rcvbuf: int | None = None,
                      raw: bytes | None = None) -> RawResponse:
    """One HTTP/1.1 request on a fresh socket (in a thread, so the in-process
    server keeps running), path bytes sent exactly as given."""
    port = server.port.getHost().port
    if raw is None:
        target = path if isinstance(path, bytes) else path.encode("latin-1")
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode("latin-1"))
        if body:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    data, error = await deferToThread(_exchange, port, raw, timeout, rcvbuf)
    return parse_raw(data, head=method == "HEAD", error=error)
