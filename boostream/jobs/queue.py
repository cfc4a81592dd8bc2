"""The queue of one device: the jobs waiting for it, in the order they came, and those it runs,
at most `limit` at once. Beyond `max_queued` waiting jobs a new one is refused (QueueFull), with
the soonest ETA of a running job as the time to try again.

The embedded queue lives in this process's memory; the jobs it holds are also on record in the
store, so that a server started on the same data directory rebuilds it (`JobManager.start`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator

from boostream.errors import QueueFull
from boostream.jobs.job import Job

# When no running job has an ETA yet: what 429's Retry-After says.
RETRY_AFTER_UNKNOWN_S = 10


class DeviceQueue:
    def __init__(self, device: str, limit: int, max_queued: int) -> None:
        self.device = device
        self.limit = limit
        self.max_queued = max_queued
        self.running: set[Job] = set()
        self._waiting: collections.deque[Job] = collections.deque()

    def check_room(self) -> None:
        """QueueFull when no other job may wait."""
        if len(self._waiting) < self.max_queued:
            return
        etas = [job.eta_s for job in self.running if job.eta_s is not None]
        retry_after = max(1, math.ceil(min(etas))) if etas else RETRY_AFTER_UNKNOWN_S
        waiting = f"{self.max_queued} {self.device.upper()} jobs are already waiting"
        raise QueueFull(f"{waiting}; try again later", retry_after)

    def push(self, job: Job) -> int:
        """Put a job at the end; its position (from 1)."""
        self._waiting.append(job)
        return len(self._waiting)

    def push_front(self, job: Job) -> None:
        """Put a job first: it ran, and must run again (its worker died)."""
        self._waiting.appendleft(job)

    def next_to_run(self) -> Job | None:
        """The first waiting job, now counted as running, when a slot is free."""
        if not self._waiting or len(self.running) >= self.limit:
            return None
        job = self._waiting.popleft()
        self.running.add(job)
        return job

    def done(self, job: Job) -> None:
        """A running job has ended: its slot is free."""
        self.running.discard(job)

    def remove(self, job: Job) -> bool:
        """Take a waiting job out (it was cancelled); whether it was waiting."""
        if job not in self._waiting:
            return False
        self._waiting.remove(job)
        return True

    def positions(self) -> Iterator[tuple[int, Job]]:
        """The waiting jobs with their positions, from 1."""
        return enumerate(self._waiting, start=1)

    def counts(self) -> dict[str, int]:
        return {
            "running": len(self.running),
            "queued": len(self._waiting),
            "limit": self.limit,
            "max_queued": self.max_queued,
        }
