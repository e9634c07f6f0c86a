"""What Ray's HTTP proxy answers, in the server's one error shape, when a replica cannot.

Ray Serve's proxy (``layerdrop serve --replicas N``) answers some failures itself, in plain text: a request
whose replica died or failed before answering gets a bare "Internal Server Error", full queues a 503 with
Ray's own words. :class:`ReplicaLost`, installed in the proxy through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(:data:`PROXY_CALLBACK`), gives those the shape every other answer has, ``{"error": {"message", "type",
"code", "param"}}``, and ends a stream its replica left unfinished with an error event and ``[DONE]``, as the
server itself ends a stream it cannot finish.
This module imports no torch (its error shape is :mod:`.schemas`'): every proxy process loads it.
"""

from __future__ import annotations

from typing import Any

from .schemas import ErrorBody, ErrorDetail

__all__ = ["LOST", "LOST_MIDSTREAM", "PROXY_CALLBACK", "ReplicaLost", "proxy_middlewares"]

PROXY_CALLBACK = "layerdrop.serving.http.replica_lost:proxy_middlewares"
"""What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names, for Ray's proxy to install :class:`ReplicaLost`."""

LOST = ("the replica serving this request failed before it answered (if it stopped, Ray starts another); "
        "nothing was served: send the request again")
LOST_MIDSTREAM = ("the replica serving this stream failed before it finished (if it stopped, Ray starts another); "
                  "the text above is incomplete: send the request again")


def _error(status: int, kind: str, message: str) -> bytes:
    """The server's one error shape (:class:`~.schemas.ErrorBody`), as JSON bytes."""
    return ErrorBody(error=ErrorDetail(message=message, type=kind, code=status)).model_dump_json().encode()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name), None)


class ReplicaLost:
    """ASGI middleware of Ray's HTTP proxy. A request that got no answer (its replica failed: the proxy then
    returns without one, or raises): a 502 ``replica_lost``. Ray's own plain-text refusals (a 503 when the
    queues are full): the same status and words in the error shape. A stream that stopped before its end:
    an error event and ``[DONE]``. Answers the app gave pass unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = stream = finished = False
        held: dict | None = None  # a plain-text refusal of Ray's, waiting for its body
        held_body = b""

        async def tracked(message: dict) -> None:
            nonlocal started, stream, finished, held, held_body
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                kind = (_header(headers, b"content-type") or b"").split(b";")[0].strip()
                stream = kind == b"text/event-stream"
                if message["status"] >= 400 and kind != b"application/json":
                    held = message
                    return
            elif message["type"] == "http.response.body":
                finished = not message.get("more_body", False)
                if held is not None:
                    held_body += message.get("body", b"")
                    if finished:
                        status = held["status"]
                        text = held_body.decode(errors="replace").strip() or f"HTTP {status}"
                        headers = [(b"content-type", b"application/json")]
                        headers += [(b"retry-after", v) for v in [_header(held["headers"], b"retry-after")] if v]
                        await send({"type": "http.response.start", "status": status, "headers": headers})
                        await send({"type": "http.response.body",
                                    "body": _error(status, "unavailable" if status == 503 else "proxy_error",
                                                   f"Ray Serve: {text}")})
                    return
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started and not stream:
                raise
        if finished or (started and not stream):
            return
        if not started:
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": _error(502, "replica_lost", LOST)})
        else:
            event = _error(502, "replica_lost", LOST_MIDSTREAM).decode()
            await send({"type": "http.response.body", "body": f"data: {event}\n\ndata: [DONE]\n\n".encode()})


def proxy_middlewares() -> list:
    """Ray's proxy calls this (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) for the middlewares it wraps
    itself in: :class:`ReplicaLost`."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]
