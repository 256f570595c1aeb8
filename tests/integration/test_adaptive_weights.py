"""The default worker adapts its blend weights online, keeps them through a SIGKILL, and
adapts exactly as the offline engine does on the same events.

A worker with no ranking flag (the default blend, adapted online; a short epoch so that a
few hundred events make several) on 2 partitions answers users whose next click is, most of
the time, one of three hot items.  After the answers, the weights each partition stored in
the ``blend-weights`` table (read from its changelog with ``recstream profile``'s reader)
must have moved away from the defaults, and equal those of the pure engine fed the same
events on the same partitions.  The worker is then SIGKILLed and restarted: it restores the
weights from the changelog (it says so) and goes on from them: more epochs, not a restart
from the defaults.
"""

from __future__ import annotations

import re
import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recstream.encoders.profile import DecayedProfileModel, UserProfile
from recstream.encoders.text import TextEncoder, item_text
from recstream.scoring.adapt import AdaptConfig
from recstream.scoring.blend import DEFAULT_WEIGHTS
from recstream.scoring.engine import BLEND_MODEL_PREFIX, Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.scoring.backtest import BacktestConfig
from recstream.streams import topics as T
from recstream.streams.backtest import backtest_replay
from recstream.streams.client import WorkerProcess, partition_for
from recstream.streams.inspect import inspect_user
from recstream.streams.records import Click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

K = 10
ADAPT = AdaptConfig(step=0.1, rate=3.0, epoch=12)
FLAGS = ["--emit", "per-event", "-k", str(K), "--adapt-rate", str(ADAPT.rate), "--adapt-epoch", str(ADAPT.epoch), "--adapt-step", str(ADAPT.step)]


def _events(ids: list[str], start_ms: int, n: int, seed: int) -> list[Click]:
    rng = np.random.default_rng(seed)
    hot = ids[:3]
    out = []
    for j in range(n):
        user = f"u{int(rng.integers(0, 40))}"
        item = hot[int(rng.integers(0, 3))] if rng.random() < 0.7 else ids[int(rng.integers(3, len(ids)))]
        out.append(Click(user, item, start_ms + 60_000 * j, f"s{seed}-{j}"))
    return out


def _offline_weights(catalog, events: list[Click]) -> dict[int, np.ndarray]:
    encoder = TextEncoder(device="cpu")
    matrix = ItemMatrix(encoder.dim, "cpu")
    texts = [item_text(i.title, i.categories, i.description) for i in catalog]
    matrix.upsert([i.item_id for i in catalog], np.asarray(encoder.encode_numpy(texts), dtype=np.float32))
    config = EngineConfig(k=K, emit="per-event", blend=DEFAULT_WEIGHTS, adapt=ADAPT)
    engine = Engine(
        model=DecayedProfileModel(dim=encoder.dim), matrix=matrix, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=encoder, config=config
    )
    offsets: dict[int, int] = {}
    batch = []
    for ev in events:
        p = partition_for(ev.user_id.encode(), faults.PARTITIONS)
        offsets[p] = offsets.get(p, -1) + 1
        batch.append(Incoming(ev, "clicks", p, offsets[p]))
    profiles: dict[str, UserProfile] = {}
    engine.process(batch, profiles)
    assert engine.adaptive is not None
    return {p: a.weights for p, a in engine.adaptive.adapters.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(body) for s in family.samples}


def _stored(settings, users_by_partition: dict[int, str]):
    """Each partition's stored adaptive state, through ``recstream profile``'s reader."""
    out = {}
    for p, user in users_by_partition.items():
        view = inspect_user(settings, user)
        assert view.partition == p and view.weights is not None, (p, user)
        out[p] = view.weights
    return out


@pytest.mark.timeout(900)
def test_the_default_worker_adapts_its_weights_and_keeps_them_through_a_sigkill(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "adapt")
    port = _free_port()
    worker = faults.Worker(settings, tmp_path, [*FLAGS, "--metrics-port", str(port)])
    restarted: WorkerProcess | None = None
    try:
        worker.start()
        ids = [i.item_id for i in worker.catalog]
        start = faults.now_ms() - 30 * 86_400_000
        first = _events(ids, start, 300, seed=1)
        coords = faults.send_events(worker.producer, settings, first)
        assert {p for _, p, _ in coords} == {0, 1}
        out = faults.Outputs(settings)
        try:
            out.wait_for(coords, [], timeout_s=240, alive=worker.assert_alive)
            models = {r.model for rs in out.recs_by_coord().values() for r in rs}
        finally:
            out.close()
        assert models - {"popularity"} == {f"{BLEND_MODEL_PREFIX}adaptive from {DEFAULT_WEIGHTS.label()}"}

        # live quality: what the worker exports is what the backtest computes on the same records
        # (every event after the first a test event; the answers are all in, so the tests are too)
        result, _ = backtest_replay(settings, BacktestConfig(split_ms=first[0].ts, ks=(10,)))
        want_hr = result.metrics()["hit_rate@10"]
        samples = _scrape(port)
        cases = sum(v for (n, _), v in samples.items() if n == "recstream_prequential_cases_total")
        hits = sum(v for (n, _), v in samples.items() if n == "recstream_prequential_hits_at_10_total")
        assert cases == result.counts["cases"] > 200
        assert hits / cases == pytest.approx(want_hr, abs=1e-12)
        weights = {labels: v for (n, labels), v in samples.items() if n == "recstream_blend_weight"}
        assert len(weights) == 3 * faults.PARTITIONS and sum(weights.values()) == pytest.approx(faults.PARTITIONS)

        users = {partition_for(ev.user_id.encode(), faults.PARTITIONS): ev.user_id for ev in first}
        stored = _stored(settings, users)
        want = _offline_weights(worker.catalog, first)
        for p, state in stored.items():
            assert state.epochs >= 5, (p, state)
            assert np.abs(state.weights - np.array(DEFAULT_WEIGHTS.as_tuple())).max() > 0.05, (p, state.weights)  # moved
            np.testing.assert_allclose(state.weights, want[p], atol=1e-6)  # as the engine moves them offline

        worker.process.kill()
        restarted = WorkerProcess(settings, tmp_path / "state", "--partitions", str(faults.PARTITIONS), *FLAGS, log_path=tmp_path / "worker2.log")
        restarted.start()
        restarted.wait_ready()
        restored = re.search(r"blend weights restored: (.*)", restarted.log_text())
        assert restored, restarted.log_text()[-3000:]
        for p, state in stored.items():
            t, c, pop = state.weights
            assert f"{p}: text {t:.2f} co {c:.2f} pop {pop:.2f} ({state.epochs} epochs)" in restored.group(1)

        second = _events(ids, first[-1].ts + 60_000, 120, seed=2)
        coords = faults.send_events(worker.producer, settings, second)
        out = faults.Outputs(settings)

        def alive() -> None:
            assert restarted is not None and restarted.proc.poll() is None, restarted.log_text()[-3000:]

        try:
            out.wait_for(coords, [], timeout_s=240, alive=alive)
        finally:
            out.close()
        after = _stored(settings, users)
        assert all(after[p].epochs > stored[p].epochs for p in stored), (after, stored)
    finally:
        if restarted is not None:
            restarted.stop()
        worker.stop()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
