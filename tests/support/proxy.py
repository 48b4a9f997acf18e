"""A minimal forwarding HTTP proxy (absolute-form requests, GET/HEAD) that counts what went through.

Enough for ``requests`` with ``HTTP_PROXY`` against the plain-HTTP test hub: headers (``Range``,
``Authorization``) and bodies are passed on as they are, streamed.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}


class ForwardingProxy:
    """``with ForwardingProxy() as proxy:`` → ``proxy.url``; ``proxy.seen`` lists ``(method, url)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.seen.append((self.command, self.path))
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.send_error(400, "absolute http:// URL expected")
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
                try:
                    path = target.path + (f"?{target.query}" if target.query else "")
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, path, headers=headers)
                    answer = upstream.getresponse()
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    if answer.getheader("Content-Length") is None and self.command != "HEAD":
                        self.send_header("Connection", "close")  # the body ends when the connection does
                        self.close_connection = True
                    self.end_headers()
                    if self.command != "HEAD":
                        while chunk := answer.read(65536):
                            self.wfile.write(chunk)
                finally:
                    upstream.close()

            do_GET = _forward
            do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="proxy", daemon=True)

    def __enter__(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
