"""The connection layer of `caption serve`: what uvicorn does not bound by itself.

Round 3 of the adversarial review (S-31, S-32) held 110 connections open by sending one header line
every few seconds: uvicorn has no deadline for a request's headers (``--read-timeout`` guards the
body, which the app reads), and its ``limit_concurrency`` counts those connections, so every other
client got uvicorn's plain-text 503 for as long as the attacker trickled. Here:

- **A header deadline.** From the moment a connection opens (or its previous response is complete,
  for a kept-alive one), a request's headers must arrive in full within ``header_timeout`` seconds;
  otherwise the client gets a 408 in the service's JSON and the connection is closed. A trickler
  keeps a connection for at most that long, however it paces its bytes.
- **A connection cap, answered in the service's JSON.** uvicorn's own cap answers in plain text; a
  connection past ``max_connections`` gets ``503 {"error": ...}`` and is closed at once. With the
  header deadline and ``--read-timeout``, no connection holds a place for long, so the cap is set
  high (the process raises its open-file limit to fit it).

Workers and queue places are not this layer's: the app takes one only once an upload has arrived in
full (caption/serve.py), so a slow upload costs the client its connection and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import resource

from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_json(status: int, reason: str, message: str) -> bytes:
    body = (json.dumps({"error": message}) + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header deadline and a JSON-answered connection cap."""
    late = _raw_json(408, "Request Timeout", f"the request's headers did not arrive within {header_timeout:g} s")
    full = _raw_json(503, "Service Unavailable", f"busy: {max_connections} connections open; try again shortly")

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(full)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self._deadline = None
            # no request under way: none yet, or the last one answered and the next one's headers incomplete
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.write(late)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this kept-alive connection has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft limit of open files toward `wanted` (within the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
