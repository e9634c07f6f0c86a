"""One error shape for every 4xx and 5xx answer, ``{"error": {"message", "type", "code", "param"}}``,
and the handlers that give every failure that shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorBody, ErrorDetail

__all__ = ["TYPES", "ServeError", "error_body", "error_response", "install_error_handlers"]

TYPES = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
         422: "invalid_value", 503: "unavailable", 500: "internal_error"}
"""The ``type`` of each status."""


class ServeError(Exception):
    """An answer with :class:`~layerdrop.serving.http.schemas.ErrorBody`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.retry_after = status, message, param, retry_after


def error_body(status: int, message: str, param: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, type=TYPES.get(status, "error"), code=status, param=param))


def error_response(status: int, message: str, param: str | None = None, retry_after: int | None = None
                   ) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(status, message, param).model_dump(), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, not_found_hint: str, on_internal: object = None) -> None:
    """Give ``app``'s errors the one shape: ours, invalid bodies (400 or 422 naming the field), unknown
    routes (404 with ``not_found_hint``), and anything else (500, its type and message; ``on_internal``
    is called with the request first, to count it)."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        return error_response(err.status, err.message, err.param, err.retry_after)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {first.get('msg', '')}")
        if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
            return error_response(400, "the body must be a JSON object, sent with Content-Type: application/json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")  # a validator's own words
        return error_response(422, f"{where or 'body'}: {message}", where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            return error_response(404, f"no route {request.url.path[:200]}: {not_found_hint}")
        response = error_response(err.status_code, str(err.detail))
        response.headers.update(err.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        if callable(on_internal):
            on_internal(request)
        return error_response(500, f"internal error: {type(err).__name__}: {err}")
