"""ASGI middleware at the edge of the app: it counts every answer by route and status (streams
included, unlike Starlette's ``BaseHTTPMiddleware``), and answers 413 to a body over the limit
before a route reads it."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import error_response
from .metrics import Metrics

__all__ = ["Edge", "route_label"]


class Edge:
    def __init__(self, app: Any, limit: int, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app, self.limit, self.metrics, self.paths = app, limit, metrics, paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_label(self.paths, scope["path"])

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.response(path, message["status"])
            await send(message)
        too_large = f"the body is larger than {self.limit} bytes (--max-body-bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(413, too_large)(scope, receive, counted)
        seen = 0

        async def limited() -> Any:  # a body without Content-Length, counted as it arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # an HTTPException: FastAPI re-raises it as is while reading a body
                raise StarletteHTTPException(413, too_large)
            return message
        await self.app(scope, limited, counted)


def route_label(paths: frozenset[str], path: str) -> str:
    """A metrics label: ``path`` if it is one of the app's routes, else ``other`` (one series per route,
    not per URL).

    >>> route_label(frozenset({"/v1/classify"}), "/v1/classify"), route_label(frozenset(), "/x")
    ('/v1/classify', 'other')
    """
    return path if path in paths else "other"
