import pytest

from recstream.streams.app import WorkerConfig
from recstream.streams.cli import build_parser, worker_config


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"partitions": 0}, "partitions"),
        ({"emit": "sometimes"}, "emit"),
        ({"batch_max": 0}, "batch sizes"),
        ({"batch_within_s": -0.01}, "batch window"),
        ({"processing_guarantee": "maybe"}, "processing guarantee"),
        ({"item_fields": ("title", "price")}, "item fields"),
        ({"torch_threads": 0}, "torch threads"),
        ({"max_task_idle_ms": -2}, "max task idle"),
        ({"ranker": "magic"}, "ranker must be one of blend, text, learned"),
        ({"ranker": "learned"}, "the learned ranker needs a user model"),
        ({"user_model": "m.ckpt"}, "a user model needs --ranker learned"),
        ({"session_timeout_s": 0}, "session timeout and heartbeat interval must be positive"),
        ({"heartbeat_interval_s": -1}, "session timeout and heartbeat interval must be positive"),
        ({"session_timeout_s": 6, "heartbeat_interval_s": 3}, "heartbeat interval must be at most a third of the session timeout"),
        ({"session_timeout_s": 3, "heartbeat_interval_s": 1}, "session timeout must be between 6 and 1800 seconds"),
        ({"session_timeout_s": 3600}, "session timeout must be between 6 and 1800 seconds"),
    ],
)
def test_bad_worker_settings_are_refused_with_the_reason(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        WorkerConfig(**kwargs)


def test_worker_flags_and_environment(monkeypatch):
    monkeypatch.setenv("RECSTREAM_K", "7")
    monkeypatch.setenv("RECSTREAM_EMIT", "per-event")
    monkeypatch.setenv("RECSTREAM_EXCLUDE_SEEN", "false")
    monkeypatch.setenv("RECSTREAM_TORCH_THREADS", "1")
    args = build_parser().parse_args(["worker", "--topic-prefix", "p.", "--batch-within-ms", "20", "--item-fields", "title, description"])
    cfg = worker_config(args)
    assert (cfg.k, cfg.emit, cfg.exclude_seen, cfg.torch_threads) == (7, "per-event", False, 1)
    assert cfg.batch_within_s == pytest.approx(0.02)
    assert cfg.item_fields == ("title", "description")
    assert cfg.kafka.topic("clicks") == "p.clicks" and cfg.kafka.app_id == "p.recstream"
    # a flag beats the environment
    cfg = worker_config(build_parser().parse_args(["worker", "-k", "3", "--exclude-seen"]))
    assert cfg.k == 3 and cfg.exclude_seen is True


def test_local_state_is_discarded_only_after_an_unclean_stop(tmp_path):
    from recstream.streams.config import KafkaSettings
    from recstream.streams.worker import claim_state

    config = WorkerConfig(kafka=KafkaSettings(topic_prefix="p."), data_dir=tmp_path)
    state = tmp_path / config.kafka.app_id
    (state / "tables").mkdir(parents=True)
    (state / "tables" / "profiles.db").write_bytes(b"rocksdb")

    marker = claim_state(config)  # no marker yet: the previous stop was clean
    assert marker.exists() and (state / "tables" / "profiles.db").exists()
    marker.unlink()  # what a clean stop does
    marker = claim_state(config)
    assert (state / "tables" / "profiles.db").exists()

    # the marker is still there: the worker was killed; its RocksDB files go
    marker = claim_state(config)
    assert marker.exists() and not state.exists()


def test_the_worker_ranks_with_the_blend_by_default_and_other_rankers_by_name(tmp_path):
    from recstream.scoring.blend import DEFAULT_WEIGHTS, BlendWeights

    cfg = worker_config(build_parser().parse_args(["worker"]))
    assert cfg.ranker == "blend" and cfg.blend_weights == DEFAULT_WEIGHTS
    assert worker_config(build_parser().parse_args(["worker", "--ranker", "text"])).blend_weights is None
    weights = tmp_path / "w.json"
    BlendWeights(1.0, 2.0, 0.5, "rank").save(weights)
    cfg = worker_config(build_parser().parse_args(["worker", "--blend", str(weights)]))
    assert cfg.ranker == "blend" and cfg.blend_weights == BlendWeights(1.0, 2.0, 0.5, "rank")
    # the old way to ask for the learned encoder still works: --user-model alone
    cfg = worker_config(build_parser().parse_args(["worker", "--user-model", "m.ckpt"]))
    assert cfg.ranker == "learned" and cfg.blend_weights is None
    with pytest.raises(ValueError, match="blend weights are for the blend ranker, not --ranker text"):
        worker_config(build_parser().parse_args(["worker", "--ranker", "text", "--blend", str(weights)]))


def test_session_timeout_and_heartbeat_are_worker_settings_passed_to_faust(monkeypatch, tmp_path):
    from recstream.streams.config import KafkaSettings

    cfg = worker_config(build_parser().parse_args(["worker"]))
    assert (cfg.session_timeout_s, cfg.heartbeat_interval_s) == (60.0, 3.0)  # faust's own defaults
    monkeypatch.setenv("RECSTREAM_SESSION_TIMEOUT", "12")
    monkeypatch.setenv("RECSTREAM_HEARTBEAT_INTERVAL", "2")
    cfg = worker_config(build_parser().parse_args(["worker"]))
    assert (cfg.session_timeout_s, cfg.heartbeat_interval_s) == (12.0, 2.0)
    cfg = worker_config(build_parser().parse_args(["worker", "--session-timeout", "9", "--heartbeat-interval", "1.5"]))
    assert (cfg.session_timeout_s, cfg.heartbeat_interval_s) == (9.0, 1.5)  # a flag beats the environment
    with pytest.raises(ValueError, match="at most a third"):
        worker_config(build_parser().parse_args(["worker", "--session-timeout", "6", "--heartbeat-interval", "2.5"]))

    # what the Faust app (and so its aiokafka consumer) is given; a session timeout above
    # faust's 90 s request timeout raises the request timeout with it (faust refuses it otherwise)
    from recstream.streams.app import Pipeline

    class _Encoder:  # no model load: the app's settings are all this test reads
        dim, name = 8, "stub"

    for session, heartbeat in ((9.0, 1.5), (120.0, 10.0)):
        config = WorkerConfig(
            kafka=KafkaSettings(topic_prefix="p."), data_dir=tmp_path, device="cpu", session_timeout_s=session, heartbeat_interval_s=heartbeat
        )
        conf = Pipeline(config, encoder=_Encoder()).app.conf
        assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (session, heartbeat)
        assert conf.broker_request_timeout >= conf.broker_session_timeout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(adapt=True, ranker="text"), "weight adaptation (--adapt) is for the blend ranker, not --ranker text"),
        (dict(adapt_rate=-1.0), "adaptation rate: must be finite and >= 0"),
        (dict(adapt_epoch=0), "adaptation epoch and k: must be at least 1"),
        (dict(adapt_step=0.9), "adaptation step: must be in (0, 0.5]"),
    ],
)
def test_bad_adaptation_settings_are_refused_with_their_reason(kwargs, message) -> None:
    from recstream.streams.app import WorkerConfig

    with pytest.raises(ValueError) as err:
        WorkerConfig(**kwargs)
    assert message in str(err.value)


