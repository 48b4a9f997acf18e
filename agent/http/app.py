"""The Quart app (OpenAI API + health, open to the lead's management blueprints) and its server.

``create_app`` builds the app around a ``ModelPool``; ``serve_http`` runs it with Hypercorn inside
the caller's event loop (next to ZeroMQ) until ``shutdown_event`` is set, with no signal handlers of
its own. What a caller may rely on:

- ``GET /health`` answers at once, whatever the models are doing.
- Every error, including unknown routes (404), wrong methods (405) and bodies over
  ``http.max_body_bytes`` (413), is OpenAI-shaped JSON (``agent.http.errors``).
- With ``http.api_key`` (or ``HFLOCAL_API_KEY``) set, every ``/v1`` route needs
  ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Anthropic's header); ``/health`` is not
  guarded, and the management blueprint (``agent.http.manage``) has its own token.
- ``http.cors_origins`` (``"*"`` allowed) gets CORS headers on every route, preflights included.
- A ``/v1`` request that carries an ``Origin`` (a browser sends one with every cross-site request)
  is refused with 403 ``forbidden_origin`` before its body is read, whatever its method or
  ``Content-Type``, unless the origin is listed in ``http.cors_origins`` (or it lists ``"*"``) or
  is this agent's own page (``http://127.0.0.1:<port>``, ``http://localhost:<port>``). A web page
  cannot make the agent generate or load a model: a ``text/plain`` POST needs no preflight, so
  CORS alone would not stop it. Requests without ``Origin`` (curl, SDKs, CLIs) are unaffected.
- A request whose ``Host`` names another machine (DNS rebinding: ``Host: evil.example`` resolved to
  127.0.0.1) is refused with 403 on every route (the management blueprint applies its own, stricter
  check); loopback names and the bound address pass, and so does any name when the worker was
  explicitly bound to all interfaces (then the API key guards ``/v1``).
- ``GET /openapi.json`` is the OpenAPI document of all of it (``agent.http.openapi``).
- Connections, idle time and HTTP/2 streams per connection are bounded (``agent.http.listener``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from importlib import metadata

from hypercorn.config import Config
from quart import Quart, Response, request

from agent.http import anthropic_routes, embeddings_routes, listener, manage, openai_routes, responses_api_routes
from agent.http.access import bearer_token, is_loopback, origin_allowed, split_host, token_matches
from agent.http.body import finish_body
from agent.http.errors import ApiError, register_error_handlers
from agent.http.openapi import openapi_document
from agent.http.replies import json_response
from agent.http.state import EXTENSION, HttpState, Management, state
from agent.pool import ModelPool
from agent.settings import Settings

log = logging.getLogger(__name__)

try:
    VERSION = metadata.version("hflocal")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"


V1_BLUEPRINTS = (openai_routes.blueprint, anthropic_routes.blueprint, responses_api_routes.blueprint,
                 embeddings_routes.blueprint)
"""Mounted at ``/v1``. Every blueprint is a module-level ``Blueprint`` whose routes reach the app's
pool, settings and services through ``agent.http.state.state()``."""


def create_app(pool: ModelPool, settings: Settings, *, management: Management | None = None) -> Quart:
    """The HTTP app: ``/health``, ``/openapi.json``, ``/v1/*`` and, with ``management`` (what the
    page and ``/api`` act through), the settings page and the management API."""
    app = Quart("agent.http")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.http.max_body_bytes,
        BODY_TIMEOUT=60,
        RESPONSE_TIMEOUT=None,  # streaming answers set theirs off too; a long generation is no error
    )
    api_key = settings.http.api_key or os.environ.get("HFLOCAL_API_KEY") or None
    app.extensions[EXTENSION] = HttpState(pool=pool, settings=settings, api_key=api_key, port=settings.http.port,
                                          management=management)

    @app.get("/health")
    async def health() -> Response:
        st = state()
        status = st.pool.status()
        return json_response({
            "status": "ok",
            "model": status.active,
            "model_state": status.model_state,
            "port": st.port,
            "provider": status.provider,
            "fallback_reason": status.fallback_reason,
            "graph": status.graph,
            "graph_note": status.graph_note,
            "loaded": status.loaded,
            "loading": status.loading,
            "activating": status.activating,
            "error": status.error,
            "queue_depth": status.queue_depth,
            "version": VERSION,
        })

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_document(VERSION))

    app.url_map.merge_slashes = False  # ``/api/installed/%2Fetc%2Fpasswd`` is a key to refuse, not a 308 redirect
    app.before_request(_check_host)
    app.before_request(_check_origin)
    app.before_request(_check_api_key)
    for blueprint in V1_BLUEPRINTS:
        app.register_blueprint(blueprint, url_prefix="/v1")
    if management is not None:
        app.register_blueprint(manage.blueprint)
    app.after_request(_cors)
    app.after_request(finish_body)  # an early refusal must not cost the client its connection
    register_error_handlers(app)
    return app


async def _check_host() -> None:
    """Refuse a ``Host`` that names another machine (see the module docstring)."""
    if request.blueprint == "manage":
        return  # it checks Host, Origin and its token itself
    header = request.headers.get("Host")
    if not header:
        return  # HTTP/1.0 without Host: no browser sends that
    bound = state().settings.http.host
    if not (_host_allowed_cached(header, bound) if len(header) <= 255 else _host_allowed(header, bound)):
        raise ApiError(403, f"refused: Host {header[:100]!r} is not this agent's address (DNS rebinding protection)",
                       code="forbidden_host")


async def _check_origin() -> None:
    """Refuse a ``/v1`` request from a web page that is not allowed (see the module docstring)."""
    origin = request.headers.get("Origin")
    if origin is None or not request.path.startswith("/v1"):
        return
    st = state()
    if v1_origin_allowed(origin, st.settings.http.cors_origins, st.port, st.settings.http.host):
        return
    raise ApiError(403, f"refused: requests from the web page at {origin[:100]!r} may not use this API; add its "
                   "origin to http.cors_origins in settings.toml to allow it", code="forbidden_origin")


async def _check_api_key() -> None:
    """With an API key configured, refuse a ``/v1`` route without it (see the module docstring).
    Preflights pass: a browser sends them without credentials."""
    key = state().api_key
    rule = request.url_rule
    if key is None or request.method == "OPTIONS" or rule is None or not rule.rule.startswith("/v1/"):
        return
    given = bearer_token(request.headers.get("Authorization")) or request.headers.get("x-api-key", "").strip()
    if not token_matches(given, key):
        raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                       code="invalid_api_key")


def v1_origin_allowed(origin: str, allowed: Sequence[str], port: int, bound: str) -> bool:
    """Whether a browser request from ``origin`` may use ``/v1``: listed in ``allowed`` (compared
    without case or a trailing slash; ``"*"`` lets every origin in) or this agent's own page."""
    return _listed(origin, allowed) or origin_allowed(origin, port, bound)


def _listed(origin: str, allowed: Sequence[str]) -> bool:
    if "*" in allowed:
        return True
    wanted = origin.strip().rstrip("/").lower()
    return any(wanted == listed.strip().rstrip("/").lower() for listed in allowed)


def _host_allowed(header: str, bound: str) -> bool:
    """Whether ``Host: header`` names this agent, bound to ``bound``."""
    parsed = split_host(header)
    if parsed is None:
        return False
    name = parsed[0]
    if is_loopback(name) or name == bound:
        return True
    try:
        return ipaddress.ip_address(bound).is_unspecified
    except ValueError:
        return False


_host_allowed_cached = functools.lru_cache(maxsize=256)(_host_allowed)
"""Clients send the same ``Host`` on every request, and parsing it (``ipaddress``) was a visible
part of a ``/v1/models`` call under load; remembered for headers of ordinary length."""


async def _cors(response: Response) -> Response:
    origins = state().settings.http.cors_origins
    origin = request.headers.get("Origin")
    if not origin or not origins or not _listed(origin, origins):
        return response
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
    response.headers.add("Vary", "Origin")
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Authorization, Content-Type")
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _bind(host: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]:{port}" if is_v6 else f"{host}:{port}"


async def serve_http(
    app: Quart,
    host: str,
    port: int,
    shutdown_event: asyncio.Event,
    *,
    graceful_timeout: float = 5.0,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown_event`` is set, then stop accepting, give
    running requests ``graceful_timeout`` seconds and cancel the rest (their generations stop).

    Raises ``OSError`` at once if the address cannot be bound (port in use). Installs no signal
    handlers. ``/health`` reports ``port``. With ``sock`` (already bound and listening, as the worker
    does so that a busy port is reported before anything starts) ``host``/``port`` only label it.
    Connections, idle time and HTTP/2 streams are bounded (``agent.http.listener``).
    """
    app.extensions[EXTENSION].port = port
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hflocal.http")
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    listener.configure(config)
    if sock is not None:
        listening = sock.dup()  # closed with the server; the caller keeps its own
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family, backlog=config.backlog)
    log.info("HTTP API on http://%s/v1", _bind(host, port))
    await listener.serve_bounded(app, config, listening, shutdown_trigger=shutdown_event.wait,
                                 max_connections=listener.connection_limit())
