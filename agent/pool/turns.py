"""One model's generation turn: a single holder at a time, the others wait first come first served.

Used on the event loop only. A waiter that is cancelled gives up its place; one that is cancelled
just as the turn reached it passes the turn on, so a turn is never lost.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class TurnQueue:
    """The FIFO queue in front of one loaded model (see the module docstring)."""

    def __init__(self) -> None:
        self.busy = False
        """Someone holds the turn."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._avg_turn_s = 1.0

    def __len__(self) -> int:
        """Requests waiting for the turn (the holder not included)."""
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds a refused request should wait: about one turn, between 1 and 60."""
        return max(1, min(60, math.ceil(self._avg_turn_s)))

    async def take(self) -> None:
        """Return once the caller holds the turn; it must then call ``done`` exactly once."""
        if not self.busy and not self._waiters:
            self.busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on()  # the turn was handed to us just as we gave up
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def done(self, turn_s: float) -> None:
        """The holder is finished after ``turn_s`` seconds: the next waiter gets the turn."""
        self._avg_turn_s = 0.7 * self._avg_turn_s + 0.3 * turn_s
        self._pass_on()

    def refuse_waiters(self, error: BaseException) -> None:
        """Every waiter's ``take`` raises ``error`` (the model is going away)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _pass_on(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy = False
