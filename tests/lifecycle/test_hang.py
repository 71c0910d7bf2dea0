"""The hang decision (lifecycle/hang.py): the limit, and when a watched attempt is hung. Pure: times are given."""

from __future__ import annotations

import pytest

from orchestrator.lifecycle.hang import BEFORE_FIRST_STEP_S, FLOOR_S, STEP_FACTOR, Watch, hung, limit_s


def test_the_limit_is_hang_after_when_set_whatever_the_steps() -> None:
    assert limit_s(20, None) == 20
    assert limit_s(20, 100.0) == 20


def test_the_default_is_20_minutes_until_a_step_interval_is_known() -> None:
    assert limit_s(None, None) == BEFORE_FIRST_STEP_S == 20 * 60


@pytest.mark.parametrize(("slowest", "limit"), [(1.0, FLOOR_S), (29.0, FLOOR_S), (31.0, 310.0), (120.0, 1200.0)])
def test_the_default_is_ten_times_the_slowest_step_and_at_least_five_minutes(slowest: float, limit: float) -> None:
    assert STEP_FACTOR == 10 and FLOOR_S == 300
    assert limit_s(None, slowest) == limit


def test_hung_needs_no_output_and_no_progress_for_the_limit() -> None:
    assert hung(20, 20, 20)
    assert not hung(20, 19.9, 100)  # output: alive
    assert not hung(20, 100, 19.9)  # progress: alive
    assert not hung(20, 5, 5)


def test_a_watch_is_hung_only_after_the_limit_of_silence() -> None:
    w = Watch.begin(now=1000.0, output_at=990.0, started_at=900.0, step=3)
    assert w.output_at == 990.0 and w.progress_at == 990.0  # progress is read from the output: no later than it
    assert not w.is_hung(1009.0, 20)
    assert w.is_hung(1010.0, 20)
    reason = w.reason(1012.0, 20)
    assert reason == ("no output and no progress for 22 s (limit 20 s, spec.resilience.hang_after); "
                      "last step seen: 3")


def test_output_alone_keeps_it_alive_and_the_mtime_never_goes_back() -> None:
    w = Watch.begin(now=100.0, output_at=None, started_at=50.0, step=None)
    assert w.output_at == 50.0  # no log yet: silent since the attempt started
    w = w.seen(now=200.0, output_at=190.0, step=None)
    assert not w.is_hung(205.0, 20) and w.progress_at == 50.0
    assert w.seen(now=210.0, output_at=150.0, step=None).output_at == 190.0


def test_a_restarted_supervisor_judges_from_the_logs_mtime() -> None:
    """It starts watching long after the last output: the silence already counts."""
    w = Watch.begin(now=1000.0, output_at=970.0, started_at=100.0, step=4)
    assert w.is_hung(1000.0, 20)
    assert "no output and no progress for 30 s" in w.reason(1000.0, 20)


def test_step_intervals_set_the_default_limit() -> None:
    w = Watch.begin(now=0.0, output_at=0.0, started_at=0.0, step=None)
    assert w.limit(None) == BEFORE_FIRST_STEP_S
    w = w.seen(now=10.0, output_at=10.0, step=1)  # the first step: no interval yet
    assert w.slowest_step_s is None and w.limit(None) == BEFORE_FIRST_STEP_S
    w = w.seen(now=70.0, output_at=70.0, step=2)
    assert w.slowest_step_s == 60.0 and w.limit(None) == 600.0
    w = w.seen(now=100.0, output_at=100.0, step=5)  # three steps in one look: 10 s each, the slowest stays 60 s
    assert w.slowest_step_s == 60.0
    w = w.seen(now=100.0, output_at=100.0, step=1)  # the step went back (a new counter): no interval, new step
    assert w.step == 1 and w.slowest_step_s == 60.0
    assert not w.is_hung(699.0, None) and w.is_hung(700.0, None)
    assert "10 x the slowest step, 60 s" in w.reason(700.0, None)


def test_the_reason_says_when_no_step_was_seen() -> None:
    w = Watch.begin(now=0.0, output_at=0.0, started_at=0.0, step=None)
    assert w.reason(1300.0, None).endswith("(limit 1200 s, the default before the first step); no step seen")


def test_start_up_has_its_own_limit_and_hang_after_applies_once_steps_are_seen() -> None:
    """Loading a model is silent for minutes: hang_after (20 s) must not end it; first_step_within does."""
    w = Watch.begin(now=0.0, output_at=0.0, started_at=0.0, step=None)
    assert not w.is_hung(60.0, 20) and w.is_hung(1200.0, 20)
    assert w.is_hung(90.0, 20, first_step_within=90)
    assert "spec.resilience.first_step_within" in w.reason(90.0, 20, 90)
    stepping = w.seen(100.0, 100.0, 1)
    assert stepping.is_hung(121.0, 20) and "spec.resilience.hang_after" in stepping.reason(121.0, 20)
