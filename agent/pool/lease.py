"""A lease: one request's turn on one loaded model.

The pool hands a ``Lease`` out when it is the request's turn; the holder may tokenize and run one
generation, then ``release()``. Generation runs in its own thread and its steps cross to the event
loop through an ``asyncio.Queue``. The turn is given back only when that thread has really
stopped, so "one generation at a time per model" holds even for a consumer that was cancelled.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from agent.engine.types import LoadedModel, ModelInfo, SamplingParams, Step


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class Lease:
    """The right to use ``model`` until ``release()``; created by ``ModelPool.acquire`` only.

    Every method must be called on the event loop that acquired the lease.
    """

    def __init__(self, key: str, model: LoadedModel, *, on_done: Callable[[float], None]) -> None:
        self.key = key
        """The variant key the lease runs on (answers report it as ``model``)."""
        self.model = model
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._cancel = threading.Event()
        self._acquired_at = time.monotonic()
        self._stopped: asyncio.Future[None] | None = None
        self._generating = False
        self._released = False
        self._ended = False

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The model's chat template, rendered and tokenized in a thread (raises ``TemplateError``)."""
        return await asyncio.to_thread(self.model.encode_chat, messages, tools=tools)

    async def encode_text(self, text: str) -> list[int]:
        """A raw prompt tokenized in a thread."""
        return await asyncio.to_thread(self.model.encode_text, text)

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Step]:
        """Run one generation in a thread and yield its steps as they come.

        Errors from the engine (e.g. ``ContextLengthExceeded``) are raised here. Leaving the loop
        early, or being cancelled, sets the cancel event: the engine stops within a step and only
        then is the model's turn passed on. A lease streams at most once.
        """
        if self._released or self._stopped is not None:
            raise RuntimeError("a lease runs one generation, before it is released")
        queue: asyncio.Queue[Step | _End] = asyncio.Queue()
        self._stopped = self._loop.create_future()
        self._generating = True
        thread = threading.Thread(
            target=self._run, args=(prompt_ids, params, queue), name=f"generate {self.key}", daemon=True
        )
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self._cancel.set()

    def cancel(self) -> None:
        """Ask the running generation (if any) to stop at its next step."""
        self._cancel.set()

    def release(self) -> None:
        """Give the turn back (idempotent). A running generation is cancelled first; the next
        request gets the model once its thread has stopped."""
        if self._released:
            return
        self._released = True
        self._cancel.set()
        if not self._generating:
            self._end()

    async def wait_stopped(self) -> None:
        """Return when the generation thread (if one was started) has finished."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)

    # ------------------------------------------------------------------ thread side

    def _run(self, prompt_ids: list[int], params: SamplingParams, queue: asyncio.Queue[Step | _End]) -> None:
        error: BaseException | None = None
        steps = None
        try:
            steps = self.model.generate(prompt_ids, params, self._cancel)
            for step in steps:
                self._post(queue.put_nowait, step)
                if self._cancel.is_set():
                    break
        except BaseException as exc:  # handed to the consumer on the loop
            error = exc
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                try:
                    close()  # the engine's iterator must be finished before the next generate
                except Exception as exc:
                    error = error or exc
        self._post(self._thread_finished, queue, error)

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting and nobody is waiting

    # ------------------------------------------------------------------ loop side

    def _thread_finished(self, queue: asyncio.Queue[Step | _End], error: BaseException | None) -> None:
        queue.put_nowait(_End(error))
        self._generating = False
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._released:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_done(time.monotonic() - self._acquired_at)
