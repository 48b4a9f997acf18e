"""Errors the worker reports to users: each carries a protocol error ``code`` and a one-line message.

Handlers turn any ``AgentError`` into an ``Error{code, message}`` reply (or an OpenAI-shaped error
over HTTP) with ``exc.code`` and ``str(exc)``; ``exc.details`` holds machine-readable extras for
``Error.details``. The message is always one line, names what was asked for and, where the user can
act, says how. Subclasses also derive from the builtin that fits (``LookupError``, ``ConnectionError``,
``OSError`` ...) so generic code still catches them naturally; ``KeyError`` is avoided on purpose
because its ``str()`` adds quotes around the message.
"""

from __future__ import annotations

import errno
from typing import Any

from ipc.messages import ERROR_CODES


class AgentError(Exception):
    """Base of every user-facing error. ``code`` is one of ``ipc.messages.ERROR_CODES``."""

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        if code is not None:
            self.code = code
        if self.code not in ERROR_CODES:  # a programming error, caught by the tests
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = " ".join(str(message).split())  # one line, whatever was passed in
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.code, self.details))


def _rebuild(cls: type[AgentError], message: str, code: str, details: dict[str, Any]) -> AgentError:
    err = cls.__new__(cls)
    AgentError.__init__(err, message, code=code, details=details)
    return err


class BadRequestError(AgentError, ValueError):
    """A field of the request is invalid (bad model id, unknown quantization ...)."""

    code = "bad_request"


class NotFoundError(AgentError, LookupError):
    """No such installed variant, model or job."""

    code = "not_found"


class RepoNotFoundError(AgentError, LookupError):
    """The Hub has no such repository, or it is private and no valid token was sent."""

    code = "repo_not_found"

    def __init__(self, model_id: str, revision: str | None = None) -> None:
        rev = f" (revision {revision!r})" if revision and revision != "main" else ""
        super().__init__(
            f"{model_id}{rev} was not found on the Hub (if it is private, set HF_TOKEN)",
            details={"model_id": model_id, "revision": revision},
        )


class GatedRepoError(AgentError, PermissionError):
    """The repository is gated: the user must accept its terms on the Hub and set ``HF_TOKEN``."""

    code = "gated"

    def __init__(self, model_id: str, endpoint: str = "https://huggingface.co") -> None:
        super().__init__(
            f"{model_id} is gated: accept its terms at {endpoint.rstrip('/')}/{model_id} and set HF_TOKEN "
            "to a token of that account",
            details={"model_id": model_id},
        )


class NoOnnxError(AgentError, LookupError):
    """The repository has no ONNX weights hflocal knows how to run."""

    code = "no_onnx"

    def __init__(self, model_id: str, found: str = "") -> None:
        """``found``: what the repo has instead, when it is recognisable (``agent.variant_files.layout_problem``)."""
        what = f"{found}; " if found else ""
        super().__init__(
            f"{model_id} has no ONNX weights hflocal runs ({what}expected onnx/model_q4.onnx, "
            "onnx/model_q4f16.onnx, onnx/model_quantized.onnx, onnx/model_fp16.onnx or onnx/model.onnx); "
            "search for an onnx-community version",
            details={"model_id": model_id, "found": found},
        )


class QuantNotOfferedError(AgentError, LookupError):
    """The repository does not offer the requested quantization; ``details['offered']`` lists those it does."""

    code = "quant_not_offered"

    def __init__(self, model_id: str, quantization: str, offered: list[str]) -> None:
        super().__init__(
            f"{model_id} does not offer {quantization}; it offers {', '.join(offered) or 'nothing runnable'}",
            details={"model_id": model_id, "quantization": quantization, "offered": list(offered)},
        )


class NetworkError(AgentError, ConnectionError):
    """The Hub could not be reached after retries; the message names the endpoint."""

    code = "network"

    def __init__(self, endpoint: str, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(
            f"could not reach the Hub at {endpoint}{why} (check the network, HF_ENDPOINT and HTTPS_PROXY)",
            details={"endpoint": endpoint},
        )


class HubError(AgentError, RuntimeError):
    """The Hub answered with an error that is none of the specific ones above."""

    code = "hub_error"


class DiskFullError(AgentError, OSError):
    """Not enough free space where the cache lives; ``details`` has ``needed``/``free`` in bytes."""

    code = "disk_full"

    def __init__(self, where: str, needed: int | None = None, free: int | None = None) -> None:
        if needed is not None and free is not None:
            text = f"not enough disk space in {where}: {format_bytes(needed)} needed, {format_bytes(free)} free"
        else:
            text = f"the disk holding {where} is full"
        super().__init__(text, details={"path": where, "needed": needed, "free": free})
        self.errno = errno.ENOSPC


class IntegrityError(AgentError, ValueError):
    """A downloaded file did not match the checksum the Hub published; the bad file was removed."""

    code = "integrity"


class ConflictError(AgentError, RuntimeError):
    """The operation conflicts with the current state (e.g. deleting a variant that is downloading)."""

    code = "conflict"


class UnsupportedError(AgentError, ValueError):
    code = "unsupported"


class InternalError(AgentError, RuntimeError):
    code = "internal"


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``; used in user messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


__all__ = [
    "AgentError",
    "BadRequestError",
    "ConflictError",
    "DiskFullError",
    "GatedRepoError",
    "HubError",
    "IntegrityError",
    "InternalError",
    "NetworkError",
    "NoOnnxError",
    "NotFoundError",
    "QuantNotOfferedError",
    "RepoNotFoundError",
    "UnsupportedError",
    "format_bytes",
]
