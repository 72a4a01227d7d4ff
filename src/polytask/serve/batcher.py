"""Micro-batching: requests that arrive together run as one encoder pass on ONE inference thread.

Callers ``submit`` their inputs and get a ``concurrent.futures.Future``. The inference thread takes the oldest
request, then keeps gathering for up to ``max_wait_ms`` or until ``max_batch`` inputs are waiting, runs the
gathered inputs (grouped by the task subset they ask for, sorted by length) through the Predictor, and hands
each caller back exactly its own rows. The model is touched by that thread only, so nothing about it needs to
be thread-safe. One bad request in a batch (an input the Predictor rejects) fails alone: the batch is retried
request by request, and the others still get their answers.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from polytask.errors import UserError


@dataclass
class Job:
    records: list[dict[str, Any]]
    tasks: tuple[str, ...] | None
    where: list[str]
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.records)


class MicroBatcher:
    """``max_batch``: inputs per encoder pass (1 = one request at a time, no batching); ``max_wait_ms``: how long
    the first request of a batch waits for company. ``on_batch(inputs, seconds)`` is called after each pass."""

    def __init__(self, predictor, max_batch: int = 32, max_wait_ms: float = 5.0, on_batch=None):
        if max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise UserError(f"--max-wait-ms must be 0 or more, got {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._carry: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()  # a submit is queued before the stop marker, or refused

    def start(self) -> MicroBatcher:
        self._thread = threading.Thread(target=self._run, name="polytask-inference", daemon=True)
        self._thread.start()
        return self

    def submit(self, records: list[dict[str, Any]], tasks: list[str] | None = None,
               where: list[str] | None = None) -> Future:
        job = Job(records, tuple(tasks) if tasks else None,
                  where or [f"input {i + 1}" for i in range(len(records))])
        with self._lock:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._queue.put(job)
        return job.future

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every request already queued, then end the inference thread."""
        with self._lock:
            self._stopping = True
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the inference thread --------------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _gather(self) -> tuple[list[Job], bool]:
        """The next batch, and whether the stop marker was met."""
        first = self._next(None)
        if first is None:
            return [], True
        jobs, size = [first], first.size
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._next(max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # seen again once this batch is done
                break
            if size + job.size > self.max_batch:
                self._carry = job  # opens the next batch
                break
            jobs.append(job)
            size += job.size
        return jobs, False

    def _run(self) -> None:
        while True:
            jobs, stop = self._gather()
            # a caller that gave up (its future cancelled) is skipped; the others are marked running
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                try:
                    self._serve(jobs)
                except Exception as e:  # noqa: BLE001 - the thread must outlive any one batch
                    for job in jobs:
                        _settle(job, error=e)
            if stop:
                return

    def _serve(self, jobs: list[Job]) -> None:
        """One pass for the whole batch: the union of the tasks asked for, each caller keeping its own. When a
        record cannot be read for a task its caller did not ask for (a column that task needs), the batch falls
        back to one pass per task subset, and a subset that still fails to one pass per request."""
        subsets = {j.tasks for j in jobs}
        union = None if None in subsets else tuple(dict.fromkeys(t for tasks in subsets for t in tasks))
        if len(subsets) > 1 and self._try(jobs, union):
            return
        groups: dict[tuple[str, ...] | None, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.tasks, []).append(job)
        for tasks, group in groups.items():
            if not self._try(group, tasks):
                for job in group:
                    self._serve_one(job)

    def _try(self, jobs: list[Job], tasks) -> bool:
        """Predict ``tasks`` for every job of ``jobs`` in one pass and hand out the answers; False when the batch
        fails (nothing is handed out then)."""
        start = time.perf_counter()
        try:
            results = self._predict([r for j in jobs for r in j.records], tasks, [w for j in jobs for w in j.where])
            answers, at = [], 0
            for job in jobs:
                mine = results[at:at + job.size]
                if job.tasks is not None and tasks != job.tasks:
                    mine = [{t: p[t] for t in job.tasks} for p in mine]
                answers.append(mine)
                at += job.size
        except Exception:  # noqa: BLE001 - retried smaller by the caller, which isolates the bad request
            return False
        if self.on_batch is not None:
            self.on_batch(sum(j.size for j in jobs), time.perf_counter() - start)
        for job, mine in zip(jobs, answers):
            _settle(job, result=mine)
        return True

    def _serve_one(self, job: Job) -> None:
        start = time.perf_counter()
        try:
            result = self._predict(job.records, job.tasks, job.where)
        except Exception as e:  # noqa: BLE001 - handed to the caller, never raised in this thread
            _settle(job, error=e)
            return
        if self.on_batch is not None:
            self.on_batch(job.size, time.perf_counter() - start)
        _settle(job, result=result)

    def _predict(self, records: list[dict[str, Any]], tasks, where: list[str]) -> list[dict[str, Any]]:
        """Predictions in the callers' order, computed over the inputs sorted by length (less padding)."""
        order = sorted(range(len(records)), key=lambda i: _length(records[i]))
        preds = self.predictor.predict([records[i] for i in order], tasks=list(tasks) if tasks else None,
                                       batch_size=self.max_batch, where=[where[i] for i in order])
        out: list[dict[str, Any]] = [{} for _ in records]
        for i, p in zip(order, preds):
            out[i] = p
        return out


def _settle(job: Job, result=None, error: BaseException | None = None) -> None:
    """Hand a job its answer or its error, unless it was answered or cancelled meanwhile."""
    if job.future.done():
        return
    try:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    except Exception:  # noqa: BLE001 - InvalidStateError: settled by someone else in between
        pass


def _length(record: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, (str, list)) else 0 for v in record.values())
