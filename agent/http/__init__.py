"""hflocal's HTTP side: the OpenAI-compatible API on Quart, served by Hypercorn.

``create_app(pool, settings, management=...)`` and ``serve_http(app, host, port, shutdown_event)``
live in ``app.py``. One blueprint style: each ``*_routes.py`` (and ``manage.py``, the settings page
and ``/api``) is a module-level ``Blueprint`` whose routes reach the app's pool, settings and
services through ``state.state()``; a blueprint with its own error shape registers its own
``errorhandler``. Every JSON answer goes through ``replies.json_response``; bearer tokens are parsed
by ``access.bearer_token``. Request Structs are in ``schemas.py``; answer bodies in
``responses.py``; OpenAI-shaped errors in ``errors.py``; SSE framing in ``sse.py``.
"""

from agent.http.app import create_app, serve_http
from agent.http.errors import ApiError

__all__ = ["ApiError", "create_app", "serve_http"]
