import pytest

from recstream.streams import produce
from recstream.streams.produce import Pacer, parse_time


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, s):
        self.slept.append(round(s, 6))
        self.now += s


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(produce.time, "monotonic", c.monotonic)
    monkeypatch.setattr(produce.time, "sleep", c.sleep)
    return c


def test_rate_spaces_events_evenly(clock):
    pacer = Pacer(rate=4)
    for ts in (0, 0, 0, 0, 0):
        pacer.wait(ts)
    # events 2..5 are due 0.25 s apart from the first
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]


def test_speedup_follows_event_time(clock):
    pacer = Pacer(speedup=10)
    for ts in (1_000, 3_000, 3_000, 11_000):
        pacer.wait(ts)
    # 2 s of event time is 0.2 s at 10x; then nothing; then 8 s → 0.8 s
    assert clock.slept == [0.2, 0.8]


def test_as_fast_as_possible_never_sleeps(clock):
    pacer = Pacer()
    for ts in range(0, 10_000, 1000):
        pacer.wait(ts)
    assert clock.slept == []


@pytest.mark.parametrize("kwargs, fragment", [({"rate": 0}, "rate"), ({"speedup": -1}, "speedup"), ({"rate": 1, "speedup": 2}, "not both")])
def test_bad_pacing_is_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Pacer(**kwargs)


def test_parse_time_reads_dates_as_utc():
    assert parse_time("1970-01-02") == 86_400_000
    assert parse_time("2018-09-24T12:00:00+02:00") == parse_time("2018-09-24T10:00:00")
    with pytest.raises(ValueError, match="not a date"):
        parse_time("yesterday")
