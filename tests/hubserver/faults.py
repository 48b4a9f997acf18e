"""Fault rules and byte accounting of the local test hub.

Both live in the server process and are driven over HTTP (``POST /_control``, ``GET /_stats``, see
``control.py``), so they work the same whether the server runs in a thread or in a subprocess.

A request is described by its *key*: for file downloads (``/{org}/{name}/resolve/{rev}/{path}``)
the key is ``"{org}/{name}/{path}"``; for everything else it is the URL path, e.g.
``"/api/models/org/name"``. Fault rules match keys with ``fnmatch`` globs (``*`` crosses ``/``).
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MAX_STALL_SECONDS = 60.0
MAX_LOG_ENTRIES = 10_000


@dataclass
class Fault:
    """One rule: the first rule (in insertion order) whose ``path`` and ``methods`` match a request
    applies to it, and uses up one of its ``times`` (``-1``: applies until cleared).

    Body faults (drop, rate limit, corrupt) only affect file downloads; ``fail_status`` and
    ``stall_seconds`` affect any request.
    """

    path: str = "*"
    methods: tuple[str, ...] = ("GET",)
    times: int = 1
    fail_status: int | None = None  # answer this status (JSON error body) instead of serving
    drop_after_bytes: int | None = None  # close the connection after this many body bytes
    stall_seconds: float = 0.0  # sleep before answering (bounded by MAX_STALL_SECONDS)
    rate_limit_bytes_per_s: int | None = None  # send the body no faster than this
    corrupt: bool = False  # serve wrong bytes of the right length (every byte inverted)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        fault = cls(**data)
        fault.methods = tuple(m.upper() for m in fault.methods)
        fault.stall_seconds = min(max(float(fault.stall_seconds), 0.0), MAX_STALL_SECONDS)
        if fault.rate_limit_bytes_per_s is not None and fault.rate_limit_bytes_per_s <= 0:
            raise ValueError("rate_limit_bytes_per_s must be positive")
        return fault

    def matches(self, method: str, key: str) -> bool:
        return self.times != 0 and method in self.methods and fnmatch.fnmatchcase(key, self.path)


@dataclass
class RequestRecord:
    """One line of the request log; ``bytes`` grows while a body is being sent."""

    method: str
    path: str  # URL path and query as received
    key: str
    range: str | None
    status: int
    bytes: int = 0
    fault: dict[str, Any] | None = None


@dataclass
class FaultBook:
    """Thread-safe rules and counters shared by all handler threads of one server."""

    faults: list[Fault] = field(default_factory=list)
    log: list[RequestRecord] = field(default_factory=list)
    bytes_by_file: dict[str, int] = field(default_factory=dict)
    bytes_by_repo: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def take(self, method: str, key: str) -> Fault | None:
        """The rule that applies to this request, with one use consumed; None if none matches."""
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, key):
                    if fault.times > 0:
                        fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def start(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self.log.append(record)
            del self.log[:-MAX_LOG_ENTRIES]
        return record

    def count(self, record: RequestRecord, repo_id: str, file_key: str, n: int) -> None:
        """Account ``n`` body bytes of a file that were handed to the socket."""
        with self._lock:
            record.bytes += n
            self.bytes_by_file[file_key] = self.bytes_by_file.get(file_key, 0) + n
            self.bytes_by_repo[repo_id] = self.bytes_by_repo.get(repo_id, 0) + n

    def reset_stats(self) -> None:
        with self._lock:
            self.log.clear()
            self.bytes_by_file.clear()
            self.bytes_by_repo.clear()

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_stats`` answers."""
        with self._lock:
            return {
                "bytes_total": sum(self.bytes_by_file.values()),
                "bytes_by_file": dict(self.bytes_by_file),
                "bytes_by_repo": dict(self.bytes_by_repo),
                "requests": [asdict(r) for r in self.log],
                "faults": [asdict(f) for f in self.faults],
            }
