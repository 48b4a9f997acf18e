"""``settings.toml``: validated with msgspec, reported precisely, never overwritten when unreadable.

A missing file means defaults. A file that does not parse, or a value that is not allowed, raises
``SettingsError`` whose message names the file, the key and what is allowed; the worker refuses to
start with it rather than guessing (and leaves the file exactly as it was).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from agent.variants import DEVICE_ALIASES, DEVICES, QUANTIZATIONS

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 9231
    allow_non_loopback: bool = False
    """Binding to a non-loopback host needs this and an ``api_key``."""
    api_key: str | None = None
    """If set, ``/v1`` requires ``Authorization: Bearer <api_key>`` (also ``HFLOCAL_API_KEY``)."""
    cors_origins: list[str] = msgspec.field(default_factory=list)
    max_body_bytes: Positive = 16 * 1024 * 1024


class ZmqSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    request: str = "tcp://127.0.0.1:9232"
    events: str = "tcp://127.0.0.1:9233"


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    default_quantization: str = "q4"
    default_device: str = "auto"
    max_loaded: Positive = 1
    keep_alive_s: NonNegativeFloat = 300.0
    """Loaded models other than the active one unload after this many idle seconds."""
    queue_size: Positive = 64
    """Requests waiting behind the running generation, per model; more get 503 + Retry-After."""
    load_wait_s: NonNegativeFloat = 120.0
    default_max_tokens: Positive = 2048
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """onnxruntime intra-op threads; 0 lets onnxruntime decide."""


class HubSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    default_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    """What the quickstart tries to download when the Hub is reachable."""
    resume_on_start: bool = True
    """Interrupted downloads continue when the worker starts again."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 4


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cache_dir: str | None = None
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    zmq: ZmqSettings = msgspec.field(default_factory=ZmqSettings)
    models: ModelSettings = msgspec.field(default_factory=ModelSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)


class SettingsError(ValueError):
    """The settings file cannot be used; the message names the file, the key and what is allowed."""


_ENDPOINT = re.compile(r"^(tcp://[^\s:]+:\d{1,5}|ipc://\S+)$")


def _check(settings: Settings, path: Path) -> Settings:
    def bad(key: str, value: object, allowed: str) -> SettingsError:
        return SettingsError(f"{path}: {key} = {value!r} is not allowed: {allowed}")

    q = settings.models.default_quantization
    if q not in QUANTIZATIONS:
        raise bad("models.default_quantization", q, "one of " + ", ".join(QUANTIZATIONS))
    d = settings.models.default_device
    if d not in DEVICES and d not in DEVICE_ALIASES:
        raise bad("models.default_device", d, "one of " + ", ".join(DEVICES))
    for key, value in (("zmq.request", settings.zmq.request), ("zmq.events", settings.zmq.events)):
        if not _ENDPOINT.match(value):
            raise bad(key, value, "a ZeroMQ endpoint such as tcp://127.0.0.1:9232 or ipc:///path")
    if settings.zmq.request == settings.zmq.events and not settings.zmq.request.endswith(":0"):  # :0 = any free port
        raise bad("zmq.events", settings.zmq.events, "an endpoint different from zmq.request")
    if settings.cache_dir:
        problem = cache_dir_problem(settings.cache_dir)
        if problem is not None:
            raise bad("cache_dir", settings.cache_dir, problem)
    return settings


_SYSTEM_TREES = ("/proc", "/sys", "/dev")


def cache_dir_problem(value: str) -> str | None:
    """Why ``value`` cannot hold the model cache (a file, a kernel tree, a folder that cannot be
    written), or ``None``. Checked when the settings are read, so the worker refuses to start with
    one line instead of failing on its first write."""
    try:
        path = Path(value).expanduser().resolve()
        if any(path == Path(t) or path.is_relative_to(t) for t in _SYSTEM_TREES):
            return "a folder on a disk, not under /proc, /sys or /dev"
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"a folder, and {existing} is a file" if existing == path else f"a folder, and {existing} is not one"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"a folder this user can write to ({existing} is not writable)"
    except (OSError, ValueError, RuntimeError) as exc:
        return f"a usable path ({exc})"
    return None


def load_settings(path: Path) -> Settings:
    """Read and validate ``path``; defaults if it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc}); fix or remove the file — it was left as it is") from None
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{path}: {_explain(exc)}") from None
    return _check(settings, path)


def _explain(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's ``Expected `int` >= 0, got `str` - at `$.http.port``` into key-first prose."""
    text = str(exc)
    match = re.search(r" - at `\$\.?([^`]*)`$", text)
    if match:
        key = match.group(1).replace("[", ".").replace("]", "")
        message = text[: match.start()]
        unknown = re.match(r"Object contains unknown field `([^`]*)`", message)
        if unknown:
            return f"{key + '.' if key else ''}{unknown.group(1)}: unknown setting (check the spelling)"
        return f"{key}: {message}"
    if text.startswith("Object contains unknown field"):
        return text.replace("Object contains unknown field", "unknown setting") + " (check the spelling)"
    return text
