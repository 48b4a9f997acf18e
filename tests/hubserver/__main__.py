"""``python -m tests.hubserver --root DIR [--port 0] [--port-file F]``: a hub in its own process.

Prints the chosen port on stdout (one line) and, with ``--port-file``, writes it there atomically,
then serves until SIGTERM or SIGINT. Tests that need to kill the server mid-transfer (kill -9)
run it this way; ``process.HubProcess`` wraps it.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from .server import DEFAULT_TOKEN, HubServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hubserver", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder written by HubRepos")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the chosen port here")
    parser.add_argument("--token", action="append", help=f"accepted bearer token (default {DEFAULT_TOKEN})")
    parser.add_argument("--page-size", type=int, default=3)
    parser.add_argument("--tree-page-size", type=int, default=100)
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = HubServer(
        args.root,
        args.host,
        args.port,
        tokens=args.token or (DEFAULT_TOKEN,),
        page_size=args.page_size,
        tree_page_size=args.tree_page_size,
        verbose=args.verbose,
    ).start()
    try:
        print(server.port, flush=True)
        if args.port_file is not None:
            tmp = args.port_file.with_name(args.port_file.name + ".tmp")
            tmp.write_text(f"{server.port}\n")
            os.replace(tmp, args.port_file)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
