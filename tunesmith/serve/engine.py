"""Dynamic batching: requests that arrive together generate together, on one worker thread that owns the models.

The first waiting request opens a batch; requests for the same model (any of its adapters) that arrive within
`wait_ms` join it, up to `max_batch_size`. The batch runs through tunesmith's one generation path
(`generate_rows`), each row with its own limits, stop strings, sampling, adapter, constraint and stream, and is
continuous: while it runs, requests for the same model that arrive later join it in the places of rows that have
ended (every DROP_FINISHED_EVERY tokens), and each request is answered as soon as its own row ends. Requests for
another model wait for the batch to end, and once one waits, no more join it (first come, first served).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tunesmith.generate import RowRequest, RowResult, generate_rows
from tunesmith.serve.models import Group


class QueueFull(Exception):
    pass


@dataclass
class Job:
    group: Group
    row: RowRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue  # ("text", str) pieces while streaming, then ("done", RowResult) or ("error", Exception)
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    def post(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Engine:
    def __init__(self, max_batch_size: int, wait_ms: float, max_queue: int, precision: str = "auto", metrics=None):
        self.max_batch_size, self.wait_s, self.max_queue, self.precision = max_batch_size, wait_ms / 1000, max_queue, precision
        self.metrics = metrics
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.busy = 0  # rows generating right now
        self.batch_sizes: list[int] = []  # recent batch sizes (for tests and /health)
        self._thread = threading.Thread(target=self._work, name="tunesmith-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        job.row.cancelled = job.cancel.is_set
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting")
            self._waiting.append(job)
            self._cond.notify()

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            first = self._waiting.popleft()
            batch = [first]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch_size:
                same = next((j for j in self._waiting if j.group is first.group), None)
                if same is not None:
                    self._waiting.remove(same)
                    batch.append(same)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _more(self, group: Group, free: int, batch: list[Job]) -> list[RowRequest]:
        """Up to `free` waiting requests for `group`'s model, taken from the head of the queue (none while a request
        for another model is first in line): they join the running batch."""
        taken = []
        with self._cond:
            while self._waiting and len(taken) < free and self._waiting[0].group is group:
                job = self._waiting.popleft()
                if not job.cancel.is_set():
                    taken.append(job)
        if taken:
            self._started(taken)
            batch += taken
            self.busy += len(taken)
            self.batch_sizes = (self.batch_sizes + [self.busy])[-100:]  # rows generating together after the join
            if self.metrics is not None:
                self.metrics.batch_size.observe(self.busy)
        return [j.row for j in taken]

    def _started(self, jobs: list[Job]) -> None:
        if self.metrics is not None:
            for j in jobs:
                self.metrics.queue_seconds.observe(time.perf_counter() - j.enqueued)

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            batch = [j for j in batch if not j.cancel.is_set()]
            if not batch:
                continue
            self.busy = len(batch)
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-100:]
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
            self._started(batch)
            group, answered = batch[0].group, set()

            def done(index: int, result: RowResult) -> None:
                answered.add(index)
                self.busy -= 1
                batch[index].post("done", result)

            try:
                generate_rows(group.model, group.tokenizer, [j.row for j in batch], batch_size=self.max_batch_size,
                              precision=self.precision, more=lambda free: self._more(group, free, batch),
                              on_result=done)
            except Exception as e:  # a failed batch fails its requests, never the server
                for i, j in enumerate(batch):
                    if i not in answered:
                        j.post("error", e)
            finally:
                self.busy = 0

    def stop(self, timeout: float | None = None) -> None:
        """Finish every request already accepted, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


async def run_job(engine: Engine, job: Job, timeout: float) -> RowResult:
    """Wait for a non-streaming job's result; on timeout the row is cancelled and TimeoutError raised."""
    engine.submit(job)
    deadline = time.perf_counter() + timeout
    try:
        while True:
            kind, value = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.perf_counter()))
            if kind == "done":
                return value
            if kind == "error":
                raise value
    except (asyncio.TimeoutError, asyncio.CancelledError):
        job.cancel.set()
        raise


__all__ = ["Engine", "Job", "QueueFull", "RowResult", "run_job"]
