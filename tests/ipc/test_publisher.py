"""``ipc.publisher.Publisher``: the worker's one place that stamps events and hops to the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ipc.messages import DownloadProgress, Event, ModelsChanged, WorkerStatus
from ipc.publisher import Publisher


def progress(n: int) -> DownloadProgress:
    return DownloadProgress(job_id="j", key="k", done_bytes=n, total_bytes=100, rate_bps=1.0, eta_s=None, current_file="f")


class Recorder:
    """A sink that notes each event and the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.threads: set[int] = set()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())


def test_every_sink_gets_the_same_stamped_event_on_the_loop_thread_in_order() -> None:
    async def main() -> tuple[Recorder, Recorder, int]:
        publisher = Publisher("sess-1", asyncio.get_running_loop())
        a, b = Recorder(), Recorder()
        publisher.add_sink(a)
        publisher.add_sink(b)

        def from_threads(first: int) -> None:
            for i in range(first, first + 200):
                publisher.publish(progress(i))

        workers = [threading.Thread(target=from_threads, args=(n * 1000,)) for n in range(3)]
        for w in workers:
            w.start()
        publisher.publish(ModelsChanged(keys=["x"]))  # from the loop itself: delivered at once
        assert [type(e) for e in a.events] == [ModelsChanged]
        for w in workers:
            await asyncio.to_thread(w.join, 10)
        for _ in range(1000):  # bounded: the hops queued by the threads run on later loop turns
            if len(b.events) == 601:
                break
            await asyncio.sleep(0.01)
        return a, b, threading.get_ident()

    a, b, loop_thread = asyncio.run(main())
    assert len(a.events) == len(b.events) == 601
    assert a.threads == b.threads == {loop_thread}
    for left, right in zip(a.events, b.events, strict=True):
        assert left is right  # stamped once: one time for every sink
        assert left.session == "sess-1" and left.time > 0
    for n in range(3):  # each thread's events keep their order
        mine = [e.done_bytes for e in a.events if isinstance(e, DownloadProgress) and e.done_bytes // 1000 == n]
        assert mine == list(range(n * 1000, n * 1000 + 200))


def test_a_sink_may_skip_topics_and_a_failing_sink_costs_the_others_nothing(caplog: pytest.LogCaptureFixture) -> None:
    publisher = Publisher("s")  # no loop: sinks run on the publishing thread
    kept, everything = Recorder(), Recorder()

    def broken(event: Event) -> None:
        raise RuntimeError("sink bug")

    publisher.add_sink(broken)
    publisher.add_sink(kept, skip=("worker.",))
    publisher.add_sink(everything)
    publisher.publish(WorkerStatus(pid=1, state="ready"))
    publisher.publish(ModelsChanged(keys=[]))
    assert [type(e) for e in kept.events] == [ModelsChanged]
    assert [type(e) for e in everything.events] == [WorkerStatus, ModelsChanged]
    assert kept.threads == {threading.get_ident()}
    assert "delivering model.installed_changed failed" in caplog.text


def test_publishing_after_the_loop_closed_is_dropped_without_raising() -> None:
    loop = asyncio.new_event_loop()
    publisher = Publisher("s", loop)
    sink = Recorder()
    publisher.add_sink(sink)
    loop.close()
    publisher.publish(progress(1))
    assert sink.events == []
