"""A worker with ``--blend`` on the real broker: blended recommendations, and the
co-occurrence table recovered after a SIGKILL.

The worker (2 partitions, per-event emission) embeds the demo catalog; eight users then
like items A, B and C (three topics) in that order, on both partitions, and twelve others
click six decoys, more popular than B and C.
Every answer is a blend (``model`` ``blend/...``).  The worker is SIGKILLed and restarted
on the same state folder, which it discards (its previous run was killed), so its tables,
the co-occurrence rows included, come back from the changelogs.  A new user then clicks A:
the recommendation must equal what the pure engine computes offline from the same events
(it holds B and C, which only co-occurrence links to A), and differ from what the engine
gives when the co-occurrence is lost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from recstream.encoders.profile import DecayedProfileModel, UserProfile
from recstream.encoders.text import TextEncoder, item_text
from recstream.scoring.blend import BlendWeights
from recstream.scoring.engine import BLEND_MODEL_PREFIX, Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess
from recstream.streams.records import Click, Purchase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

WEIGHTS = BlendWeights(0.2, 0.6, 0.2, "zscore")
K = 5


A, B, C = "scifi-01", "garden-05", "jazz-07"
DECOYS = ("running-01", "running-02", "running-03", "cooking-01", "cooking-02", "cooking-03")


def _phase1(start_ms: int) -> list[Click | Purchase]:
    events: list[Click | Purchase] = []
    ts = start_ms
    for u in range(8):
        for item in (A, B, C):
            ts += 1000
            events.append((Purchase if u % 2 else Click)(f"fan{u}", item, ts, f"f{u}-{item}"))
    for u in range(12):
        for item in DECOYS:
            ts += 1000
            events.append(Click(f"other{u}", item, ts, f"o{u}-{item}"))
    return events


def _offline(encoder, catalog, events, probe, lose_cooccurrence: bool = False):
    matrix = ItemMatrix(encoder.dim, "cpu")
    texts = [item_text(i.title, i.categories, i.description) for i in catalog]
    matrix.upsert([i.item_id for i in catalog], np.asarray(encoder.encode_numpy(texts), dtype=np.float32))
    config = EngineConfig(k=K, emit="per-event", blend=WEIGHTS)
    engine = Engine(
        model=DecayedProfileModel(dim=encoder.dim), matrix=matrix, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=encoder, config=config
    )
    profiles: dict[str, UserProfile] = {}
    batch = [Incoming(ev, "t", 0, n) for n, ev in enumerate(events)]
    profiles.update(engine.process(batch, profiles).profiles)
    if lose_cooccurrence:
        assert engine.cooccurrence is not None
        engine.cooccurrence.clear()
    return engine.process([Incoming(probe, "t", 0, len(events))], profiles).recommendations[0]


def test_blend_worker_serves_blends_and_recovers_cooccurrence_after_sigkill(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "blend")
    wfile = WEIGHTS.save(tmp_path / "blend.json")
    worker = faults.Worker(settings, tmp_path, ["--emit", "per-event", "-k", str(K), "--blend", str(wfile)])
    restarted: WorkerProcess | None = None
    try:
        worker.start()
        ids = [i.item_id for i in worker.catalog]
        assert {A, B, C, *DECOYS} <= set(ids)
        start = faults.now_ms() - 3_600_000
        phase1 = _phase1(start)
        coords = faults.send_events(worker.producer, settings, phase1)
        assert {p for _, p, _ in coords} == {0, 1}  # both partitions' rows are written and recovered
        out = faults.Outputs(settings)
        try:
            out.wait_for(coords, [], timeout_s=120, alive=worker.assert_alive)
            recs = [r for rs in out.recs_by_coord().values() for r in rs]
        finally:
            out.close()
        assert recs and all(r.model == BLEND_MODEL_PREFIX + WEIGHTS.label() for r in recs)

        worker.process.kill()
        restarted = WorkerProcess(
            settings,
            tmp_path / "state",
            "--partitions",
            str(faults.PARTITIONS),
            "--emit",
            "per-event",
            "-k",
            str(K),
            "--blend",
            str(wfile),
            log_path=tmp_path / "worker2.log",
        )
        restarted.start()
        restarted.wait_ready()
        probe = Click("probe", A, start + 10**6, "probe-1")
        (coord,) = faults.send_events(worker.producer, settings, [probe])
        out = faults.Outputs(settings)

        def alive() -> None:
            assert restarted is not None and restarted.proc.poll() is None, restarted.log_text()[-3000:]

        try:
            out.wait_for([coord], [], timeout_s=120, alive=alive)
            (got,) = out.recs_by_coord()[coord][-1:]
        finally:
            out.close()
        assert "co-occurrence rebuilt" in restarted.log_text()
        encoder = TextEncoder(device="cpu")
        want = _offline(encoder, worker.catalog, phase1, probe)
        lost = _offline(encoder, worker.catalog, phase1, probe, lose_cooccurrence=True)
        assert [i.item_id for i in want.items] != [i.item_id for i in lost.items]  # the check can fail
        assert got.model == want.model
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], rtol=1e-4, atol=1e-4)
        assert {B, C} <= {i.item_id for i in got.items}
    finally:
        if restarted is not None:
            restarted.stop()
        worker.stop()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