def test_a_failing_state_volume_stops_the_worker_with_status_74(monkeypatch, caplog):
    """A write the local RocksDB refuses for its storage ends the process (no dead letters for
    the records in hand); other errors, and the lock faust retries, propagate as before."""
    from recstream.streams import state

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(state.os, "_exit", fake_exit)
    monkeypatch.setattr(state.logging, "shutdown", lambda: None)
    full = Exception("IO error: No space left on device: While appending to file: /data/profiles-0.db/000004.log: No space left on device")
    with pytest.raises(SystemExit), caplog.at_level("CRITICAL", logger="recstream.worker"):
        with state.state_write("table profiles, partition 0"):
            raise full
    assert exits == [state.EXIT_STATE_WRITE] == [74]
    assert "cannot write the local state (table profiles, partition 0): IO error: No space left on device" in caplog.text
    for other in (ValueError("a poison record"), Exception("IO error: While lock file: /data/LOCK: Resource temporarily unavailable")):
        with pytest.raises(type(other)):
            with state.state_write("table profiles, partition 0"):
                raise other
    assert exits == [74]


def test_the_catalog_table_is_a_global_table_for_faust(tmp_path):
    """Every worker of a group gets the catalog changelog (faust assigns a global table's
    changelog to all of them) and applies each record as it arrives."""
    from recstream.streams.app import Pipeline
    from recstream.streams.config import KafkaSettings

    class _Encoder:
        dim, name = 8, "stub"

    pipeline = Pipeline(WorkerConfig(kafka=KafkaSettings(topic_prefix="p."), data_dir=tmp_path, device="cpu"), encoder=_Encoder())
    assert pipeline.items_table.is_global and pipeline.items_table.standby_buffer_size == 1
    assert not pipeline.profiles.is_global


async def test_after_a_rebalance_the_evidence_follows_exactly_the_partitions_not_held(tmp_path, monkeypatch):
    """faust calls a table's recovery callbacks in no set order (a set): whatever the order,
    the worker rebuilds its own partitions' models first, then follows the others'."""
    import itertools

    from recstream.streams.app import Pipeline
    from recstream.streams.config import KafkaSettings

    class _Encoder:
        dim, name = 8, "stub"

    pipeline = Pipeline(WorkerConfig(kafka=KafkaSettings(topic_prefix="p."), data_dir=tmp_path, device="cpu", partitions=4), encoder=_Encoder())
    followed: list[set[int]] = []
    monkeypatch.setattr(pipeline.evidence, "follow", lambda partitions: followed.append(set(partitions)))
    monkeypatch.setattr(pipeline.evidence, "start", lambda: None)
    held = {1, 3}
    monkeypatch.setattr(pipeline, "active_partitions", lambda: set(held))

    async def nothing() -> None:
        return None

    for name in ("rebuild_cooccurrence", "rebuild_weights"):
        monkeypatch.setattr(pipeline, name, nothing)
    monkeypatch.setattr(pipeline, "rebuild_popularity", _own_partitions_setter(pipeline))
    callbacks = list(pipeline.profiles._recover_callbacks)
    for order in itertools.permutations(callbacks):
        pipeline.own_partitions = frozenset({0, 1, 2, 3})  # the previous assignment: all of them
        for fun in order:
            await fun()
        assert followed[-1] == {0, 2}


def _own_partitions_setter(pipeline):
    async def rebuild() -> None:
        pipeline.own_partitions = frozenset(pipeline.active_partitions())

    return rebuild
