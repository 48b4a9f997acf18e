"""What the HTTP routes share: the pool and the settings, kept on the Quart app."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app

from agent.pool import ModelPool
from agent.settings import Settings

EXTENSION = "hflocal"


@dataclass(slots=True)
class HttpState:
    pool: ModelPool
    settings: Settings
    api_key: str | None
    port: int


def state() -> HttpState:
    """The state of the app handling the current request (routes and blueprints may use it)."""
    st: HttpState = current_app.extensions[EXTENSION]
    return st
