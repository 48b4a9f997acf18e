"""Log records of bounded size, whatever they quote.

A record may carry text the agent did not choose: an exception from a model's chat template that
quotes a 3 GB string it built, a traceback through a huge value. ``CappedFormatter`` keeps the first
``MAX_RECORD_CHARS`` characters of a formatted record and says how many it left out, so one record
can neither fill the disk past the rotation bound (``agent.log`` rotates at 5 MB, 3 kept: at most
about 20 MB in all) nor flood stderr. Uncaught exceptions in threads go through logging too (the
default hook prints them to stderr uncapped).
"""

from __future__ import annotations

import logging
import threading

MAX_RECORD_CHARS = 64 * 1024
"""The most characters of one formatted record (message, traceback and all)."""


def cap(text: str, limit: int = MAX_RECORD_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... [{len(text) - limit} more characters]"


class CappedFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output is at most ``MAX_RECORD_CHARS`` (+ the count)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        return cap(super().formatMessage(record))

    def formatException(self, ei: object) -> str:  # logging's name
        return cap(super().formatException(ei))  # type: ignore[arg-type]

    def format(self, record: logging.LogRecord) -> str:
        return cap(super().format(record))


def log_thread_errors() -> None:
    """Send uncaught exceptions of threads to the ``threading`` logger (capped like any record)."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        logging.getLogger("threading").error(
            "uncaught exception in thread %s", name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    threading.excepthook = hook
