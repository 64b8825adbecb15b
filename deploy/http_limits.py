"""Bounds on a request's head (request line and headers), which the model server's app never sees.

An ASGI app is first called when a request's headers are complete, so neither ``serve.body_timeout_seconds``
nor any middleware can reach a client that sends one header line a second and never ends them (a
"slowloris"): today such a connection stays open, answered by nothing. uvicorn's own options do not cover
it either (``timeout_keep_alive`` is disarmed by the first byte of a request; httptools, its default
parser when installed, caps neither the time nor the size of a head). :func:`bounded_protocol` therefore
subclasses the HTTP protocol uvicorn would pick (httptools when installed, else h11) with:

- a deadline from the moment it waits for a request (the connection opened, or the next request's first
  byte on a keep-alive connection) until that request's headers are complete: past it the client gets
  ``408`` (nothing, if it never sent a byte) and the connection is closed;
- a cap on the bytes of a head still incomplete: past it, ``431`` and the connection is closed.

A refusal closes gently ("lingering close", as Apache and nginx do): the answer is written, the write side
is shut (FIN), and what the client still sends is read and dropped for up to :data:`LINGER_S` or until it
closes. Closing at once with unread input would make the kernel answer with a reset, which a client may
see instead of the 408/431 (it did: ``ConnectionResetError`` after a header line crossed the deadline).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("weakflow.serve")

LINGER_S = 2.0  # how long a refused connection's further input is read and dropped before it is closed


def _answer(status: int, phrase: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (the parser's state no longer matters)."""
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class HeadLimits:
    """Mixin over a uvicorn HTTP/1.1 protocol (``H11Protocol`` or ``HttpToolsProtocol``); both create a
    new ``self.cycle`` when a request's headers are complete, which is how the end of a head is seen."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0  # bytes received while waiting for the current head
    _tail: bytes = b""  # the head's last 3 bytes so far: its blank line may span two reads
    _refused: bool = False  # answered with a refusal: input is dropped until the connection closes

    # uvicorn's protocol interface -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: the parser's state no longer matters
        cycle = self.cycle  # type: ignore[attr-defined]
        if self._head_timer is None and (cycle is None or cycle.response_complete):
            self._arm_head()  # the first byte of the next request on a keep-alive connection
        waiting = self._head_timer is not None
        if waiting:
            if self._head_over_limit(data):  # decided before the parser, which has caps of its own (h11: 400)
                self._refuse(431, "Request Header Fields Too Large",
                             f"request headers exceed {self.max_header_bytes} bytes (serve.max_header_bytes)")
                return
        super().data_received(data)  # type: ignore[misc]
        if waiting and (self.cycle is not cycle or self.transport.is_closing()):  # type: ignore[attr-defined]
            self._disarm_head()  # the head is complete (or the parser refused it and closed)

    def _head_over_limit(self, data: bytes) -> bool:
        """Whether the head being received, with ``data``, is longer than ``max_header_bytes``: measured to
        its blank line when ``data`` holds it (a body or a pipelined request after it does not count)."""
        seen = self._tail + data
        end = seen.find(b"\r\n\r\n")
        before = self._head_bytes - len(self._tail)  # head bytes received before ``seen`` starts
        self._head_bytes += len(data)
        self._tail = seen[-3:]
        return (self._head_bytes if end < 0 else before + end + 4) > self.max_header_bytes

    # the head's deadline ----------------------------------------------------------------------------
    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_bytes, self._tail = 0, b""
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)  # type: ignore[attr-defined]

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes:
            self._refuse(408, "Request Timeout", f"request headers not complete within {self.header_timeout_s:g} s "
                                                 f"(serve.header_timeout_seconds): got {self._head_bytes} bytes")
        else:  # a connection that never sent a byte: nothing to answer
            self.transport.close()  # type: ignore[attr-defined]

    def _refuse(self, status: int, phrase: str, detail: str) -> None:
        self._disarm_head()
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        log.info("closing a connection from %s: %s", getattr(self, "client", None), detail)
        self._refused = True
        transport.write(_answer(status, phrase, detail))
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the answer, then EOF; its own EOF closes the transport
            self.loop.call_later(LINGER_S, transport.close)  # type: ignore[attr-defined]
        else:
            transport.close()


def bounded_protocol(header_timeout_s: float, max_header_bytes: int, base: Any = None) -> type:
    """The protocol class to pass as ``uvicorn.run(..., http=...)``: ``base`` (default: what uvicorn's
    ``http="auto"`` picks) with :class:`HeadLimits` set to these bounds."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base
    return type(f"HeadLimited{base.__name__}", (HeadLimits, base),
                {"header_timeout_s": float(header_timeout_s), "max_header_bytes": int(max_header_bytes)})
