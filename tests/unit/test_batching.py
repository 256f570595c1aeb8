"""Micro-batches that adapt to load (streams/agents/batching.py), on a stand-in for faust's
Stream: the parts of it that ``take_batches`` uses, fed from a queue."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from recstream.streams.agents.batching import take_batches


class Stream:
    """What take_batches uses of faust's Stream: processors run per event by a background
    reader (``_enable_passive``), ``current_event``, ``wait``/``wait_for_stopped`` and ``ack``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.channel = self
        self._processors: list = []
        self.enable_acks = True
        self.should_stop = False
        self.current_event = None
        self.acked: list[int] = []
        self.reader: asyncio.Task | None = None

    def __aiter__(self):
        return self

    async def __anext__(self):  # the channel iterator take_batches hands the background reader
        raise StopAsyncIteration

    def add_processor(self, fun) -> None:
        self._processors.append(fun)

    def _enable_passive(self, channel) -> None:
        self.reader = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            value = await self.queue.get()
            self.current_event = SimpleNamespace(value=value)
            for fun in list(self._processors):
                await fun(value)

    async def wait(self, waiting) -> None:
        await waiting

    async def wait_for_stopped(self, waiting, timeout: float) -> None:
        try:
            await asyncio.wait_for(waiting, timeout)
        except asyncio.TimeoutError:
            pass

    async def ack(self, event) -> bool:
        self.acked.append(event.value)
        return True

    def put(self, *values: int) -> None:
        for v in values:
            self.queue.put_nowait(v)


async def _collect(stream: Stream, batches: list, n: int, *, work_s: float, **kwargs) -> None:
    async for batch in take_batches(stream, 4, **kwargs):
        batches.append((time.monotonic(), [e.value for e in batch]))
        await asyncio.sleep(work_s)  # the agent's processing
        if sum(len(b) for _, b in batches) >= n:
            break


async def test_an_event_that_finds_the_worker_idle_goes_at_once_and_a_busy_worker_gets_bigger_batches():
    stream, batches = Stream(), []
    agent = asyncio.ensure_future(_collect(stream, batches, 10, work_s=0.05))
    await asyncio.sleep(0.02)
    sent = time.monotonic()
    stream.put(0)  # the worker is idle: a batch of one, without waiting for company
    await asyncio.sleep(0.01)
    stream.put(*range(1, 10))  # while it works: they wait, and make the next batches (at most 4)
    await asyncio.wait_for(agent, 5)
    assert [b for _, b in batches] == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batches[0][0] - sent < 0.02  # not a 50 ms batch window
    assert stream.acked == list(range(10))  # every event acknowledged, once its batch was done
    assert stream.enable_acks is True and stream._processors == []  # the stream as it was
    stream.reader.cancel()


async def test_acks_come_after_the_batch_is_processed():
    stream = Stream()
    batches = take_batches(stream, 4)
    stream.put(1, 2)
    first = await batches.__anext__()
    assert [e.value for e in first] == [1, 2] and stream.acked == []  # being processed
    stream.put(3)
    second = await batches.__anext__()  # the agent is done with the first batch
    assert [e.value for e in second] == [3] and stream.acked == [1, 2]
    await batches.aclose()
    assert stream.acked == [1, 2, 3]
    stream.reader.cancel()


async def test_linger_waits_for_company_but_not_past_a_full_batch():
    stream, batches = Stream(), []
    agent = asyncio.ensure_future(_collect(stream, batches, 6, work_s=0.0, linger_s=0.2))
    await asyncio.sleep(0.01)
    stream.put(1)
    await asyncio.sleep(0.05)
    stream.put(2)  # within the linger: same batch
    await asyncio.sleep(0.3)
    stream.put(3, 4, 5, 6)  # a full batch goes without lingering
    t = time.monotonic()
    await asyncio.wait_for(agent, 5)
    assert [b for _, b in batches] == [[1, 2], [3, 4, 5, 6]]
    assert batches[1][0] - t < 0.1
    stream.reader.cancel()


def test_a_batch_holds_at_least_one_event():
    with pytest.raises(ValueError, match="at least 1"):
        take_batches(Stream(), 0).__anext__().send(None)
