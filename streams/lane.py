"""Short jobs on the compute thread without waiting for the micro-batch in progress.

The worker runs its engine on one compute thread (a one-thread executor): the models it
reads are changed there and nowhere else.  A job submitted to that executor waits for the
micro-batch in progress, which under load takes hundreds of milliseconds.  An API query
only reads the models, so it need not wait: :class:`ComputeLane` queues it, and the engine
runs the queue at its consistent points inside a micro-batch (:attr:`scoring.engine.Engine.between_steps`,
every few tens of events).  The same job is also put on the executor, for when no batch
is running; whichever comes first runs it, once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import Executor
from typing import Any, Callable

log = logging.getLogger("recstream.lane")


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class ComputeLane:
    """Read-only jobs for the compute thread, run at the engine's next consistent point or
    on the executor, whichever comes first (see the module doc).

    Args:
        executor: the compute thread's executor (one thread).
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._jobs: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()
        #: jobs run inside a micro-batch (between its steps) and on the executor
        self.ran_between = 0
        self.ran_after = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the compute thread, as soon as it reaches a consistent point;
        ``fn`` must only read the engine's state."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = (fn, args, loop, future)
        self._jobs.append(job)
        try:
            self._executor.submit(self._run_after)
        except RuntimeError:  # the executor is shut down (the worker stops): nothing will run it
            try:
                self._jobs.remove(job)
            except ValueError:  # taken at a consistent point meanwhile
                pass
            else:
                raise
        return await future

    def between_steps(self) -> None:
        """(compute thread, inside a micro-batch) Run the waiting jobs."""
        if self._jobs:
            self.ran_between += self._drain()

    def _run_after(self) -> None:
        self.ran_after += self._drain()

    def _drain(self) -> int:
        ran = 0
        while True:
            try:
                fn, args, loop, future = self._jobs.popleft()
            except IndexError:  # empty: run at a point already, or by an earlier submission
                return ran
            result: Any = None
            exc: BaseException | None = None
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001 - the caller's, re-raised where it awaits
                exc = e
            ran += 1
            try:
                loop.call_soon_threadsafe(_settle, future, result, exc)
            except RuntimeError:  # its loop is closed: nobody waits for it any more
                log.debug("a compute job finished after its event loop closed")
