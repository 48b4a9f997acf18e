"""What the HTTP routes share, kept on the Quart app: the pool, the settings and, for the settings
page and ``/api``, the services the management blueprint acts through.

Every blueprint in ``agent.http`` is a module-level ``Blueprint``; its routes reach these through
``state()``, so one blueprint serves any number of apps (each test builds its own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from quart import current_app

from agent.feed import EventFeed
from agent.http.access import TokenSource
from agent.pool import ModelPool, ResolvedVariant
from agent.settings import Settings
from ipc.messages import Message, Request

EXTENSION = "hflocal"


@dataclass(slots=True)
class Management:
    """What the settings page and the management API act through (``agent.http.manage``)."""

    handle: Callable[[Request], Awaitable[Message]]
    """The handler layer behind ZeroMQ: one request in, its result (or an exception) out."""
    feed: EventFeed
    """The worker's events, relayed by ``/api/events``."""
    tokens: TokenSource
    """The token a request must present (the one in ``agent.json``)."""
    streams: set[object] = field(default_factory=set)
    """The ``/api/events`` streams open now."""


@dataclass(slots=True)
class HttpState:
    pool: ModelPool
    settings: Settings
    api_key: str | None
    port: int
    models_body: tuple[Sequence[ResolvedVariant], bytes] | None = field(default=None)
    """``GET /v1/models``'s last answer and the variants it was built from (rebuilt when they change)."""
    management: Management | None = None


def state() -> HttpState:
    """The state of the app handling the current request (routes and blueprints may use it)."""
    st: HttpState = current_app.extensions[EXTENSION]
    return st
