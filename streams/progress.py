"""The one-line progress bar on stderr shared by the Kafka replayer, the simulator and the
offline replay: events, events/s, percent done and ETA, redrawn at most 4 times a second."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """One line on stderr: bar, percent, events, events/s, ETA; at most 4 updates a second."""

    def __init__(self, total: float, enabled: bool, label: str = "replay") -> None:
        self.total = max(float(total), 1.0)
        self.enabled = enabled
        self.label = label
        self.started = time.perf_counter()
        self.last = 0.0

    def update(self, events: int, done: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.25:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        frac = min(done / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        filled = int(frac * 24)
        bar = "#" * filled + "." * (24 - filled)
        eta_text = f"{eta:5.0f} s" if eta == eta else "    ? s"
        sys.stderr.write(f"\r{self.label}: [{bar}] {frac:6.1%}  {events:,} events  "
                         f"{events / elapsed:,.0f} ev/s  ETA {eta_text} ")
        sys.stderr.flush()

    def close(self, events: int, done: float) -> None:
        if self.enabled:
            self.update(events, done, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def phase(self, events: int, what: str) -> None:
        """A step after reading (the columnar replay processes once everything is read)."""
        if self.enabled:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            sys.stderr.write(f"\r{self.label}: {events:,} events read in {elapsed:.0f} s, {what}"
                             + " " * 20)
            sys.stderr.flush()
