"""A worker with ``--user-model`` on the real broker: its lists are the offline engine's with
the same checkpoint, and a new checkpoint written over the file is served without a restart.

The checkpoint has random weights (serving does not care how it was trained) and knows half
of the demo catalog by id; the other half is ranked from its text.  Per-event emission: every
event's list must equal what :class:`scoring.engine.Engine` with the same checkpoint computes
from the same events, and name the checkpoint (``sasrec/<stem>@<hash>``).  Then a second
checkpoint replaces the file; once the worker logs the reload, the next events' lists are the
new model's (by name and by content), computed from the profiles the first phase left.

The worker reads the clicks and purchases topics independently, so a user's click and the
purchase that follows it may be applied in either order when both are waiting.  The events
are therefore sent in runs of one topic, each run answered before the next is sent, which
fixes the order the offline engine assumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recstream.encoders.profile import DecayedProfileModel, ProfileConfig, UserProfile
from recstream.encoders.sasrec import SASRec, SASRecConfig, checkpoint_hash, save_checkpoint
from recstream.encoders.text import TextEncoder, item_text
from recstream.scoring.engine import Engine, EngineConfig, Incoming
from recstream.scoring.learned import LearnedUserEncoder
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.streams.records import Click, Purchase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

K = 5
HISTORY = 40


def _checkpoint(path: Path, vocab: list[str], seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(SASRec(SASRecConfig(vocab=tuple(vocab), text_dim=384, dim=32, heads=2, layers=2, max_len=12)), path)


def _events(users: int, per_user: int, ids: list[str], start_ms: int, tag: str, seed: int) -> list[Click | Purchase]:
    """``per_user`` steps; in each, every user clicks a random item, then about half of them
    buy the item they clicked (a step's clicks first, then its purchases: two topic runs)."""
    rng = np.random.default_rng(seed)
    out: list[Click | Purchase] = []
    ts = start_ms
    for step in range(per_user):
        purchases: list[Click | Purchase] = []
        for u in range(users):
            ts += 1000
            item = ids[int(rng.integers(len(ids)))]
            out.append(Click(f"{tag}-u{u}", item, ts, f"{tag}-{ts}-{u}-c"))
            if rng.random() < 0.5:
                purchases.append(Purchase(f"{tag}-u{u}", item, ts, f"{tag}-{ts}-{u}-p"))
        out += purchases
    return out


class Offline:
    """The pure engine with the worker's settings and the same checkpoint."""

    def __init__(self, catalog, path: Path) -> None:
        encoder = TextEncoder(device="cpu")
        self.matrix = ItemMatrix(encoder.dim, "cpu")
        texts = [item_text(i.title, i.categories, i.description) for i in catalog]
        self.matrix.upsert([i.item_id for i in catalog], np.asarray(encoder.encode_numpy(texts), dtype=np.float32))
        config = EngineConfig(k=K, emit="per-event")
        self.user_encoder = LearnedUserEncoder(path)
        self.engine = Engine(
            model=DecayedProfileModel(ProfileConfig(history_len=HISTORY), dim=encoder.dim),
            matrix=self.matrix,
            popularity=DecayedPopularity(config.popularity_half_life_ms),
            texts=encoder,
            config=config,
            user_encoder=self.user_encoder,
        )
        self.profiles: dict[str, UserProfile] = {}
        self.n = 0

    def run(self, events):
        batch = [Incoming(ev, "t", 0, self.n + j) for j, ev in enumerate(events)]
        self.n += len(events)
        res = self.engine.process(batch, self.profiles)
        self.profiles.update(res.profiles)
        return res.recommendations


def _answers(worker, settings, events):
    """Each event's recommendation, the events sent in runs of one type (one topic), each run
    answered before the next is sent: the order in which the worker applies them is theirs."""
    runs: list[list[Click | Purchase]] = []
    for ev in events:
        if runs and type(runs[-1][-1]) is type(ev):
            runs[-1].append(ev)
        else:
            runs.append([ev])
    out = faults.Outputs(settings)
    try:
        coords = []
        for run in runs:
            sent = faults.send_events(worker.producer, settings, run)
            out.wait_for(sent, [], timeout_s=180, alive=worker.assert_alive)
            coords += sent
        by = out.recs_by_coord()
        return [by[c][-1] for c in coords]
    finally:
        out.close()


def test_learned_worker_serves_the_checkpoint_and_reloads_it(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "learned")
    ids = [i.item_id for i in faults.load_catalog(ts=0)]
    ckpt = _checkpoint(tmp_path / "users.ckpt", ids[::2], seed=0)
    first_name = f"sasrec/users@{checkpoint_hash(ckpt)}"
    worker = faults.Worker(
        settings, tmp_path, ["--emit", "per-event", "-k", str(K), "--user-model", str(ckpt), "--user-model-check-s", "0.5", "--history-len", str(HISTORY)]
    )
    try:
        worker.start()
        assert f"user model {first_name}" in worker.log()
        offline = Offline(worker.catalog, ckpt)
        start = faults.now_ms() - 3_600_000
        phase1 = _events(6, 5, ids, start, "a", seed=1)
        got = _answers(worker, settings, phase1)
        want = offline.run(phase1)
        assert {r.model for r in got} == {first_name}
        assert [[i.item_id for i in r.items] for r in got] == [[i.item_id for i in r.items] for r in want]
        np.testing.assert_allclose([i.score for r in got for i in r.items], [i.score for r in want for i in r.items], rtol=1e-3, atol=1e-3)

        _checkpoint(ckpt, ids[::2], seed=1)  # a new version, written over the file (atomic rename)
        second_name = f"sasrec/users@{checkpoint_hash(ckpt)}"
        assert second_name != first_name
        deadline = faults.Deadline(60)
        while "user model reloaded" not in worker.log():
            worker.assert_alive()
            deadline.check("the worker to reload the checkpoint")
            time.sleep(0.1)
        assert f"-> {second_name}" in worker.log()
        offline.user_encoder.check()  # the offline engine takes the new file too
        phase2 = _events(6, 2, ids, start + 10**6, "a", seed=2)  # the same users, more events
        got = _answers(worker, settings, phase2)
        want = offline.run(phase2)
        assert {r.model for r in got} == {second_name}
        assert [[i.item_id for i in r.items] for r in got] == [[i.item_id for i in r.items] for r in want]
    finally:
        worker.stop()
