"""Errors over HTTP, always in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Routes raise ``ApiError`` (or let a pool/engine error propagate); the handlers registered by
``register_error_handlers`` turn everything — Quart's own 404/405/413, malformed requests, pool and
engine errors, and unexpected exceptions — into that JSON with the right status. A client never
sees an HTML page or a traceback; unexpected errors are logged with theirs.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from agent.engine.types import ContextLengthExceeded, EngineError, TemplateError
from agent.http.replies import json_response
from agent.pool import (
    LoadTimeoutError,
    ModelKindError,
    ModelLoadFailedError,
    ModelUnavailableError,
    PoolClosedError,
    PoolError,
    QueueFullError,
    UnknownModelError,
)

log = logging.getLogger(__name__)

INVALID = "invalid_request_error"
SERVER = "server_error"


class ApiError(Exception):
    """An error answer: HTTP ``status`` plus OpenAI's four error fields and optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or (SERVER if status >= 500 else INVALID)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return json_response(self.payload(), self.status, headers=self.headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the offending parameter."""
    return ApiError(400, message, param=param, code=code)


def from_exception(exc: BaseException) -> ApiError:
    """Map any exception a route may meet to the answer a client should get."""
    match exc:
        case ApiError():
            return exc
        case UnknownModelError():
            return ApiError(404, exc.message, param="model", code="model_not_found")
        case QueueFullError() | LoadTimeoutError():
            return ApiError(503, exc.message, code=exc.code, headers={"Retry-After": str(exc.retry_after)})
        case ModelUnavailableError() | PoolClosedError():
            return ApiError(503, exc.message, code=exc.code)
        case ModelKindError():
            return ApiError(400, exc.message, param="model", code=exc.code)
        case ModelLoadFailedError():
            return ApiError(500, exc.message, code=exc.code)
        case PoolError():
            return ApiError(500, exc.message, code=exc.code)
        case ContextLengthExceeded():
            return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
        case TemplateError():
            return ApiError(400, f"The model's chat template cannot render these messages: {exc}",
                            param="messages", code="invalid_template")
        case EngineError() if exc.code == "invalid_request":
            return ApiError(400, str(exc), code="invalid_request")
        case EngineError():
            log.error("engine error: %s", exc)
            return ApiError(500, f"The model failed: {exc}", code=exc.code)
        case HTTPException():
            return _from_http_exception(exc)
    log.error("unexpected error answering %s %s", _method(), _path(), exc_info=exc)
    return ApiError(500, "Internal error in hflocal (the agent's log has the details)", code="internal")


def _method() -> str:
    try:
        return request.method
    except RuntimeError:
        return "?"


def _path() -> str:
    try:
        return request.path
    except RuntimeError:
        return "?"


def _from_http_exception(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    if status == 404:
        return ApiError(404, f"Invalid URL ({_method()} {_path()})", code="not_found")
    if status == 405:
        allowed = headers.get("Allow", "")
        return ApiError(405, f"Method {_method()} is not allowed for {_path()} (allowed: {allowed})",
                        code="method_not_allowed", headers=headers)
    if status == 413:
        limit = _max_body()
        return ApiError(413, f"Request body too large: the limit is {limit} bytes", code="request_too_large")
    if status == 408:
        return ApiError(408, "Timed out reading the request body", code="timeout")
    return ApiError(status, exc.description or exc.name, code=exc.name.lower().replace(" ", "_"), headers=headers)


def _max_body() -> int | str:
    from quart import current_app

    try:
        return int(current_app.config["MAX_CONTENT_LENGTH"])
    except (RuntimeError, KeyError, TypeError):
        return "?"


def register_error_handlers(app: Quart) -> None:
    """Install the handlers that make every error OpenAI-shaped; under ``/api/`` (a path no route
    matched, such as ``/api/installed//etc/passwd``) in the management API's shape instead,
    ``{"code", "message", "details"}``."""

    async def handle(exc: Exception) -> Response:
        error = from_exception(exc)
        if _path().startswith("/api/"):
            body = {"code": error.code or "error", "message": error.message, "details": {}}
            return json_response(body, error.status, headers=error.headers)
        return error.response()

    app.register_error_handler(Exception, handle)
    app.register_error_handler(HTTPException, handle)
