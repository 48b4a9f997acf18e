"""Who may use the settings page and the management API: the token, the Host and the Origin.

The page and ``/api`` act on the user's machine (downloads, deletes), so a request must pass three
checks, in this order (the OpenAI routes under ``/v1`` are not affected):

1. **Host** (DNS rebinding): the ``Host`` header names this agent — a loopback name or address
   (``localhost``, ``127.x.x.x``, ``[::1]``, or the IP the worker was told to bind) with the port it
   listens on. A web page whose DNS name was re-pointed at 127.0.0.1 sends its own name and is refused.
2. **Origin** (cross-site requests): a request that carries an ``Origin`` must come from this agent's
   own origin, whatever its method; an API call or a state-changing request that a browser marks as
   coming from another site (``Sec-Fetch-Site``) is refused too. Scripts send neither and pass.
3. **Token**: the token from ``agent.json``, as the ``hflocal_token_<port>`` cookie (HttpOnly,
   SameSite=Strict; the port is in the name because cookies ignore ports) or as
   ``Authorization: Bearer <token>``. ``GET /?token=<token>`` — the URL the tray and ``hflocal open``
   open — sets the cookie and redirects to ``/`` so the token leaves the address bar.

Tokens are compared with ``hmac.compare_digest``. The functions here are plain policy, testable
without a server; ``agent.http.manage`` applies them to every request of its blueprint, and
``agent.http.app`` reads the ``/v1`` API key with the same ``bearer_token`` and ``token_matches``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from ipc.connection import AgentNotRunning, read_connection
from ipc.loopback import is_loopback

COOKIE_PREFIX = "hflocal_token_"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_name(port: int) -> str:
    """The token cookie of the agent on ``port`` (two agents on one host keep separate cookies)."""
    return f"{COOKIE_PREFIX}{port}"


def set_cookie_header(port: int, token: str) -> str:
    """``Set-Cookie`` value for a token accepted from ``/?token=``: a session cookie, script-proof
    (HttpOnly) and never sent by requests that another site starts (SameSite=Strict)."""
    return f"{cookie_name(port)}={token}; Path=/; HttpOnly; SameSite=Strict"


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"127.0.0.1:9231"`` → ``("127.0.0.1", 9231)``, ``"[::1]:80"`` → ``("::1", 80)``,
    ``"localhost"`` → ``("localhost", None)``; ``None`` for anything malformed."""
    value = value.strip()
    if not value or any(c.isspace() or c in "/@?#\\" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
        if not rest:
            return name, None
        if not rest.startswith(":"):
            return None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:
        return None  # a bare IPv6 address must be bracketed in a Host header
    else:
        return value, None
    if not name or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        return None
    return name, int(port_text)


def host_allowed(host_header: str | None, port: int, bound_host: str = "127.0.0.1") -> bool:
    """True if ``Host`` names this agent: a loopback name/address, or the IP literal it was bound
    to (an explicit non-loopback setup), with ``port``. A missing port means 80."""
    if not host_header:
        return False
    parsed = split_host(host_header)
    if parsed is None:
        return False
    name, given_port = parsed
    if (given_port if given_port is not None else 80) != port:
        return False
    return is_loopback(name) or _same_ip(name, bound_host)


def _same_ip(name: str, bound_host: str) -> bool:
    try:
        address, bound = ipaddress.ip_address(name), ipaddress.ip_address(bound_host)
    except ValueError:
        return False
    return address == bound and not bound.is_unspecified


def origin_allowed(origin: str | None, port: int, bound_host: str = "127.0.0.1") -> bool:
    """True if there is no ``Origin`` (not a browser's cross-origin request) or it is this agent's
    own origin: ``http://`` + an allowed host + ``port``. ``null`` (sandboxed frames, file pages)
    is refused."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme != "http" or parts.path not in ("", "/") or parts.query or parts.fragment:
        return False
    if parts.username is not None or parts.password is not None:
        return False
    return host_allowed(parts.netloc, port, bound_host)


def from_another_site(method: str, fetch_site: str | None, *, api: bool) -> bool:
    """True if the browser says another site started this request (``Sec-Fetch-Site``) and it is
    an API call or a state-changing one. ``same-site`` counts: another port on localhost is the
    same "site". A link to the page from elsewhere is let through (it gets the sign-in page)."""
    other = (fetch_site or "").lower() in {"cross-site", "same-site"}
    return other and (api or method.upper() not in SAFE_METHODS)


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def presented_tokens(authorization: str | None, cookies: dict[str, str], port: int) -> Collection[str]:
    """Every token the request presents (header first); the request passes if any matches."""
    found = [t for t in (bearer_token(authorization), cookies.get(cookie_name(port))) if t]
    return found


class TokenSource:
    """The token this worker wrote to ``agent.json``, read once it exists and belongs to this process.

    The worker writes ``agent.json`` after its servers are up, so for a moment at start-up there is
    no token yet: ``get`` returns ``None`` then (the caller answers "starting, retry").
    """

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self._token: str | None = None

    def get(self) -> str | None:
        if self._token is None:
            try:
                info = read_connection(self.path, require_alive=False)
            except AgentNotRunning:
                return None
            if info.pid == self.pid and info.token:
                self._token = info.token
        return self._token


__all__ = [
    "TokenSource",
    "bearer_token",
    "cookie_name",
    "from_another_site",
    "host_allowed",
    "is_loopback",
    "origin_allowed",
    "presented_tokens",
    "set_cookie_header",
    "split_host",
    "token_matches",
]
