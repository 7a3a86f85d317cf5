"""The alert rules' part of the columnar replay, in this process or in a second one.

Per segment of boundaries the rules read calls waiting and the longest waits (swept from the
join's waiting intervals), each trust's latest call and the figures of the windows they read,
as a `streams.rules.BoundaryBatch` for `AlertEvaluator.evaluate_batch` (`RuleColumns`).

On a large replay that evaluation runs in a forked child (`RulesProcess`) a segment or so
behind the window records: the replay itself is one thread, so the second core sat idle
while the rules took ~10 % of the run on the first. The child inherits the evaluator and
the join's arrays (no imports, no copies) and is sent each segment's captured window
aggregates (~1-2 MB); it evaluates the segments in order with the same evaluator, so the
alerts, their order and the evaluator's final state are those of the in-process path
(`tests/test_rule_stage.py` checks byte for byte). Small replays, and platforms without
`fork`, keep the rules in process (`InlineRules`)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
from multiprocessing.connection import Connection
from typing import Callable

import numpy as np

from streams.childproc import die_with_parent
from streams.errors import CallstreamError
from streams.fast.alerts import WaitingSweep, last_calls, record_figures
from streams.replay import alert_line
from streams.rules import BoundaryBatch, ClosedWindows

#: below this many events a replay keeps its rules in process (a fork and the hand-over cost
#: ~0.1 s of the replay's time; the rules of 2M events ~0.3 s)
RULES_PROCESS_MIN_EVENTS = 2_000_000
#: segments queued for the rules process before the replay waits for it (~2 MB each)
_QUEUED_SEGMENTS = 64
#: alert lines sent back per message (~20 MB)
_LINES_PER_MESSAGE = 1 << 15


def use_process(n_events: int, wanted: bool | None) -> bool:
    """`wanted` (True/False) or, when None, whether the replay is large enough and a second
    core exists to run its rules on; never without `fork`."""
    if not hasattr(os, "fork"):
        return False
    if wanted is not None:
        return wanted
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return n_events >= RULES_PROCESS_MIN_EVENTS and cores > 1


class RuleColumns:
    """What the rules read at each segment's boundaries, and the evaluation itself."""

    def __init__(self, rules, IV: np.ndarray, changes: np.ndarray, ends: np.ndarray,
                 trust_names: list[str], n_rule: int) -> None:
        self.rules = rules
        self.n_rule = n_rule
        self.ends = ends
        nt = self.n_trusts = len(trust_names)
        self.sweep = WaitingSweep(IV, nt * 4)
        self.changes = np.ascontiguousarray(changes)
        self.latest = np.full(nt, -1, np.int64)
        self.trusts = tuple(trust_names)

    def evaluate(self, j0: int, j1: int, kept: list, agg: np.ndarray, quant: np.ndarray,
                 tot: np.ndarray, emit: Callable[[dict], None]) -> None:
        """Rules at boundaries j0..j1-1 (those before the drain, where the reference calls
        them); `kept` names the captured closes (boundary, window, date), by slot."""
        j1 = min(j1, self.n_rule)
        if j0 >= j1:
            return
        nt = self.n_trusts
        waiting, longest = self.sweep.run(self.ends, j0, j1)
        last = np.empty((j1 - j0, nt), np.int64)
        last_calls(self.changes, j0, j1, self.latest, last)
        self.rules.evaluate_batch(BoundaryBatch(
            self.ends[j0:j1], self.trusts, waiting, longest, last,
            self._closed_windows(j0, kept, agg, quant, tot, waiting)), emit)

    def _closed_windows(self, j0: int, kept: list, agg: np.ndarray, quant: np.ndarray,
                        tot: np.ndarray, waiting: np.ndarray) -> dict[str, ClosedWindows]:
        if not kept:
            return {}
        nt = self.n_trusts
        mean_s, p90_s = record_figures(agg, quant)
        has = (tot[:, :, 5] != 0) | (tot[:, :, 4] > 0)
        at_all = np.array([j - j0 for j, _, _ in kept], np.int64)
        # the all-trusts totals record exists once any trust has a record (waiting counts)
        has[:, nt] = agg[:, :nt, :, 0].any(axis=(1, 2)) | (tot[:, :nt, 5] != 0).any(axis=1) \
            | (waiting[:, nt, at_all] > 0).any(axis=0)
        out = {}
        for name in sorted({w for _, w, _ in kept}):
            sel = [s for s, (_, w, _) in enumerate(kept) if w == name]
            sel_a = np.array(sel, np.int64)
            out[name] = ClosedWindows(
                at_all[sel_a], tuple(kept[s][2] for s in sel), agg[sel_a, :, :, 0],
                mean_s[sel_a], p90_s[sel_a], tot[sel_a, :, :4], has[sel_a])
        return out


