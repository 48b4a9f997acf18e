"""An HTTP server that speaks enough of the Hugging Face Hub for the official client.

Routes (everything the huggingface_hub 0.36 download and listing paths call):

* ``GET /api/models`` — listing, paginated by ``Link: <next>; rel="next"`` (see ``api.list_models``)
* ``GET /api/models/{org}/{name}[/revision/{rev}]`` — model info, ``?blobs=true`` adds sizes/LFS
* ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]`` — file tree, ``?recursive=true``
* ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}`` — file contents with Hub headers and ``Range``
* ``GET /_stats`` and ``POST /_control`` — test hooks, see ``control.py``

Errors carry ``X-Error-Code``/``X-Error-Message`` exactly where ``hf_raise_for_status`` looks for
them, so the client raises ``RepositoryNotFoundError``, ``RevisionNotFoundError``,
``EntryNotFoundError`` and ``GatedRepoError`` as it would against huggingface.co.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import traceback
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit

from . import api
from .control import HubControl
from .faults import Fault, FaultBook, RequestRecord
from .storage import FileEntry, HubRepos, Repo

DEFAULT_TOKEN = "hf_hubserver_test_token"
_INVERT = bytes(255 - i for i in range(256))
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


class HubError(Exception):
    """An error answer: status, ``X-Error-Code`` (may be None) and message."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _HubHTTPServer(ThreadingHTTPServer):
    """Tracks open connections so that ``stop()`` can end keep-alive ones and join every thread."""

    daemon_threads = True
    block_on_close = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.stopping.is_set() and not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HubHTTPServer
    _headers_sent = False

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # ---- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        segments = url.path.strip("/").split("/")
        record = RequestRecord(method, self.path, url.path, self.headers.get("Range"), 0)
        self._headers_sent = False
        try:
            if url.path == "/_stats" and method == "GET":
                return self._send_json(200, hub.book.snapshot())
            if url.path == "/_control" and method == "POST":
                return self._send_json(200, self._control())
            resolve = len(segments) >= 5 and segments[2] == "resolve"
            if resolve:
                record.key = "/".join(unquote(s) for s in segments[:2] + segments[4:])
            fault = hub.book.take(method, record.key)
            record.fault = None if fault is None else {k: v for k, v in vars(fault).items() if v}
            hub.book.start(record)
            if fault is not None and fault.stall_seconds and self.server.stopping.wait(fault.stall_seconds):
                raise ConnectionAbortedError("server stopping")
            if fault is not None and fault.fail_status:
                raise HubError(fault.fail_status, None, f"injected failure {fault.fail_status}")
            self._check_token()
            if resolve and method in ("GET", "HEAD"):
                return self._resolve(method, segments, record, fault)
            if method == "GET" and segments[:2] == ["api", "models"]:
                return self._api_models(segments[2:], query, record)
            raise HubError(404, None, "Not Found")
        except HubError as err:
            record.status = err.status
            self._send_json(err.status, {"error": err.message}, _error_headers(err))
        except ValueError as err:
            record.status = 400
            self._send_json(400, {"error": str(err)}, {"X-Error-Message": str(err)})
        except ConnectionError:
            self.close_connection = True
        except Exception:  # a bug here: answer 500 rather than leave the client hanging
            self.close_connection = True
            traceback.print_exc()
            if not self._headers_sent:
                self._send_json(500, {"error": "internal error in test hub"})

    def _control(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        op, hub = body.get("op"), self.server.hub
        if op == "add_fault":
            hub.book.add(Fault.from_json(body.get("fault", {})))
        elif op == "clear_faults":
            hub.book.clear()
        elif op == "reset_stats":
            hub.book.reset_stats()
        elif op == "reset":
            hub.book.clear()
            hub.book.reset_stats()
        elif op == "set_tokens":
            hub.tokens = frozenset(body["tokens"])
        else:
            raise ValueError(f"unknown control op {op!r}")
        return {"ok": True}

    # ---- auth and lookups -------------------------------------------------------------------

    def _bearer(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _check_token(self) -> None:
        """A token that is sent but unknown is refused everywhere, as huggingface.co does."""
        token = self._bearer()
        if token is not None and token not in self.server.hub.tokens:
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, org: str, name: str) -> Repo:
        repo = self.server.hub.repos.get(f"{unquote(org)}/{unquote(name)}")
        if repo is None:
            # Like the Hub: 401 to anonymous callers (it will not confirm a private repo exists).
            status = 404 if self._bearer() else 401
            raise HubError(status, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Any:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
        return commit

    # ---- /api/models ------------------------------------------------------------------------

    def _api_models(self, rest: list[str], query: dict[str, list[str]], record: RequestRecord) -> None:
        hub = self.server.hub
        if rest in ([], [""]):
            items = api.list_models(hub.repos.all(), query)
            record.status = 200
            return self._send_page(items, hub.page_size, query)
        if len(rest) < 2:
            raise HubError(404, None, "Not Found")
        repo = self._repo(rest[0], rest[1])
        if len(rest) == 2 or (len(rest) == 4 and rest[2] == "revision"):
            commit = self._commit(repo, rest[3] if len(rest) == 4 else "main")
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            record.status = 200
            return self._send_json(200, api.model_info(repo, commit, blobs=blobs))
        if len(rest) >= 4 and rest[2] == "tree":
            commit = self._commit(repo, rest[3])
            path = unquote("/".join(rest[4:]))
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = api.tree(commit, path, recursive=recursive)
            if entries is None:
                raise HubError(404, "EntryNotFound", f'{path} does not exist on "{unquote(rest[3])}"')
            record.status = 200
            return self._send_page(entries, hub.tree_page_size, query)
        raise HubError(404, None, "Not Found")

    def _send_page(self, items: list[dict[str, Any]], cap: int, query: dict[str, list[str]]) -> None:
        """One page of ``items``; a ``Link`` header names the next page with every parameter kept."""
        limit = int(query["limit"][0]) if query.get("limit", [""])[0] else cap
        size = max(1, min(limit, cap))
        start = int(query.get("cursor", ["0"])[0] or 0)
        headers = {}
        if start + size < len(items):
            url = urlsplit(self.path)
            params = [(k, v) for k, v in parse_qsl(url.query, keep_blank_values=True) if k != "cursor"]
            params.append(("cursor", str(start + size)))
            host = self.headers.get("Host") or f"{self.server.hub.host}:{self.server.hub.port}"
            headers["Link"] = f'<http://{host}{url.path}?{urlencode(params)}>; rel="next"'
        self._send_json(200, items[start : start + size], headers)

    # ---- /{org}/{name}/resolve/{rev}/{path} -------------------------------------------------

    def _resolve(self, method: str, segments: list[str], record: RequestRecord, fault: Fault | None) -> None:
        hub = self.server.hub
        repo = self._repo(segments[0], segments[1])
        if repo.gated and self._bearer() not in hub.tokens:
            message = f"Access to model {repo.id} is restricted. You must be authenticated to access it."
            raise HubError(401, "GatedRepo", message)
        commit = self._commit(repo, segments[3])
        entry: FileEntry | None = commit.files.get(unquote("/".join(segments[4:])))
        if entry is None:
            raise HubError(404, "EntryNotFound", "Entry not found")
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end = 0, entry.size - 1
        status = 200
        byte_range = _parse_range(self.headers.get("Range"), entry.size) if method == "GET" else None
        if byte_range == (-1, -1):
            headers["Content-Range"] = f"bytes */{entry.size}"
            raise _RangeError(headers)
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        headers["Content-Length"] = str(end - start + 1)
        record.status = status
        self._send_head(status, headers)
        if method == "GET":
            self._send_file(hub.repos.object_path(entry), start, end + 1 - start, record, repo.id, fault)

    def _send_file(
        self, path: Path, offset: int, length: int, record: RequestRecord, repo_id: str, fault: Fault | None
    ) -> None:
        """Stream ``length`` bytes from ``offset``, applying drop / rate limit / corrupt faults."""
        book, stopping = self.server.hub.book, self.server.stopping
        rate = fault.rate_limit_bytes_per_s if fault else None
        budget = fault.drop_after_bytes if fault and fault.drop_after_bytes is not None else length
        chunk_size = max(1, min(_CHUNK, rate // 10)) if rate else _CHUNK
        sent = 0
        with path.open("rb") as f:
            f.seek(offset)
            while sent < min(length, budget):
                data = f.read(min(chunk_size, length - sent, budget - sent))
                if not data:
                    break
                if fault is not None and fault.corrupt:
                    data = data.translate(_INVERT)
                # Counted before the write so a test that has just read the bytes sees them
                # counted; taken back if the client is gone (those bytes reached no one).
                book.count(record, repo_id, record.key, len(data))
                try:
                    self.wfile.write(data)
                except OSError:
                    book.count(record, repo_id, record.key, -len(data))
                    raise
                sent += len(data)
                if rate and stopping.wait(len(data) / rate):
                    break
        if sent < length:
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- low-level answers ------------------------------------------------------------------

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self._headers_sent = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, _header_value(value))
        self.end_headers()

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._send_head(
            status, {**(headers or {}), "Content-Type": "application/json", "Content-Length": str(len(data))}
        )
        if self.command != "HEAD":
            self.wfile.write(data)


class _RangeError(HubError):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(416, None, "Requested Range Not Satisfiable")
        self.headers = headers


def _header_value(value: str) -> str:
    """``value`` as one printable ASCII header line: an error message can quote a revision or path
    the client sent (any Unicode, CR/LF included once unquoted), which ``send_header`` would either
    fail to encode (latin-1) or split into an injected header."""
    if value.isascii() and value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


def _error_headers(err: HubError) -> dict[str, str]:
    headers = dict(getattr(err, "headers", {}))
    headers.pop("Content-Length", None)
    headers["X-Error-Message"] = err.message
    if err.code:
        headers["X-Error-Code"] = err.code
    return headers


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` → inclusive (start, end); None to serve the whole file; (-1, -1) if unsatisfiable.

    Only single ranges are honoured; anything else is ignored, as RFC 9110 allows.
    """
    match = _RANGE.match((value or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return (-1, -1)
    return (start, end)


class HubServer:
    """A local Hub serving the repositories under ``root`` from a background thread.

    ``page_size`` caps ``/api/models`` pages (and is the page size when ``limit`` is absent: small
    so that pagination is always exercised); ``tree_page_size`` caps tree pages. ``tokens`` are the
    bearer tokens accepted for gated repos.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        page_size: int = 3,
        tree_page_size: int = 100,
        verbose: bool = False,
    ) -> None:
        self.repos = HubRepos(Path(root))
        self.book = FaultBook()
        self.tokens = frozenset(tokens)
        self.page_size, self.tree_page_size = page_size, tree_page_size
        self.verbose = verbose
        self._httpd = _HubHTTPServer((host, port), self)
        self.host: str = host
        self.port: int = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint to give the client (``HF_ENDPOINT`` / ``endpoint=``), no trailing slash."""
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> HubControl:
        return HubControl(self.url)

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"hubserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, end open connections (even mid-transfer) and join every thread."""
        self._httpd.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
