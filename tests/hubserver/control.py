"""Test-side handle on a running hub's faults and counters, over HTTP.

It talks to ``POST /_control`` and ``GET /_stats``, so it works the same for a ``HubServer`` in a
thread and for ``python -m tests.hubserver`` in a subprocess. Wire format:

``POST /_control`` with a JSON object, answered ``{"ok": true}`` (or 400 ``{"error": ...}``):

* ``{"op": "add_fault", "fault": {"path": "org/name/*.onnx", "drop_after_bytes": 1000, ...}}``
  (fields of ``faults.Fault``)
* ``{"op": "clear_faults"}``, ``{"op": "reset_stats"}``, ``{"op": "reset"}`` (both)
* ``{"op": "set_tokens", "tokens": ["tok", ...]}`` (bearer tokens accepted for gated repos)

``GET /_stats`` → ``{"bytes_total", "bytes_by_file": {"org/name/path": n}, "bytes_by_repo":
{"org/name": n}, "requests": [{"method", "path", "key", "range", "status", "bytes", "fault"}],
"faults": [...]}``. Byte counts are file-body bytes handed to the socket (JSON bodies are not
counted), updated while a transfer runs.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from typing import Any


class HubControl:
    """Set faults and read byte accounting of the hub at ``url`` (stdlib only, no proxies)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        # The hub is always local: never route through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with self._opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def add_fault(
        self,
        path: str = "*",
        *,
        methods: Iterable[str] = ("GET",),
        times: int = 1,
        fail_status: int | None = None,
        drop_after_bytes: int | None = None,
        stall_seconds: float = 0.0,
        rate_limit_bytes_per_s: int | None = None,
        corrupt: bool = False,
    ) -> None:
        """Apply a fault to the next ``times`` requests (``-1``: until cleared) whose key matches
        the glob ``path`` (``"org/name/file"`` for downloads, the URL path otherwise).

        ``drop_after_bytes`` counts body bytes of that response (not the file offset).
        """
        fault = {
            "path": path,
            "methods": list(methods),
            "times": times,
            "fail_status": fail_status,
            "drop_after_bytes": drop_after_bytes,
            "stall_seconds": stall_seconds,
            "rate_limit_bytes_per_s": rate_limit_bytes_per_s,
            "corrupt": corrupt,
        }
        self._call("POST", "/_control", {"op": "add_fault", "fault": fault})

    def clear_faults(self) -> None:
        self._call("POST", "/_control", {"op": "clear_faults"})

    def reset_stats(self) -> None:
        self._call("POST", "/_control", {"op": "reset_stats"})

    def reset(self) -> None:
        """Clear faults and counters: a clean slate between test phases."""
        self._call("POST", "/_control", {"op": "reset"})

    def set_tokens(self, tokens: Iterable[str]) -> None:
        self._call("POST", "/_control", {"op": "set_tokens", "tokens": list(tokens)})

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_stats"))

    def bytes_served(self, key: str) -> int:
        """Body bytes served so far for ``"org/name"`` (a repo) or ``"org/name/path"`` (a file)."""
        stats = self.stats()
        return int(stats["bytes_by_file"].get(key, stats["bytes_by_repo"].get(key, 0)))

    def requests(self, method: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """The request log, optionally only one method and/or one key."""
        return [
            r
            for r in self.stats()["requests"]
            if (method is None or r["method"] == method) and (key is None or r["key"] == key)
        ]