class InlineRules:
    """The rules evaluated in this process, segment by segment."""

    def __init__(self, rules, IV, changes, ends, trust_names, n_rule: int,
                 emit_alert: Callable[[dict], None]) -> None:
        self.columns = RuleColumns(rules, IV, changes, ends, trust_names, n_rule)
        self.emit_alert = emit_alert

    def submit(self, j0: int, j1: int, kept: list, agg, quant, tot) -> None:
        self.columns.evaluate(j0, j1, kept, agg, quant, tot, self.emit_alert)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class RulesProcess:
    """The rules evaluated in a forked child while the replay goes on with the next segments.

    A sender thread (started after the fork: the child has only the main thread) writes the
    segments to a socket pair, so a child busy with one segment never stalls the replay.
    The child answers only after the last segment, with the alert lines and the state its
    evaluator has evolved (`AlertEvaluator.evolved`), so neither side can block on a full
    socket while the other does. It leaves by `os._exit`: it must not flush the replay's
    buffered output files or run its exit handlers. A child that fails or dies is an error
    of the replay."""

    def __init__(self, rules, IV, changes, ends, trust_names, n_rule: int,
                 write_alerts: Callable[[bytes, int], None]) -> None:
        ours, theirs = socket.socketpair()
        try:
            pid = os.fork()
        except OSError:                 # (no memory for it, say): the caller stays in process
            ours.close()
            theirs.close()
            raise
        if pid == 0:                                           # the child
            status = 1
            try:
                ours.close()
                status = _serve(Connection(theirs.detach()),
                                RuleColumns(rules, IV, changes, ends, trust_names, n_rule))
            finally:
                os._exit(status)
        theirs.close()
        self.pid = pid
        self.exitcode: int | None = None
        self.conn = Connection(ours.detach())
        self.rules = rules
        self.write_alerts = write_alerts
        self._queue: queue.Queue = queue.Queue(_QUEUED_SEGMENTS)
        self._send_error: BaseException | None = None
        self._finished = False
        self._written = 0                               # alert records written so far
        self._sender = threading.Thread(target=self._send_all, name="callstream-rules-send",
                                        daemon=True)
        self._sender.start()

    def _send_all(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            try:
                self.conn.send(msg)
            except (OSError, ValueError) as exc:      # the child is gone
                self._send_error = exc
                return

    def _put(self, msg) -> None:
        while self._sender.is_alive():
            try:
                self._queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue
        self._fail()

    def submit(self, j0: int, j1: int, kept: list, agg, quant, tot) -> None:
        self._put(("segment", j0, j1, kept, agg, quant, tot))

    def finish(self) -> None:
        """Wait for the child's alerts (written in order) and take its evaluator's state."""
        self._put(("done",))
        self._put(None)
        self._sender.join()
        if self._send_error is not None:
            self._fail()
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self._fail()
            if msg[0] == "alerts":
                self.write_alerts(msg[1], msg[2])
                self._written += msg[2]
            elif msg[0] == "final":
                self.rules.adopt(msg[1])
                self._finished = True
                break
            else:
                self._fail(msg)
        self.close()

    def _fail(self, msg=None):
        if msg is None:
            try:
                if self.conn.poll(5):
                    msg = self.conn.recv()
            except (EOFError, OSError):
                msg = None
        self.close()
        if msg is not None and msg[0] == "error":
            raise CallstreamError(f"the alert rules failed: {msg[1]}")
        raise CallstreamError(f"the alert rules' process exited unexpectedly "
                              f"({_how(self.exitcode)}); " + (
                                  f"the alerts are incomplete ({self._written} written)"
                                  if self._written else "no alerts were written"))

    def close(self) -> None:
        """Stop the child: it has left after its answer, or is abandoned (a failure, or an
        error in the replay) and killed. Idempotent."""
        if self.exitcode is None and not self._finished:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self._sender.is_alive():      # it stops at None, or at a send to the dead child
            try:
                self._queue.put(None, timeout=0.1)
            except queue.Full:
                pass
            self._sender.join(0.1)
        self.conn.close()
        self._reap()

    def _reap(self) -> None:
        while self.exitcode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.exitcode = -1
                return
            except InterruptedError:
                continue
            self.exitcode = os.waitstatus_to_exitcode(status)


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"


def _serve(conn: Connection, columns: RuleColumns) -> int:
    """The child's loop: segments in, then the alert lines and the evaluator's state out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is the replay's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    lines: list[bytes] = []
    add = lines.append

    def emit(record: dict) -> None:
        add(alert_line(record))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "done":
                break
            columns.evaluate(*msg[1:], emit)
        for i in range(0, len(lines), _LINES_PER_MESSAGE):
            part = lines[i:i + _LINES_PER_MESSAGE]
            conn.send(("alerts", b"".join(part), len(part)))
        conn.send(("final", columns.rules.evolved()))
        return 0
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 1                                       # the replay has gone
    except BaseException as exc:                       # noqa: BLE001 - the replay reports it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return 1
