"""``agent.feed.EventFeed``: the in-process fan-out behind ``/api/events``, fed as the worker feeds
it: a sink of the one ``ipc.publisher.Publisher``, which stamps the events and hops threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.feed import RESYNC, EventFeed
from ipc.messages import DownloadProgress, ModelsChanged
from ipc.publisher import Publisher


def progress(n: int) -> DownloadProgress:
    return DownloadProgress(job_id="j", key="k", done_bytes=n, total_bytes=100, rate_bps=1.0, eta_s=None, current_file="f")


def wired(session: str = "s", **options: int) -> tuple[Publisher, EventFeed]:
    publisher = Publisher(session, asyncio.get_running_loop())
    feed = EventFeed(**options)
    publisher.add_sink(feed.deliver)
    return publisher, feed


def test_every_subscriber_gets_every_event_stamped_with_the_session() -> None:
    async def main() -> None:
        publisher, feed = wired("sess")
        with feed.subscribe() as a, feed.subscribe() as b:
            publisher.publish(ModelsChanged(keys=["x"]))
            for sub in (a, b):
                event = await sub.get(5)
                assert isinstance(event, ModelsChanged) and event.keys == ["x"]
                assert event.session == "sess" and event.time > 0
        assert feed.subscribers == 0

    asyncio.run(main())


def test_publishing_from_threads_arrives_in_order() -> None:
    async def main() -> None:
        publisher, feed = wired(queue_size=1000)
        with feed.subscribe() as sub:
            def publish_all() -> None:
                for i in range(500):
                    publisher.publish(progress(i))

            worker = threading.Thread(target=publish_all)
            worker.start()
            got = [await sub.get(5) for _ in range(500)]
            await asyncio.to_thread(worker.join, 5)
        assert [e.done_bytes for e in got] == list(range(500))  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_slow_subscriber_is_told_to_resync_and_costs_bounded_memory() -> None:
    async def main() -> None:
        publisher, feed = wired(queue_size=8)
        with feed.subscribe() as slow, feed.subscribe() as fast:
            for i in range(100):
                publisher.publish(progress(i))
                assert isinstance(await fast.get(5), DownloadProgress)
            pending = [await slow.get(5) for _ in range(slow._queue.qsize())]
            assert pending and len(pending) <= 8
            assert RESYNC in pending and slow.dropped > 0
            publisher.publish(progress(1000))
            latest = await slow.get(5)
            assert isinstance(latest, DownloadProgress) and latest.done_bytes == 1000

    asyncio.run(main())


def test_closing_ends_every_subscription() -> None:
    async def main() -> None:
        publisher, feed = wired(queue_size=2)
        sub = feed.subscribe()
        for i in range(5):
            publisher.publish(progress(i))  # full: the close must still get through
        waiting = asyncio.ensure_future(feed.subscribe().get(5))
        await asyncio.sleep(0)
        feed.close()
        assert await waiting is None
        while (item := await sub.get(5)) is not None:
            assert item is RESYNC or isinstance(item, DownloadProgress)
        assert await sub.get(5) is None  # and stays closed
        assert await feed.subscribe().get(5) is None  # late subscribers end at once
        publisher.publish(progress(9))  # publishing after close is harmless

    asyncio.run(main())


def test_get_times_out_for_keepalives() -> None:
    async def main() -> None:
        _, feed = wired()
        with feed.subscribe() as sub, pytest.raises(asyncio.TimeoutError):
            await sub.get(0.01)

    asyncio.run(main())
