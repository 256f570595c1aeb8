"""Poison batches: a processing fault in one micro-batch loses nothing and applies nothing twice.

Issue "Poison batches": an exception inside the encoder or the scoring of one micro-batch
must not lose the batch. The worker retries the batch's records one by one; the records that
keep failing go to the dead-letter topic with the reason, the others are applied once.

The faults are injected into a real ``recstream worker`` subprocess without any test hook in
production code: a ``sitecustomize.py`` in a temporary folder, first on the worker's
``PYTHONPATH``, monkeypatches at interpreter start-up

* ``text_encoder.TextEncoder.encode_numpy`` (review texts of a batch are embedded in one call
  by ``engine.Engine.process``) to raise whenever a text of the call contains
  :data:`POISON`: a *permanent* fault of the records that carry it;
* ``rankers.score_topk`` and ``rankers.candidate_blend_topk`` (the text and the
  blend ranking, imported by name into ``scoring.rankers``) to raise once, on the
  first call after the test creates an "arm" file: a *transient* fault.

Every case produces exactly :data:`BATCH` event records in one burst to a worker started with
``--batch-max BATCH`` and a long batch window, so the records form one micro-batch (the buffer
is handed over the moment it holds BATCH records); the test checks this from the worker log
line ``a micro-batch of N records failed``.

Proven, from outside the worker (recommendations topic, dead-letter topic, profiles changelog):

* a batch mixing poison reviews with good clicks, purchases and reviews of the same users:
  each good event gets exactly one recommendation and is counted once in its user's profile
  (``applied``); each poison review is dead-lettered exactly once, with the exception's type
  and message and its original key and value bytes, and is applied to no profile;
* a transient scoring fault: the whole batch is retried, nothing is dead-lettered, each event
  gets exactly one recommendation and is applied once to its profile;
* the popularity counts of a batch that failed in scoring are not counted twice (a
  production bug found here, since fixed: the engine rolls them back).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402
from faults import Outputs, Sent, Worker, count, key_on_partition, now_ms, send_raw  # noqa: E402

from recstream.scoring.popularity import DecayedPopularity  # noqa: E402
from recstream.streams import topics as T  # noqa: E402
from recstream.streams.client import read_to_end, tail  # noqa: E402
from recstream.streams.records import Click, Purchase, Review, encode, record_key  # noqa: E402
from recstream.streams.state import decode_log2, popularity_key  # noqa: E402

pytestmark = pytest.mark.integration

#: Review texts containing this string make the (patched) encoder raise.
POISON = "POISON"
#: Records per case, and the worker's --batch-max: one case is one micro-batch.
BATCH = 24
#: Positions of the poison reviews in a case's batch (users take turns: slot i is users[i % 3]).
POISON_SLOTS = frozenset({3, 10, 14, 21})
DEADLINE_S = 90
POPULARITY_HALF_LIFE_MS = 7 * 24 * 3600 * 1000  # the worker's default (--popularity-half-life-days 7)

SITECUSTOMIZE = textwrap.dedent(
    '''
    """Fault injection for tests/integration/test_poison_batches.py (this worker process only)."""
    import os
    import sys
    from pathlib import Path

    import recstream.encoders.text as text_encoder
    import recstream.scoring.rankers as rankers

    _MARKER = os.environ["RECSTREAM_TEST_POISON_MARKER"]
    _ARM = Path(os.environ["RECSTREAM_TEST_SCORING_FAULT_FILE"])
    _encode_numpy = text_encoder.TextEncoder.encode_numpy


    def encode_numpy(self, texts):
        poisoned = sum(_MARKER in text for text in texts)
        if poisoned:
            raise RuntimeError(f"injected encoder fault: {poisoned} of {len(texts)} texts contain {_MARKER}")
        return _encode_numpy(self, texts)


    def armed(rank):
        def ranking(*args, **kwargs):
            try:
                _ARM.unlink()  # armed: this call, and only this one, fails
            except FileNotFoundError:
                return rank(*args, **kwargs)
            raise RuntimeError("injected transient scoring fault")
        return ranking


    text_encoder.TextEncoder.encode_numpy = encode_numpy
    # the text ranking's top-k and the blend's (the default ranker)
    rankers.score_topk = armed(rankers.score_topk)
    rankers.candidate_blend_topk = armed(rankers.candidate_blend_topk)
    print("recstream-test: faults injected", file=sys.stderr, flush=True)
    '''
)


class FaultyWorker(Worker):
    """The worker with the faults of :data:`SITECUSTOMIZE` and a way to arm the scoring fault."""

    arm_file: Path

    def arm_scoring_fault(self) -> None:
        self.arm_file.touch()


@pytest.fixture(scope="module")
def worker(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyWorker]:
    workdir = tmp_path_factory.mktemp("poison")
    inject = workdir / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    arm_file = workdir / "arm-scoring-fault"
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
        "RECSTREAM_TEST_POISON_MARKER": POISON,
        "RECSTREAM_TEST_SCORING_FAULT_FILE": str(arm_file),
    }
    w = FaultyWorker(
        faults.fresh_settings(kafka_broker, "poison"),
        workdir,
        ["--emit", "per-event", "-k", "5", "--batch-max", str(BATCH), "--batch-within-ms", "30000", "--catalog-batch-max", "50"],
        env=env,
    )
    w.arm_file = arm_file
    try:
        w.start()
        assert "recstream-test: faults injected" in w.log(), "the sitecustomize did not run in the worker"
        yield w
    finally:
        w.stop()


def _produce(worker: Worker, events: list[Click | Purchase | Review]) -> list[Sent]:
    assert len(events) == BATCH, "each case must fill exactly one micro-batch"
    kinds = {"click": T.CLICKS, "purchase": T.PURCHASES, "review": T.REVIEWS}
    assert worker.producer is not None
    return send_raw(worker.producer, worker.settings, [(kinds[e.kind], record_key(e), encode(e)) for e in events])


def _users(tag: str) -> list[str]:
    """Three users, on both partitions of the event topics."""
    return [key_on_partition(f"{tag}-a", 0), key_on_partition(f"{tag}-b", 1), key_on_partition(f"{tag}-c", 0)]


def _wait_batch_failure(worker: Worker, before: int, outputs: Outputs) -> list[int]:
    """Wait until the worker logged one more failed micro-batch; return the new sizes."""
    deadline = faults.Deadline(DEADLINE_S)
    while len(worker.failed_batch_sizes()) <= before:
        worker.assert_alive()
        deadline.check("the worker to log a failed micro-batch")
        outputs.poll()
    return worker.failed_batch_sizes()[before:]


def test_poison_reviews_are_dead_lettered_and_the_rest_of_their_batch_is_applied_once(worker: FaultyWorker) -> None:
    users = _users("poison")
    taste = {users[0]: "scifi", users[1]: "cooking", users[2]: "garden"}
    ts = now_ms() - 60_000
    events: list[Click | Purchase | Review] = []
    good: list[Click | Purchase | Review] = []
    poison: list[Review] = []
    for i in range(BATCH):
        user, item = users[i % 3], f"{taste[users[i % 3]]}-{i // 3 + 1:02d}"
        event_id = f"{user}-{i}"
        if i in POISON_SLOTS:
            # a rating away from 3, so that the text counts; an item no other event touches
            event: Click | Purchase | Review = Review(
                user, f"poisoned-{len(poison) + 1}", 1.0 if i % 2 else 5.0, f"Contains {POISON} number {len(poison)}.", ts + i, event_id
            )
            poison.append(event)
        else:
            kind = (i // 3) % 3
            if kind == 0:
                event = Click(user, item, ts + i, event_id)
            elif kind == 1:
                event = Purchase(user, item, ts + i, event_id, quantity=1)
            else:
                event = Review(user, item, 4.5, "Lovely, would read again.", ts + i, event_id)
            good.append(event)
        events.append(event)

    outputs = Outputs(worker.settings)
    try:
        failures_before = len(worker.failed_batch_sizes())
        sent = _produce(worker, events)
        by_event_id = {e.event_id: s for e, s in zip(events, sent)}
        good_sent = [by_event_id[e.event_id] for e in good]
        poison_sent = [by_event_id[e.event_id] for e in poison]
        assert {s.partition for s in poison_sent} == {0, 1}
        outputs.wait_for((s.coord for s in good_sent), (s.coord for s in poison_sent), DEADLINE_S, worker.assert_alive)
        assert _wait_batch_failure(worker, failures_before, outputs) == [BATCH], "poison and good records were not one micro-batch"
        expected_applied = count(e.user_id for e in good)
        profiles = faults.wait_applied(worker.settings, expected_applied, DEADLINE_S, worker.assert_alive)
        outputs.read_to_end()
        worker.assert_alive()

        assert not outputs.recs.rejected and not outputs.dlq.rejected, "an output record breaks the contract"
        recs, letters = outputs.recs_by_coord(), outputs.letters_by_coord()
        for s, event in zip(good_sent, good):
            assert len(recs[s.coord]) == 1, f"{event.event_id}: {len(recs[s.coord])} recommendations"
            assert recs[s.coord][0].trigger.event_id == event.event_id
            assert s.coord not in letters
        for s in poison_sent:
            assert s.coord not in recs
            assert len(letters[s.coord]) == 1
            letter = letters[s.coord][0]
            assert letter.error.startswith("processing failed: RuntimeError: injected encoder fault"), letter.error
            assert letter.original_key() == s.key and letter.original_value() == s.value
        assert len(outputs.dlq.entries) == len(poison)
        for user in users:
            history = [h.item_id for h in profiles[user].history]
            assert not any(item.startswith("poisoned-") for item in history), "a poison review reached a profile"
            assert profiles[user].applied == expected_applied[user]
        print(
            f"\npoison batch: {BATCH} records in one micro-batch, {len(good)} applied once each, "
            f"{len(poison)} dead-lettered; failed batch sizes {worker.failed_batch_sizes()}"
        )
    finally:
        outputs.close()


def _clean_batch(tag: str, items: str) -> list[Click | Purchase | Review]:
    users = _users(tag)
    ts = now_ms() - 60_000
    events: list[Click | Purchase | Review] = []
    for i in range(BATCH):
        user = users[i % 3]
        item = f"{items}-{i % 8 + 1:02d}"
        if i % 4 == 3:
            events.append(Review(user, item, 5.0, "Exactly what I wanted.", ts + i, f"{user}-{i}"))
        elif i % 4 == 2:
            events.append(Purchase(user, item, ts + i, f"{user}-{i}"))
        else:
            events.append(Click(user, item, ts + i, f"{user}-{i}"))
    return events


def _run_transient_fault(worker: FaultyWorker, events: list[Click | Purchase | Review]) -> tuple[list[Sent], Outputs]:
    outputs = Outputs(worker.settings)
    failures_before = len(worker.failed_batch_sizes())
    worker.arm_scoring_fault()
    sent = _produce(worker, events)
    outputs.wait_for((s.coord for s in sent), (), DEADLINE_S, worker.assert_alive)
    assert _wait_batch_failure(worker, failures_before, outputs) == [BATCH], "the events were not one micro-batch"
    assert not worker.arm_file.exists(), "the injected scoring fault never fired"
    assert "injected transient scoring fault" in worker.log()
    return sent, outputs


def test_transient_scoring_fault_is_retried_without_loss_dead_letters_or_double_application(worker: FaultyWorker) -> None:
    events = _clean_batch("transient", "running")
    sent, outputs = _run_transient_fault(worker, events)
    try:
        expected_applied = count(e.user_id for e in events)
        faults.wait_applied(worker.settings, expected_applied, DEADLINE_S, worker.assert_alive)
        outputs.read_to_end()
        worker.assert_alive()
        assert not outputs.recs.rejected and not outputs.dlq.rejected, "an output record breaks the contract"
        recs, letters = outputs.recs_by_coord(), outputs.letters_by_coord()
        for s, event in zip(sent, events):
            assert len(recs.get(s.coord, [])) == 1, f"{event.event_id}: {len(recs.get(s.coord, []))} recommendations"
            assert recs[s.coord][0].trigger.event_id == event.event_id
            assert s.coord not in letters, f"{event.event_id} was dead-lettered: {letters[s.coord][0].error}"
        assert not any(letter.error.startswith("processing failed") and "scoring" in letter.error for letter in outputs.dlq.entries)
        print(
            f"\ntransient scoring fault: {BATCH} records in one failed micro-batch, all retried and applied once, "
            f"0 dead-lettered; failed batch sizes {worker.failed_batch_sizes()}"
        )
    finally:
        outputs.close()


def _latest_popularity(worker: Worker) -> dict[bytes, float]:
    consumer = tail(worker.settings, worker.settings.changelog(T.POPULARITY_TABLE))
    try:
        latest = {r.key: decode_log2(r.value) for r in read_to_end(consumer, [*consumer.assignment()]) if r.value is not None}
    finally:
        consumer.close()
    return latest


def test_transient_scoring_fault_does_not_count_popularity_twice(worker: FaultyWorker) -> None:
    events = _clean_batch("popularity", "jazz")
    sent, outputs = _run_transient_fault(worker, events)
    outputs.close()
    faults.wait_applied(worker.settings, count(e.user_id for e in events), DEADLINE_S, worker.assert_alive)
    expected: dict[int, DecayedPopularity] = {}
    for s, event in zip(sent, events):
        expected.setdefault(s.partition, DecayedPopularity(POPULARITY_HALF_LIFE_MS)).add(event.item_id, event.ts)
    keys = {popularity_key(p, item): log2 for p, pop in expected.items() for item, log2 in pop.items()}
    # the profiles are final and the popularity writes of the same applies follow them: wait
    # until every count is there and two reads agree
    deadline, previous = faults.Deadline(30), None
    while True:
        stored = _latest_popularity(worker)
        if all(k in stored for k in keys) and stored == previous:
            break
        deadline.check("stable popularity counts")
        previous = stored
        time.sleep(0.5)  # between two full reads of the changelog
    # log2 of the decayed count: counting every event twice adds exactly 1
    off = {k.decode(): round(stored.get(k, float("nan")) - v, 6) for k, v in keys.items()}
    assert all(d == 0 for d in off.values()), f"stored minus expected log2 popularity per item: {off}"
