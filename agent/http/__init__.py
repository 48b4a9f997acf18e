"""hflocal's HTTP side: the OpenAI-compatible API on Quart, served by Hypercorn.

``create_app(pool, settings, extra_blueprints=...)`` and ``serve_http(app, host, port, shutdown_event)``
live in ``app.py``; routes in ``openai_routes.py``; request Structs in ``schemas.py``; answer bodies
in ``responses.py``; OpenAI-shaped errors in ``errors.py``; SSE framing in ``sse.py``.
"""

from agent.http.app import create_app, serve_http
from agent.http.errors import ApiError

__all__ = ["ApiError", "create_app", "serve_http"]
