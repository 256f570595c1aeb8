"""Micro-batches that adapt to load (the events agent's and the catalog agent's stream).

faust's ``Stream.take_events(max_, within)`` yields a batch when ``max_`` events are
buffered or ``within`` seconds after it began waiting, and stops buffering while the agent
processes a batch: at low load every event waits up to ``within`` for company (50 ms by
default here), and under load the next batch starts filling only once the previous one is
done.

:func:`take_batches` buffers all the time instead (a background reader moves the stream's
events into a list, up to ``max_`` of them, while the agent works) and hands the agent
whatever is buffered as soon as it asks: an event that finds the worker idle is processed
at once (a batch of one), and under load the events that arrived while a batch was being
processed make the next one, up to ``max_`` (the batch grows with the load, as group
commit does).  ``linger_s`` > 0 makes an idle worker wait that long for company before it
starts a batch smaller than ``max_`` (larger batches at low load, e.g. for a GPU).

Events are acknowledged after the agent is done with their batch, as ``take_events``
does: an event's offset is committed only once its batch has been processed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, cast

if TYPE_CHECKING:
    from faust import Stream
    from faust.types import EventT


async def take_batches(stream: Stream, max_: int, *, linger_s: float = 0.0, idle_check_s: float = 1.0) -> AsyncIterator[list[EventT]]:
    """Batches of at most ``max_`` events of ``stream``, each as soon as the agent asks
    for it and at least one event is buffered (after ``linger_s`` more, unless the buffer
    is full); ``idle_check_s``: how often an idle wait looks at whether the stream stops."""
    if max_ < 1:
        raise ValueError(f"max_ must be at least 1, got {max_}")
    buffered: list[EventT] = []
    arrived = asyncio.Event()  # something is buffered
    full = asyncio.Event()  # max_ events are buffered
    room = asyncio.Event()  # the reader may buffer more
    room.set()

    async def buffer_event(value: Any) -> Any:  # runs in the stream's background reader, per event
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches: the stream has no current event")
        buffered.append(event)
        arrived.set()
        if len(buffered) >= max_:
            full.set()
            room.clear()
            await stream.wait(room.wait())
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False  # acknowledged here, once their batch is done
    stream.add_processor(buffer_event)
    stream._enable_passive(cast(Any, aiter(stream.channel)))  # faust's background reader, as take_events
    try:
        while not stream.should_stop:
            if not buffered:
                arrived.clear()
                await stream.wait_for_stopped(arrived.wait(), timeout=idle_check_s)
                continue
            if linger_s > 0 and len(buffered) < max_:
                await stream.wait_for_stopped(full.wait(), timeout=linger_s)
            batch = buffered[:max_]
            del buffered[:max_]
            full.clear()
            room.set()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(buffer_event)
