"""The one bridge from a thread into the event loop for a job's rounds.

Each round a job's worker trains comes to `report()` on the thread that listens to that worker.
The bridge hands rounds to the loop with `loop.call_soon_threadsafe`, at most one wake-up in
flight, and coalesces: while the loop is busy or a round is throttled, a newer round replaces the
older one as the one to deliver, so a slow consumer gets fewer deliveries, never a backlog of them.
The first round and the last round are always delivered; in between at most one round per
`interval_s`, each delivered as soon as it is reported. No iteration is delivered twice.

Throttling never costs the curve: each delivered round carries the metrics of every round reported
since the previous delivery (`Progress.rounds`), so a client that wants every round gets every
round without more deliveries. What waits is one small record of metrics per round, at most the
job's own curve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
    iteration: int
    total: int
    elapsed_s: float
    eta_s: float | None
    metrics: dict[str, float | None]
    # Wall-clock time at which the round finished, so clients can measure delivery latency.
    ts: float
    # The metrics of every round since the previous delivery, oldest first; the last is `metrics`.
    rounds: tuple[Mapping[str, float | None], ...] = ()

    @property
    def percent(self) -> float:
        return round(100.0 * self.iteration / self.total, 2) if self.total else 100.0

    @property
    def history(self) -> dict[str, Any]:
        return metric_history(self.iteration - len(self.rounds) + 1, self.rounds)


def metric_history(first: int, rounds: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
    """Rounds `first`, `first + 1`, ... as one list of values per metric (`null` where a round has
    no value): the shape of a `progress` event's `history` and of a `complete` event's `curve`."""
    names = list(dict.fromkeys(name for metrics in rounds for name in metrics))
    return {"first": first, "metrics": {name: [metrics.get(name) for metrics in rounds] for name in names}}


def finite_or_none(value: float) -> float | None:
    """Metrics can be NaN or infinite early in training; JSON has no such numbers. Trainers pass
    every metric through this before reporting it."""
    value = float(value)
    return value if math.isfinite(value) else None


class ProgressBridge:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Progress], None],
        total: int,
        interval_s: float = 0.1,
    ) -> None:
        self.total = total
        self._loop = loop
        self._deliver = deliver
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._lock = threading.Lock()
        # Guarded by _lock: written by the reporting thread, taken by the loop.
        self._first: Progress | None = None
        self._latest: Progress | None = None
        self._undelivered: list[Progress] = []  # every round reported since the last delivery
        self._wakeup_pending = False
        # Loop side only.
        self._closed = False
        self._delivered = 0
        self._next_allowed = 0.0

    # The reporting thread's side.

    def report(self, iteration: int, metrics: Mapping[str, float | None]) -> None:
        elapsed = time.monotonic() - self._started
        remaining = max(self.total - iteration, 0)
        progress = Progress(
            iteration=iteration,
            total=self.total,
            elapsed_s=round(elapsed, 4),
            eta_s=round(elapsed / iteration * remaining, 4) if iteration > 0 else None,
            metrics=dict(metrics),
            ts=time.time(),
        )
        with self._lock:
            if self._latest is None:
                self._first = progress
            self._latest = progress
            self._undelivered.append(progress)
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:
            # The loop is closed: the server went away while the job trained. Nobody is
            # listening any more, and the worker's thread must still be able to go on.
            pass

    # Event loop side.

    def finish(self) -> None:
        """Deliver whatever is still pending, throttle or not; call once training has returned."""
        with self._lock:
            first, latest = self._first, self._latest
            self._first = None
            self._wakeup_pending = True  # no more wake-ups: training is over
        for progress in (first, latest):
            self._deliver_once(progress)

    def close(self) -> None:
        """Deliver nothing more, whatever the reporting thread still gets: whoever received the
        rounds is gone (the server is stopping)."""
        self._closed = True

    def _flush(self) -> None:
        # A throttled round is not held back for later: it waits in `_latest` until a newer round
        # replaces it (and is delivered when due) or training ends. So whatever is delivered is
        # as fresh as the loop allows.
        while True:
            with self._lock:
                first, latest = self._first, self._latest
                self._first = None
            self._deliver_once(first)
            if latest is not None and (latest.iteration >= self.total or time.monotonic() >= self._next_allowed):
                self._deliver_once(latest)
            with self._lock:
                if self._latest is latest:
                    self._wakeup_pending = False
                    return
            # A newer round arrived while we delivered; take it too, within the throttle.

    def _deliver_once(self, progress: Progress | None) -> None:
        if self._closed or progress is None or progress.iteration <= self._delivered:
            return
        with self._lock:
            # Rounds are reported in order, so what this delivery covers is a prefix.
            covered = next(
                (i for i, earlier in enumerate(self._undelivered) if earlier.iteration > progress.iteration),
                len(self._undelivered),
            )
            rounds = tuple(earlier.metrics for earlier in self._undelivered[:covered])
            del self._undelivered[:covered]
        self._delivered = progress.iteration
        self._next_allowed = time.monotonic() + self._interval_s
        self._deliver(dataclasses.replace(progress, rounds=rounds))
