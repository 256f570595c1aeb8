"""Queries answered inside a micro-batch: the engine's between-steps hook and the
worker's compute lane (streams/lane.py)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recstream.scoring.adapt import AdaptConfig
from recstream.scoring.engine import RANK_SEGMENT, STEP_EVENTS
from recstream.scoring.query import QueryRequest, rank_requests
from recstream.streams.lane import ComputeLane

from .test_engine_blend import catalog, lists, make_engine, run, stream


@pytest.mark.parametrize("emit", ["per-event", "per-user"])
@pytest.mark.parametrize("adapt,candidates", [(None, True), (AdaptConfig(epoch=20), True), (None, False)], ids=["fixed", "adaptive", "dense"])
def test_a_between_steps_hook_leaves_the_lists_unchanged(emit: str, adapt: AdaptConfig | None, candidates: bool) -> None:
    events = stream(n=2 * RANK_SEGMENT + 40)
    ref_recs, ref_profiles, _ = run(make_engine(emit=emit, adapt=adapt, blend_candidates=candidates), [events])
    eng = make_engine(emit=emit, adapt=adapt, blend_candidates=candidates)
    calls = 0
    answers: list = []
    ids, vecs = catalog()

    def between() -> None:  # what the worker does there: answer a query, reading the engine
        nonlocal calls
        calls += 1
        answers.extend(rank_requests(eng, [QueryRequest(None, None, vecs[calls % len(ids)], 5)]))

    eng.between_steps = between
    recs, profiles, _ = run(eng, [events])
    assert lists(recs) == lists(ref_recs)
    for a, b in zip(recs, ref_recs):
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-5)
    assert {u: p.to_bytes() for u, p in profiles.items()} == {u: p.to_bytes() for u, p in ref_profiles.items()}
    # every STEP_EVENTS events, after the review texts, and between ranking segments
    assert calls >= len(events) // STEP_EVENTS + (1 if emit == "per-event" else 0)
    assert all(a.items and a.items[0].item_id == ids[n % len(ids)] for n, a in enumerate(answers, start=1))


def test_a_query_inside_a_batch_sees_the_events_applied_so_far() -> None:
    events = stream(n=3 * STEP_EVENTS, repeats=False)
    eng = make_engine(emit="per-user")
    seen: list[int] = []
    eng.between_steps = lambda: seen.append(len(eng.popularity.log2_scores()))  # items counted
    run(eng, [events])
    final = len(eng.popularity.log2_scores())
    # first after the review texts (nothing applied yet), then after each STEP_EVENTS events
    assert seen == sorted(seen) and seen[0] == 0 and any(0 < n < final for n in seen)


def _batch(lane: ComputeLane, started: threading.Event, release: threading.Event, steps: int) -> list[int]:
    """A stand-in for a micro-batch on the compute thread: ``steps`` consistent points."""
    started.set()
    ran = []
    for step in range(steps):
        release.wait(5)
        lane.between_steps()
        ran.append(lane.ran_between)
    return ran


def test_a_job_runs_inside_the_batch_in_progress_not_after_it() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    lane = ComputeLane(executor)
    started, release = threading.Event(), threading.Event()
    threads: list[str] = []

    async def main() -> tuple[int, list[int]]:
        batch = asyncio.get_running_loop().run_in_executor(executor, _batch, lane, started, release, 3)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        job = asyncio.ensure_future(lane.run(lambda x: threads.append(threading.current_thread().name) or x * 2, 21))
        await asyncio.sleep(0)  # queued
        release.set()
        got = await asyncio.wait_for(job, 5)
        return got, await batch

    got, ran = asyncio.run(main())
    executor.shutdown()
    assert got == 42
    assert ran == [1, 1, 1]  # at the batch's first consistent point
    assert (lane.ran_between, lane.ran_after) == (1, 0)  # and once: the executor found nothing left
    assert len(threads) == 1 and threads[0] != threading.main_thread().name


def test_without_a_batch_the_executor_runs_it_and_errors_reach_the_caller() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    lane = ComputeLane(executor)

    def fail() -> None:
        raise ValueError("bad request state")

    async def main() -> int:
        with pytest.raises(ValueError, match="bad request state"):
            await lane.run(fail)
        return await lane.run(len, [1, 2, 3])

    assert asyncio.run(main()) == 3
    executor.shutdown()
    assert (lane.ran_between, lane.ran_after) == (0, 2)
    lane.between_steps()  # nothing waits: nothing runs
    assert lane.ran_between == 0


def test_a_job_for_a_stopped_compute_thread_fails_at_once_and_is_not_kept() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    lane = ComputeLane(executor)
    executor.shutdown()

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await lane.run(len, [1])

    asyncio.run(main())
    lane.between_steps()  # a later batch runs nothing of it
    assert (lane.ran_between, lane.ran_after) == (0, 0)
