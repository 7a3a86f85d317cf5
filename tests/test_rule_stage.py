"""The columnar replay's rules in a second process: the same alerts, order and evaluator state
as in process, and failures of either side reported, with no process left behind."""

from __future__ import annotations

import os
import signal

import pytest

import streams.fast.engine as E
import streams.fast.rule_stage as R
from streams.errors import CallstreamError
from streams.processor import CollectingOutputs
from streams.replay import FileOutputs, process_records
from streams.rules import AlertEvaluator, load_rules
from streams.settings import ProcessingSettings
from tests.test_columnar import CORNER_RULES, SCENARIO_LOGS, lines_records, scenario_lines

SETTINGS = ProcessingSettings()


@pytest.fixture
def short_segments(monkeypatch):
    """Segments of 6 h of boundaries instead of ~3 days: the scenario logs (1-2 days) then
    cross many segments, and the rules process gets many messages."""
    monkeypatch.setattr(E, "_SEGMENT", 360)


@pytest.fixture
def children(monkeypatch):
    """Every RulesProcess started, to check that none is left running."""
    made: list[R.RulesProcess] = []
    real = R.RulesProcess.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)
    monkeypatch.setattr(R.RulesProcess, "__init__", init)
    yield made
    for child in made:
        assert child.exitcode is not None, "a rules process was left running"
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)


def evaluator(doc=None) -> AlertEvaluator:
    return AlertEvaluator(load_rules(doc or {}, SETTINGS), SETTINGS)


def replay(records, rules, rules_process: bool, out_dir=None):
    outputs = FileOutputs(out_dir) if out_dir is not None else CollectingOutputs()
    replay = E.ColumnarReplay(SETTINGS, outputs, rules, rules_process=rules_process)
    replay.add_records(records)
    try:
        summary = replay.run()
    finally:
        if out_dir is not None:
            outputs.close()
    return summary, outputs


@pytest.mark.parametrize("doc", [{}, CORNER_RULES], ids=["shipped", "corners"])
@pytest.mark.parametrize("name", list(SCENARIO_LOGS))
def test_rules_process_gives_what_the_rules_give_in_process(name, doc, short_segments,
                                                            children):
    records = lines_records(scenario_lines(name))
    here, there = evaluator(doc), evaluator(doc)
    s_here, out_here = replay(records, here, False)
    s_there, out_there = replay(records, there, True)
    assert len(children) == 1 and children[0].exitcode == 0
    assert s_there == s_here
    assert s_here["alerts"] == len(out_here.alert_records) > 10
    assert out_there.alert_records == out_here.alert_records      # the same order too
    assert out_there.stats_records == out_here.stats_records
    assert there.evolved() == here.evolved()
    assert there.emitted == here.emitted == s_here["alerts"]


def test_the_evaluator_carries_on_after_a_replay_in_the_rules_process(short_segments,
                                                                     children):
    """The state handed back is all the evaluator needs: a second log replayed with the same
    evaluator raises what it raises after an in-process first replay."""
    first = lines_records(scenario_lines("major-incident"))
    second = lines_records(scenario_lines("data-gap"))
    here, there = evaluator(), evaluator()
    replay(first, here, False)
    replay(first, there, True)
    _, out_here = replay(second, here, False)
    _, out_there = replay(second, there, False)
    assert out_there.alert_records == out_here.alert_records
    assert there.evolved() == here.evolved()


def test_file_outputs_get_the_same_bytes(tmp_path, short_segments, children):
    records = lines_records(scenario_lines("major-incident"))
    for mode in (False, True):
        (tmp_path / str(mode)).mkdir()
        replay(records, evaluator(), mode, tmp_path / str(mode))
    for name in ("alerts.jsonl", "stats.jsonl", "dead_letters.jsonl"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes()
    assert (tmp_path / "True" / "alerts.jsonl").stat().st_size > 1000


class FailingRules(AlertEvaluator):
    """Fails in the rules process at its third segment: by an exception, or killed."""

    def __init__(self, how: str) -> None:
        super().__init__(load_rules({}, SETTINGS), SETTINGS)
        self.how = how
        self.batches = 0

    def evaluate_batch(self, batch, emit) -> None:
        self.batches += 1
        if self.batches == 3:
            if self.how == "raise":
                raise ValueError("a rule could not be evaluated")
            os.kill(os.getpid(), signal.SIGKILL)
        super().evaluate_batch(batch, emit)


@pytest.mark.parametrize("how, message", [
    ("raise", "the alert rules failed: ValueError: a rule could not be evaluated"),
    ("kill", "the alert rules' process exited unexpectedly (killed by SIGKILL); "
             "no alerts were written")])
def test_a_failing_rules_process_is_one_clear_error(how, message, short_segments, children):
    records = lines_records(scenario_lines("major-incident"))
    rules = FailingRules(how)
    with pytest.raises(CallstreamError) as err:
        replay(records, rules, True)
    assert str(err.value) == message
    assert rules.emitted == 0 and not rules.states      # nothing half taken over
    assert len(children) == 1


def test_an_error_in_the_replay_stops_the_rules_process(short_segments, children, monkeypatch):
    records = lines_records(scenario_lines("major-incident"))
    calls = []

    def broken_stats(self, data):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(CollectingOutputs, "stats_lines", broken_stats, raising=False)
    with pytest.raises(OSError, match="No space left"):
        replay(records, evaluator(), True)
    assert len(children) == 1 and children[0].exitcode is not None


def test_small_replays_keep_their_rules_in_process(monkeypatch, children):
    records = lines_records(scenario_lines("major-incident"))
    summary, _ = process_records(records, SETTINGS, evaluator(), engine="columnar")
    assert summary["alerts"] > 10 and children == []
    assert R.use_process(R.RULES_PROCESS_MIN_EVENTS, None) == (len(os.sched_getaffinity(0)) > 1)
    assert not R.use_process(R.RULES_PROCESS_MIN_EVENTS - 1, None)
    assert R.use_process(10, True) and not R.use_process(10 ** 9, False)


def test_without_a_fork_the_rules_run_in_process(monkeypatch, children):
    def no_fork():
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(R.os, "fork", no_fork)
    records = lines_records(scenario_lines("major-incident"))
    here, there = evaluator(), evaluator()
    _, out_here = replay(records, here, False)
    _, out_there = replay(records, there, True)
    assert out_there.alert_records == out_here.alert_records and out_here.alert_records
    assert there.evolved() == here.evolved()
