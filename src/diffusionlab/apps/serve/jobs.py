"""A bounded queue of generation jobs run by a fixed number of worker threads (one by default),
so that concurrent users wait their turn instead of oversubscribing the CPU.

A ``Job`` is a function ``work(job)`` plus the events it emits (``job.emit(name, data)``), kept
in order so that a client that connects late still sees every step. A client that goes away
cancels its job (``Job.cancel``): a queued job leaves the queue, a running one stops at its next
network evaluation (``Job.check`` raises ``Cancelled``). Finished jobs are kept for later
downloads, the newest ``keep`` of them only, so memory stays bounded.
"""
from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict, deque

FINAL = ("done", "error", "cancelled")


class QueueFull(Exception):
    """The queue holds ``depth`` waiting jobs: answer 503 with Retry-After."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy: {retry_after} s until a place is likely free")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a running job whose client went away."""


class Job:
    """One generation: its events (name, data dict), state and result files."""

    _ids = itertools.count(1)

    def __init__(self, work, kind: str = "generate"):
        self.id = f"{next(self._ids)}-{secrets.token_hex(4)}"
        self.work, self.kind = work, kind
        self.state = "queued"          # queued | running | done | error | cancelled
        self.events: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        self.cancelled = threading.Event()
        self.created = time.monotonic()
        self.started = self.finished = None
        self.result: dict = {}           # files and kept tensors for the follow-up routes

    def emit(self, name: str, data: dict) -> None:
        with self.cond:
            self.events.append((name, data))
            if name in FINAL:
                self.state = name
                self.finished = time.monotonic()
            self.cond.notify_all()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, seen: int, timeout: float) -> None:
        """Block until there are more than ``seen`` events or ``timeout`` passes."""
        with self.cond:
            if len(self.events) <= seen and self.state not in FINAL:
                self.cond.wait(timeout)

    @property
    def over(self) -> bool:
        return self.state in FINAL


class JobQueue:
    """Jobs wait in a deque of at most ``depth`` and run on ``workers`` threads."""

    def __init__(self, depth: int = 16, workers: int = 1, keep: int = 32):
        if depth < 1 or workers < 1:
            raise ValueError("a queue needs depth >= 1 and workers >= 1")
        self.depth, self.keep = depth, keep
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Condition()
        self.recent: deque[float] = deque(maxlen=20)   # seconds of the last jobs (Retry-After)
        self.closed = False
        self.threads = [threading.Thread(target=self._loop, name=f"dl-worker-{i}", daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, job: Job) -> int:
        """Queue ``job``; its position (0: runs next). ``QueueFull`` when ``depth`` jobs wait."""
        with self.lock:
            if len(self.pending) >= self.depth:
                raise QueueFull(self.retry_after())
            self.pending.append(job)
            self.jobs[job.id] = job
            self._forget_old()
            self.lock.notify()
            pos = len(self.pending) - 1 + len(self.running)
        job.emit("queued", {"position": pos})
        return pos

    def retry_after(self) -> int:
        per_job = sum(self.recent) / len(self.recent) if self.recent else 5.0
        return max(1, int(round(per_job * max(1, len(self.pending)) / len(self.threads))))

    def position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` (running ones included); None once it runs or ended."""
        with self.lock:
            if job in self.pending:
                return list(self.pending).index(job) + len(self.running)
        return None

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Stop ``job``: out of the queue if it waits, at its next check if it runs."""
        job.cancel()
        with self.lock:
            if job in self.pending:
                self.pending.remove(job)
                removed = True
            else:
                removed = False
        if removed:
            job.emit("cancelled", {"reason": "the client went away before the job started"})

    def _forget_old(self) -> None:
        over = [j for j in self.jobs.values() if j.over]
        for j in over[: max(0, len(over) - self.keep)]:
            self.jobs.pop(j.id, None)

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                job = self.pending.popleft()
                self.running.append(job)
            t0 = time.monotonic()
            try:
                self._run(job)
            finally:
                with self.lock:
                    self.running.remove(job)
                    self.recent.append(time.monotonic() - t0)
                    self._forget_old()

    @staticmethod
    def _run(job: Job) -> None:
        if job.cancelled.is_set():
            job.emit("cancelled", {"reason": "cancelled before it started"})
            return
        job.state, job.started = "running", time.monotonic()
        try:
            job.work(job)
        except Cancelled:
            job.emit("cancelled", {"reason": "the client went away"})
        except Exception as e:  # noqa: BLE001 - reported to the page; the worker keeps serving
            from ...errors import UserError

            param = {"class_": "class"}.get(getattr(e, "param", None), getattr(e, "param", None))
            msg = (f"{param}: {e.message}" if param else e.message) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            job.emit("error", {"error": msg, "user_error": isinstance(e, UserError)})
            if not isinstance(e, UserError):
                import traceback

                traceback.print_exc()
        else:
            if not job.over:
                job.emit("done", {})

    def close(self, timeout: float = 10.0) -> None:
        """Stop: waiting jobs are cancelled, running ones stop at their next network evaluation,
        and the workers are joined (``timeout`` seconds at most)."""
        with self.lock:
            self.closed = True
            for job in list(self.pending) + self.running:
                job.cancel()
            self.lock.notify_all()
        for t in self.threads:
            t.join(timeout)
