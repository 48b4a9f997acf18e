"""What the HTTP routes share: the pool and the settings, kept on the Quart app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from quart import current_app

from agent.pool import ModelPool, ResolvedVariant
from agent.settings import Settings

EXTENSION = "hflocal"


@dataclass(slots=True)
class HttpState:
    pool: ModelPool
    settings: Settings
    api_key: str | None
    port: int
    models_body: tuple[Sequence[ResolvedVariant], bytes] | None = field(default=None)
    """``GET /v1/models``'s last answer and the variants it was built from (rebuilt when they change)."""


def state() -> HttpState:
    """The state of the app handling the current request (routes and blueprints may use it)."""
    st: HttpState = current_app.extensions[EXTENSION]
    return st
