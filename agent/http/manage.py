"""The settings page and the management API (``/api/...``): one more door onto ``agent.handlers``.

Every route decodes its input into the ZeroMQ request struct (``ipc.messages``), calls
``Management.handle`` (``agent.http.state``; the worker passes ``Runtime.handle``, the same handler
the ZeroMQ door calls) and answers with the result struct as
JSON, so the two doors cannot drift apart. What a client may rely on:

==========================================  ===================  =================================
route                                       request              answer
==========================================  ===================  =================================
``GET /api/status``                         ``Status``           ``StatusResult``
``GET /api/search?q=&limit=``               ``Search``           ``SearchResult``
``GET /api/models/{id}/files?revision=``    ``ModelFiles``       ``ModelFilesResult``
``GET /api/installed``                      ``ListInstalled``    ``InstalledResult``
``DELETE /api/installed/{key}``             ``Delete``           ``Deleted``
``GET /api/downloads``                      ``Status``           ``{"downloads": [DownloadInfo]}``
``POST /api/downloads`` (JSON ``Download``)  ``Download``         202 ``JobAccepted``
``DELETE /api/downloads/{job_id}``          ``CancelDownload``   ``Cancelled``
``POST /api/activate`` (JSON ``{key}``)     ``Activate``         202 ``JobAccepted``
``GET /api/hardware``                       ``Hardware``         ``HardwareInfo``
``GET /api/events?topics=a.,b.``            —                    SSE: one ``data:`` JSON event each
==========================================  ===================  =================================

- Errors are ``{"code", "message", "details"}`` with the protocol's codes and a matching HTTP status
  (``ERROR_STATUS``); access refusals use ``unauthorized`` (401) and ``forbidden`` (403).
- POST bodies must be ``application/json`` (an HTML form cannot send that without CORS).
- ``/api/events`` relays the worker's events (``Management.feed``) as they are published, each as the
  event struct's JSON (its ``topic`` field says which); ``{"topic": "resync"}`` means events were
  dropped because the client fell behind: re-read ``/api/status``. A comment line every
  ``KEEPALIVE_S``; the stream ends when the worker stops.
- ``GET /`` is the page; ``/assets/*`` its files. Access rules: ``agent.http.access``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, TypeVar

import msgspec
from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from agent.feed import Resync
from agent.http import access
from agent.http.body import read_body
from agent.http.replies import json_response
from agent.http.state import Management, state
from ipc.messages import (
    Activate,
    CancelDownload,
    Delete,
    Download,
    Hardware,
    ListInstalled,
    Message,
    ModelFiles,
    Request,
    Search,
    Status,
    StatusResult,
    topic_of,
)
from ipc.server import error_reply

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
MAX_EVENT_STREAMS = 32
"""Event streams open at once; more get 503 (each holds a bounded queue)."""

ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "protocol_mismatch": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "gated": 403,
    "not_found": 404,
    "repo_not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "no_onnx": 422,
    "quant_not_offered": 422,
    "unsupported": 422,
    "load_failed": 500,
    "internal": 500,
    "missing_extra": 501,
    "network": 502,
    "hub_error": 502,
    "integrity": 502,
    "busy": 503,
    "starting": 503,
    "disk_full": 507,
}
"""HTTP status of each error code (unknown codes: 500)."""

blueprint = Blueprint("manage", __name__)

NO_STORE = {"Cache-Control": "no-store"}
SECURITY_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE = resources.files("agent.http") / "page"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
S = TypeVar("S", bound=Request)


def services() -> Management:
    """What this app's page and ``/api`` act through (``create_app(..., management=...)``)."""
    management = state().management
    assert management is not None, "the management blueprint is registered only with its services"
    return management


