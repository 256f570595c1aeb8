import pytest

from streams.app import WorkerConfig
from streams.cli import build_parser, worker_config


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"partitions": 0}, "partitions"),
        ({"emit": "sometimes"}, "emit"),
        ({"batch_max": 0}, "batch sizes"),
        ({"batch_within_s": 0}, "batch window"),
        ({"processing_guarantee": "maybe"}, "processing guarantee"),
        ({"item_fields": ("title", "price")}, "item fields"),
        ({"torch_threads": 0}, "torch threads"),
        ({"max_task_idle_ms": -2}, "max task idle"),
        ({"ranker": "magic"}, "ranker must be one of blend, text, learned"),
        ({"ranker": "learned"}, "the learned ranker needs a user model"),
        ({"user_model": "m.ckpt"}, "a user model needs --ranker learned"),
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
    from streams.config import KafkaSettings
    from streams.worker import claim_state

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
    from scoring.blend import DEFAULT_WEIGHTS, BlendWeights

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
