"""The subcommands. Management commands talk to the running agent over ZeroMQ (``ipc.client``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from cli import output
from ipc.client import CallTimeout, Client, RemoteError, agent_json_path
from ipc.connection import AgentNotRunning, pid_alive
from ipc.messages import (
    Activate,
    CancelDownload,
    Delete,
    Download,
    Hardware,
    ImportModel,
    ListInstalled,
    ModelFiles,
    Request,
    Search,
    Shutdown,
    Status,
)


class CliError(Exception):
    """A failure to report as one line; ``status`` is the exit code, ``code`` a stable name for scripts
    (the agent's error code when it answered with one, see docs/protocol.md)."""

    def __init__(self, message: str, status: int = 1, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def home_path() -> Path:
    return agent_json_path(None).parent


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client of the running agent, or a one-line error saying how to start one."""
    try:
        client = Client(timeout=args.timeout)
    except AgentNotRunning as exc:
        raise CliError(str(exc), code="agent_not_running") from None
    try:
        yield client
    finally:
        client.close()


def call(client: Client, request: Request, timeout: float | None = None) -> Any:
    try:
        return client.call(request, timeout=timeout)
    except RemoteError as exc:
        raise CliError(exc.message, code=exc.code) from None
    except CallTimeout as exc:
        pid = client.connection.pid
        if not pid_alive(pid):
            raise CliError(f"the agent (pid {pid}) stopped before answering; start it again with `hflocal serve`",
                           code="agent_stopped") from None
        raise CliError(str(exc), code="timeout") from None


def emit_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value)) + b"\n")
    sys.stdout.flush()


def emit_json_error(code: str, message: str) -> None:
    """A failure under ``--json``: one line ``{"error": {"code", "message"}}`` on stderr, so stdout only
    ever holds results and a script can parse the error line as it parses a result."""
    sys.stderr.buffer.write(msgspec.json.encode({"error": {"code": code, "message": message}}) + b"\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- commands


def serve(args: argparse.Namespace) -> int:
    from agent.quickstart import enabled_by_env
    from agent.worker import WorkerOptions, run_worker

    options = WorkerOptions(
        host=args.host,
        port=args.port,
        zmq_request=args.zmq_request,
        zmq_events=args.zmq_events,
        parent_pid=args.parent_pid,
        default_model=args.default_model or enabled_by_env(),
    )
    return run_worker(options)


def tray(args: argparse.Namespace) -> int:
    if args.default_model:
        # The tray starts (and restarts) the worker as a child; the flag reaches it through the environment.
        from agent.quickstart import ENV_FLAG

        os.environ[ENV_FLAG] = "1"
    try:
        from ui.app import run_tray
    except ImportError as exc:
        raise CliError(
            f"the tray is not available ({exc}); install it with `pip install 'hflocal[tray]'`, "
            "or run the agent headless with `hflocal serve`"
        ) from None
    result: int = run_tray()
    return result


def show(args: argparse.Namespace, result: Any, printer: Callable[[Any], None]) -> int:
    """Print a result as JSON (``--json``) or for a person; the command succeeded."""
    if args.json:
        emit_json(result)
    else:
        printer(result)
    return 0


def ask(
    args: argparse.Namespace, request: Request, printer: Callable[[Any], None], timeout: float | None = None
) -> int:
    """The plain commands: one request to the agent, its result shown."""
    with connect(args) as client:
        result = call(client, request, timeout=timeout)
    return show(args, result, printer)


def search(args: argparse.Namespace) -> int:
    request = Search(query=args.query, limit=args.limit, kind=args.kind)
    return ask(args, request, output.print_search, max(args.timeout, 60))


def files(args: argparse.Namespace) -> int:
    request = ModelFiles(model_id=args.model_id, revision=args.revision)
    return ask(args, request, output.print_files, max(args.timeout, 60))


def pull(args: argparse.Namespace) -> int:
    from cli.progress import follow_download

    with connect(args) as client:
        request = Download(model_id=args.model_id, quantization=args.quant, device=args.device, revision=args.revision)
        return follow_download(client, request, detach=args.detach, as_json=args.json)


def ls(args: argparse.Namespace) -> int:
    return ask(args, ListInstalled(), output.print_installed)


def rm(args: argparse.Namespace) -> int:
    with connect(args) as client:  # the name as typed: the agent resolves it (docs/protocol.md, "Model names")
        result = call(client, Delete(key=args.key), timeout=max(args.timeout, 60))
    return show(args, result, lambda r: print(f"deleted {r.key} ({output.human_bytes(r.freed_bytes)} freed)"))


def use(args: argparse.Namespace) -> int:
    from cli.progress import follow_activation

    with connect(args) as client:
        return follow_activation(client, args.key, wait=not args.no_wait, as_json=args.json)


def status(args: argparse.Namespace) -> int:
    return ask(args, Status(), output.print_status)


def settings_url(http_url: str, token: str) -> str:
    """The settings page's sign-in URL (``/?token=``), on a loopback address the page accepts: an
    agent bound to all interfaces (``0.0.0.0``/``::``) is opened through 127.0.0.1/[::1]."""
    base = http_url.rstrip("/").replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")
    return f"{base}/?token={token}"


def open_page(args: argparse.Namespace) -> int:
    import webbrowser

    from ipc.connection import read_connection

    try:
        info = read_connection(agent_json_path(None))
    except AgentNotRunning as exc:
        raise CliError(str(exc), code="agent_not_running") from None
    url = settings_url(info.http_url, info.token)
    if args.json:
        emit_json({"url": url})
    elif args.print_only:
        print(url)
    elif not webbrowser.open(url):
        print(f"open this address in your browser: {url}")
    return 0


def hw(args: argparse.Namespace) -> int:
    return ask(args, Hardware(), output.print_hardware, max(args.timeout, 30))


def import_model(args: argparse.Namespace) -> int:
    from cli.progress import follow_import

    path = args.path.expanduser().resolve()
    if not path.exists():
        raise CliError(f"{path} does not exist")
    with connect(args) as client:
        request = ImportModel(path=str(path), quantizations=args.quant or [], model_id=args.name)
        return follow_import(client, request, as_json=args.json)


def chat(args: argparse.Namespace) -> int:
    from cli.chat import run_chat

    try:
        from ipc.connection import read_connection

        info = read_connection(agent_json_path(None))
    except AgentNotRunning as exc:
        raise CliError(str(exc), code="agent_not_running") from None
    return run_chat(info, model=args.key, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                    as_json=args.json)


def autostart(args: argparse.Namespace) -> int:
    from installers.autostart import AutostartError, apply

    try:
        result = apply(args.action, headless=args.headless)
    except AutostartError as exc:
        raise CliError(str(exc), code="autostart") from None
    if args.json:
        emit_json(result)
    else:
        print(result.get("message", ""))
    return 0


def stop(args: argparse.Namespace) -> int:
    return ask(args, Shutdown(), lambda r: print(f"agent (pid {r.pid}) is shutting down"))


def cancel(client: Client, job_id: str) -> None:
    """Best effort cancel on Ctrl-C; the agent keeps the bytes for a later resume."""
    try:
        client.call(CancelDownload(job_id=job_id), timeout=5)
    except (RemoteError, CallTimeout):
        pass


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


__all__ = ["Activate", "CliError"]
