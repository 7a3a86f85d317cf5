"""The idle-partition rule of the live joins (`JoinStage._watermark`), the one place wall
clock enters: a partition whose topics are caught up and quiet for `idle_timeout` is
released with the global watermark, once that watermark has been known for `idle_timeout`.

Pure rule, no broker: the stage reads only the partitions' end offsets from its consumer,
given here as a table."""

from __future__ import annotations

from streams.fast.partjoin import ColumnarPartitionJoin
from streams.live import JoinStage, LiveOptions, LiveState, _Partition
from streams.settings import ProcessingSettings

TIMEOUT = 2.0


class EndOffsets:
    """What `_watermark` asks the consumer: the end offset of a topic partition."""

    def __init__(self, high: int) -> None:
        self.high = high

    def highwater(self, tp) -> int:
        return self.high


def stage_and_partition(now: float) -> tuple[JoinStage, _Partition]:
    settings = ProcessingSettings()
    opts = LiveOptions("127.0.0.1:1", "t.", "g", 1, settings, lambda: None,
                       idle_timeout_s=TIMEOUT)
    stage = JoinStage(opts, None, LiveState(), None)
    stage.consumer = EndOffsets(10)
    part = _Partition(ColumnarPartitionJoin(0, settings))
    part.offsets = [10, 10, 10]                     # caught up on all three topics
    part.last_seen = [now - 5.0] * 3                # and quiet for longer than the timeout
    return stage, part


def test_a_quiet_partition_takes_a_global_watermark_known_for_the_timeout_at_once():
    now = 1000.0
    stage, part = stage_and_partition(now)
    stage.state.advance_global(600_000)
    stage.state.global_since = now - TIMEOUT       # learned a timeout ago
    assert stage._watermark(part, now) == 600_000


def test_a_global_watermark_just_learned_waits_for_the_timeout():
    now = 1000.0
    stage, part = stage_and_partition(now)
    stage.state.advance_global(600_000)
    stage.state.global_since = now - 0.5
    assert stage._watermark(part, now) is None                  # nothing to release yet
    assert stage._watermark(part, now + 1.0) is None
    assert stage._watermark(part, now + 1.5) == 600_000          # known for 2 s now
    # a higher one learned later is a candidate of its own, with its own time
    stage.state.advance_global(660_000)
    stage.state.global_since = now + 1.5
    assert stage._watermark(part, now + 2.0) == 600_000
    assert stage._watermark(part, now + 3.5) == 660_000


def test_a_partition_that_is_not_quiet_keeps_its_own_watermark():
    now = 1000.0
    stage, part = stage_and_partition(now)
    part.last_seen[1] = now - 0.5                   # one topic heard from just now
    stage.state.advance_global(600_000)
    stage.state.global_since = now - 60.0
    assert stage._watermark(part, now) is None      # no events of its own: none
