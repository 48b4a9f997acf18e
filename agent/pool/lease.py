"""A lease: one request's turn on one loaded model.

The pool hands a ``Lease`` out when it is the request's turn; the holder may tokenize and run one
generation, then ``release()``. The turn is given back only when the generation has really stopped
in its thread, so "one generation at a time per model" holds even for a consumer that was cancelled.

What keeps the event loop free under load (measured with 32 streaming clients on a tiny model):

- Generations run on kept daemon threads (``_Runners``), not a new thread each: ``Thread.start``
  blocks its caller until the new thread has run, and with the GIL busy that held the event loop
  for up to ~10 ms per request (about a fifth of the loop's time in all).
- Steps cross to the loop in batches (``_Handoff``): the thread appends each step to a list and
  wakes the loop only when the consumer waits, so a fast model costs one wake-up per batch of
  ready steps, not one per token.
- A short prompt is tokenized on the loop: for a few hundred characters the handoff to a thread
  cost the loop more than the tokenizing.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from agent.engine.types import LoadedModel, ModelInfo, SamplingParams, Step

T = TypeVar("T")


INLINE_PROMPT_CHARS = 2048
"""Raw prompts up to this many characters are tokenized on the event loop, longer ones in a thread
(chats always render in a thread: see ``Lease.encode_chat``)."""


class _Runners:
    """Daemon threads that run generations, one at a time each, and wait for the next; a thread
    idle for ``idle_s`` exits. Daemon, like the thread per generation they replace: a generation
    still running at interpreter exit does not hold the process up."""

    def __init__(self, idle_s: float = 60.0) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._spare = 0
        """Threads waiting for a job, less the jobs queued for them."""
        self._idle_s = idle_s

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        """Run ``job`` on a waiting thread, or on a new one if none waits; never blocks. What
        ``job`` returns is called once its thread counts as waiting again: whoever that call tells
        "the job is over" finds the thread free for the next one."""
        with self._lock:
            spawn = self._spare == 0
            if not spawn:
                self._spare -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="generate", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._spare > 0:  # no job is on its way to this thread: leave
                        self._spare -= 1
                        return
                continue
            done = job()  # a job catches its own errors: it hands them to its consumer
            del job
            with self._lock:
                self._spare += 1
            done()
            del done


_runners = _Runners()


class _Handoff:
    """Steps from the generation thread to the consumer on the loop.

    ``put`` (thread) appends under a lock and schedules a wake-up only if the consumer is waiting
    and none is scheduled yet; ``take`` (loop) returns everything ready at once, waiting if nothing
    is. ``finish`` (loop, after the thread's last ``put``) ends it with the thread's error or ``None``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._steps: list[Step] = []
        self._finished = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wake_scheduled = False

    def put(self, step: Step) -> None:
        with self._lock:
            self._steps.append(step)
            if self._waiter is None or self._wake_scheduled:
                return
            self._wake_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting and nobody is waiting

    def finish(self, error: BaseException | None) -> None:
        self._finished = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Step]:
        """The steps ready now (at least one), or ``[]`` at the end; raises the thread's error."""
        while True:
            with self._lock:
                steps, self._steps = self._steps, []
                if not steps and not self._finished:
                    waiter = self._waiter = self._loop.create_future()
            if steps:
                return steps
            if self._finished:
                if self._error is not None:
                    raise self._error
                return []
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None


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
        """The model's chat template, rendered and tokenized (raises ``TemplateError``), always in a
        thread: the template comes with the model, and even a short prompt may make it run for its
        whole render budget (``agent.engine.template_sandbox``)."""
        return await asyncio.to_thread(self.model.encode_chat, messages, tools=tools)

    async def encode_text(self, text: str) -> list[int]:
        """A raw prompt tokenized: on the loop if short, else in a thread."""
        if len(text) <= INLINE_PROMPT_CHARS:
            return self.model.encode_text(text)
        return await asyncio.to_thread(self.model.encode_text, text)

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Step]:
        """Run one generation on a runner thread and yield its steps as they come (see ``batches``)."""
        async for steps in self.batches(prompt_ids, params):
            for step in steps:
                yield step

    async def batches(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[list[Step]]:
        """Run one generation on a runner thread and yield its steps in batches: each batch is
        every step that was ready when the consumer asked (at least one), in order.

        Errors from the engine (e.g. ``ContextLengthExceeded``) are raised here. Leaving the loop
        early, or being cancelled, sets the cancel event: the engine stops within a step and only
        then is the model's turn passed on. A lease streams at most once.
        """
        if self._released or self._stopped is not None:
            raise RuntimeError("a lease runs one generation, before it is released")
        handoff = _Handoff(self._loop)
        self._stopped = self._loop.create_future()
        self._generating = True
        _runners.submit(lambda: self._run(prompt_ids, params, handoff))
        try:
            while steps := await handoff.take():
                yield steps
        finally:
            self._cancel.set()

    async def call(self, work: Callable[[threading.Event], T]) -> T:
        """Run ``work(cancel)`` on a runner thread while holding the model's turn, and return what it
        returns (or raise what it raised): for work that is not a generation, such as computing
        embeddings. Like ``batches``, being cancelled sets the cancel event (``work`` should check
        it between pieces of work) and the turn is passed on only once ``work`` has returned. A
        lease runs one ``call`` or one generation, before it is released."""
        if self._released or self._stopped is not None:
            raise RuntimeError("a lease runs one call, before it is released")
        outcome: asyncio.Future[T] = self._loop.create_future()
        outcome.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved if nobody waits any more
        self._stopped = self._loop.create_future()
        self._generating = True

        def job() -> Callable[[], None]:
            threading.current_thread().name = f"run {self.key}"
            result: Any = None
            error: BaseException | None = None
            try:
                result = work(self._cancel)
            except BaseException as exc:  # handed to the awaiting coroutine on the loop
                error = exc
            return lambda: self._post_called(outcome, result, error)

        _runners.submit(job)
        try:
            return await asyncio.shield(outcome)
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

    def _run(self, prompt_ids: list[int], params: SamplingParams, handoff: _Handoff) -> Callable[[], None]:
        """The generation, on a runner thread; returns what tells the loop it has stopped."""
        threading.current_thread().name = f"generate {self.key}"
        error: BaseException | None = None
        steps = None
        try:
            steps = self.model.generate(prompt_ids, params, self._cancel)
            for step in steps:
                handoff.put(step)
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
        return lambda: self._post_finished(handoff, error)

    def _post_finished(self, handoff: _Handoff, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._thread_finished, handoff, error)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting and nobody is waiting

    def _post_called(self, outcome: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._call_finished, outcome, result, error)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting and nobody is waiting

    # ------------------------------------------------------------------ loop side

    def _call_finished(self, outcome: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        if not outcome.done():
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(result)
        self._generating = False
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._released:
            self._end()

    def _thread_finished(self, handoff: _Handoff, error: BaseException | None) -> None:
        handoff.finish(error)
        self._generating = False
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._released:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_done(time.monotonic() - self._acquired_at)