def error_response(code: str, message: str, details: dict[str, Any] | None = None, *, status: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = {"code": code, "message": message, "details": details or {}}
    return json_response(body, status or ERROR_STATUS.get(code, 500), headers=headers)


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@blueprint.errorhandler(Exception)
async def _error(exc: Exception) -> Response:
    """Every failure of a route is an answer in this API's shape, never a traceback."""
    if isinstance(exc, _Refusal):
        return error_response(exc.code, exc.message)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = {400: "bad_request", 404: "not_found", 405: "bad_request", 413: "too_large"}.get(status, "internal")
        return error_response(code, exc.description or exc.name, status=status)
    error = error_reply(None, exc)  # the ZeroMQ door's mapping: AgentError codes, ValueError → bad_request
    return error_response(error.code, error.message, getattr(exc, "details", None))


def _has_body() -> bool:
    return request.content_length not in (None, 0) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _wants_html() -> bool:
    return not request.path.startswith("/api/")


def unauthorized_page(message: str) -> Response:
    body = (PAGE / "unauthorized.html").read_text("utf-8").replace("{{MESSAGE}}", _html_escape(message))
    return Response(body, status=401, content_type="text/html; charset=utf-8")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


HOW_TO_OPEN = "Open the settings page from the hflocal tray icon (Settings…) or run `hflocal open`."


@blueprint.before_request
async def _guard() -> Response | None:
    refusal = _refusal()
    if refusal is not None and _has_body():
        # The body stays unread: end the connection so that a client does not send its next
        # request into the remains of this one.
        refusal.headers["Connection"] = "close"
    return refusal


def _refusal() -> Response | None:
    """``agent.http.access`` applied to this request: ``None`` if it may go on, else the answer."""
    st = state()
    port, bound = st.port, st.settings.http.host
    host = request.headers.get("Host")
    if not access.host_allowed(host, port, bound):
        log.warning("refused %s %s: Host %r is not this agent", request.method, request.path, host)
        return error_response("forbidden", f"refused: Host {host!r} is not this agent's address "
                              f"(use http://127.0.0.1:{port}/)")
    origin = request.headers.get("Origin")
    if not access.origin_allowed(origin, port, bound) or access.from_another_site(
            request.method, request.headers.get("Sec-Fetch-Site"), api=request.path.startswith("/api/")):
        log.warning("refused %s %s from origin %r", request.method, request.path, origin)
        return error_response("forbidden", f"refused: requests from {origin or 'another site'} may not use "
                              "hflocal's management API")
    if request.path.startswith("/assets/"):
        return None  # the page's own code and style: public, like the package they come from
    expected = services().tokens.get()
    if expected is None:
        return error_response("starting", "the agent is starting; retry in a moment", headers={"Retry-After": "1"})
    if request.path == "/" and "token" in request.args:
        if access.token_matches(request.args.get("token"), expected):
            return Response("", status=303, headers={
                "Location": "/", "Set-Cookie": access.set_cookie_header(port, expected)})
        return unauthorized_page("This link's token is not valid (the agent has restarted since it was made).")
    presented = access.presented_tokens(request.headers.get("Authorization"), dict(request.cookies), port)
    if any(access.token_matches(t, expected) for t in presented):
        return None
    message = "wrong token" if presented else "no token"
    if _wants_html():
        return unauthorized_page(f"This page needs the agent's token ({message}).")
    return error_response("unauthorized", f"{message}: send the cookie set by the settings page or "
                          "'Authorization: Bearer <token from agent.json>'. " + HOW_TO_OPEN,
                          headers={"WWW-Authenticate": 'Bearer realm="hflocal"'})


@blueprint.after_request
async def _headers(response: Response) -> Response:
    """Security headers and ``Cache-Control: no-store`` on every answer (the assets say ``no-cache``)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _body(kind: type[S]) -> S:
    data = await read_body()  # read whatever came, so the connection stays usable
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json":
        raise _Refusal("unsupported_media_type", f"send the body as application/json (got {mimetype or 'none'})")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise _Refusal("bad_request", f"invalid {kind.__struct_config__.tag} request: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _Refusal("bad_request", f"the body is not valid JSON: {exc}") from None


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _Refusal("bad_request", f"{name} must be an integer, got {raw!r}") from None


async def call(req: Request) -> Message:
    return await services().handle(req)


@blueprint.get("/")
async def page() -> Response:
    api_key = "true" if state().api_key else "false"
    body = (PAGE / "index.html").read_text("utf-8").replace("{{API_KEY_REQUIRED}}", api_key)
    return Response(body, content_type="text/html; charset=utf-8")


@blueprint.get("/assets/<name>")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return error_response("not_found", f"no asset {name!r}")
    return Response((PAGE / name).read_bytes(), content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@blueprint.get("/api/status")
async def status() -> Response:
    return json_response(await call(Status()))


@blueprint.get("/api/search")
async def search() -> Response:
    query = request.args.get("q", "")
    kind = request.args.get("kind") or "chat"
    return json_response(await call(Search(query=query, limit=_int_arg("limit", 20), kind=kind)))


@blueprint.get("/api/models/<path:model_id>/files")
async def model_files(model_id: str) -> Response:
    revision = request.args.get("revision") or "main"
    return json_response(await call(ModelFiles(model_id=model_id, revision=revision)))


@blueprint.get("/api/installed")
async def installed() -> Response:
    return json_response(await call(ListInstalled()))


@blueprint.delete("/api/installed/<path:key>")
async def delete(key: str) -> Response:
    return json_response(await call(Delete(key=key)))


@blueprint.get("/api/downloads")
async def downloads() -> Response:
    result = await call(Status())
    assert isinstance(result, StatusResult)
    return json_response({"downloads": result.downloads})


@blueprint.post("/api/downloads")
async def start_download() -> Response:
    req = await _body(Download)
    return json_response(await call(msgspec.structs.replace(req, token="")), status=202)


@blueprint.delete("/api/downloads/<job_id>")
async def cancel_download(job_id: str) -> Response:
    return json_response(await call(CancelDownload(job_id=job_id)))


@blueprint.post("/api/activate")
async def activate() -> Response:
    req = await _body(Activate)
    return json_response(await call(msgspec.structs.replace(req, token="")), status=202)


@blueprint.get("/api/hardware")
async def hardware() -> Response:
    return json_response(await call(Hardware()))


@blueprint.get("/api/events")
async def events() -> Response:
    management = services()
    if len(management.streams) >= MAX_EVENT_STREAMS:
        return error_response("busy", f"too many event streams open (limit {MAX_EVENT_STREAMS})",
                              headers={"Retry-After": "5"})
    prefixes = tuple(p for p in request.args.get("topics", "").split(",") if p)
    response = Response(_event_stream(management, prefixes), content_type="text/event-stream",
                        headers={"X-Accel-Buffering": "no"})
    response.timeout = None
    return response


async def _event_stream(management: Management, prefixes: tuple[str, ...]) -> AsyncIterator[bytes]:
    marker = object()
    management.streams.add(marker)
    try:
        with management.feed.subscribe() as sub:
            yield b"retry: 3000\n: connected\n\n"
            while True:
                try:
                    item = await sub.get(timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                if isinstance(item, Resync):
                    yield b'data: {"topic":"resync"}\n\n'
                    continue
                if not prefixes or topic_of(item).startswith(prefixes):
                    yield b"data: " + msgspec.json.encode(item) + b"\n\n"
    finally:
        management.streams.discard(marker)


__all__ = ["ERROR_STATUS", "KEEPALIVE_S", "blueprint"]
