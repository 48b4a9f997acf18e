"""The base of every hflocal wire message, and the constants both sides agree on.

``Message`` carries the configuration every message shares (frozen, keyword-only fields, defaults
encoded); the requests, results and events derive from it. The ``dataclass_transform`` marker tells
type checkers that subclasses are frozen too, so they do not repeat ``frozen=True``.
"""

from __future__ import annotations

from typing import Literal, dataclass_transform

import msgspec

PROTOCOL_VERSION = 1
"""Bumped only for incompatible changes; a request carrying another version is refused."""

MAX_REQUEST_BYTES = 1 << 20
"""Largest request payload the server decodes; bigger ones get a ``too_large`` error reply."""

Quantization = Literal["q4", "q8", "fp16", "fp32"]


@dataclass_transform(frozen_default=True, field_specifiers=(msgspec.field,))
class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of every wire struct."""


def tag_of(message_type: type[Message]) -> str:
    """The tag a tagged message type is sent with (a request's ``type``, an event's ``topic``)."""
    tag = message_type.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{message_type.__name__} has no string tag")
    return tag
