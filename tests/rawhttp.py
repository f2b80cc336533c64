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

import attrs


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
