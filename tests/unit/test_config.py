import pytest

from recstream.streams.config import ConfigError, KafkaSettings
from recstream.streams.topics import DLQ, EVENT_TOPICS, ITEMS, RECOMMENDATIONS, TABLES, topic_specs


def test_defaults_point_at_the_local_broker():
    s = KafkaSettings.from_env({})
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.topic("clicks") == "clicks"
    assert s.app_id == "recstream"


def test_flags_win_over_environment():
    env = {"RECSTREAM_BROKER": "kafka-1:9092,kafka-2:9092", "RECSTREAM_TOPIC_PREFIX": "prod.", "RECSTREAM_APP_ID": "recs-a"}
    s = KafkaSettings.from_env(env)
    assert s.bootstrap_servers == ["kafka-1:9092", "kafka-2:9092"]
    assert s.topic("items") == "prod.items" and s.app_id == "recs-a"
    s = KafkaSettings.from_env(env, broker="other:9093", topic_prefix="", app_id="x")
    assert s.bootstrap_servers == ["other:9093"] and s.topic("items") == "items" and s.app_id == "x"


def test_app_id_defaults_to_prefixed_name_so_deployments_do_not_share_state():
    a = KafkaSettings.from_env({"RECSTREAM_TOPIC_PREFIX": "replay-7."})
    assert a.app_id == "replay-7.recstream"
    assert a.changelog("profiles") == "replay-7.recstream-profiles-changelog"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"broker": ""}, "broker"),
        ({"broker": "localhost"}, "not host:port"),
        ({"broker": "localhost:99999"}, "not host:port"),
        ({"topic_prefix": "bad prefix/"}, "topic prefix"),
        ({"app_id": "a b"}, "app id"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        KafkaSettings(**kwargs)


def test_topic_specs_cover_every_topic_with_compaction_where_state_lives():
    s = KafkaSettings(topic_prefix="p.")
    specs = {spec.name: spec for spec in topic_specs(s, partitions=6)}
    expected = {f"p.{t}" for t in (ITEMS, *EVENT_TOPICS, RECOMMENDATIONS, DLQ)} | {s.changelog(t) for t in TABLES}
    assert set(specs) == expected
    assert specs["p.items"].compacted
    assert all(specs[s.changelog(t)].compacted for t in TABLES)
    assert not any(specs[f"p.{t}"].compacted for t in EVENT_TOPICS)
    # keyed-by-user topics and profile changelog are co-partitioned
    assert {specs[f"p.{t}"].partitions for t in (*EVENT_TOPICS, RECOMMENDATIONS)} == {6}
    assert specs[s.changelog("profiles")].partitions == 6
    # the replicated catalog and its changelog stay on one partition
    assert specs["p.items"].partitions == specs[s.changelog("item-embeddings")].partitions == 1
    with pytest.raises(ValueError, match="partitions"):
        topic_specs(s, partitions=0)


def test_a_deployment_owns_its_topics_and_its_apps_internal_topics_only():
    from recstream.streams.topics import belongs_to

    plain = KafkaSettings()
    assert belongs_to(plain, "clicks") and belongs_to(plain, "recstream-profiles-changelog")
    assert belongs_to(plain, "recstream-__assignor-__leader")
    # an empty prefix must not claim the rest of the cluster
    assert not belongs_to(plain, "payments") and not belongs_to(plain, "other-app-changelog")
    staged = KafkaSettings(topic_prefix="stage.")
    assert belongs_to(staged, "stage.items") and not belongs_to(staged, "items")
    assert not belongs_to(staged, "stage.unrelated")
