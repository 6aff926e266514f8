"""One sampling job at a time per device, the others waiting in line.

A job is a function of a :class:`Progress` that returns the result images as PNG bytes. Each
device has one :class:`JobQueue` whose single worker thread runs the jobs in the order they came
(first in, first out), so two requests never share a GPU's memory or a CPU's cores; a waiting
job knows its position (1: next). The line has a length limit (``max_waiting``): past it a new
job is refused (:class:`QueueFull`, which the server answers with 503 and Retry-After) rather
than held, so memory stays bounded under any load. Finished jobs keep their PNGs for the page
to fetch, the ``keep_finished`` most recent only.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = ["Job", "JobQueue", "Progress", "QueueFull", "JobNotFound"]

log = logging.getLogger("difflab.web")

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class QueueFull(RuntimeError):
    """The line of waiting jobs is full; the message says how long it is and to retry."""


class JobNotFound(KeyError):
    """No job of that id: never submitted, or finished long enough ago to be forgotten."""


@dataclass
class Job:
    """A sampling job's state as the page polls it: ``state`` (queued, running, done, failed),
    ``step`` of ``total`` network steps, the latest ``preview`` (PNG of the denoised estimate),
    the ``results`` (PNGs) or the ``error`` message."""

    id: str
    kind: str
    total: int
    work: Callable[["Progress"], list]
    state: str = QUEUED
    step: int = 0
    preview: Optional[bytes] = None
    results: list = field(default_factory=list)
    error: Optional[str] = None
    info: dict = field(default_factory=dict)
    submitted: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    finished: Optional[float] = None


class Progress:
    """Handed to a job's work: ``progress(step, preview=None)`` records the step reached and, when
    given, a PNG of the current denoised estimate."""

    def __init__(self, job: Job, lock: threading.Lock) -> None:
        self.job, self.lock = job, lock

    def __call__(self, step: int, preview: Optional[bytes] = None) -> None:
        with self.lock:
            self.job.step = min(int(step), self.job.total)
            if preview is not None:
                self.job.preview = preview


class JobQueue:
    """The jobs of one device: ``submit(work, total, kind)`` -> :class:`Job`; ``status(id)`` -> dict.

    ``max_waiting``: jobs that may wait besides the running one (a new one past it raises
    :class:`QueueFull`); ``keep_finished``: finished jobs remembered for the page to fetch.
    Errors of a job are caught and become its ``error``: ValueError and TypeError (a request
    the checks before the queue could not refuse, e.g. a sampler that does not fit the model)
    with their message, anything else as an internal error, logged with its traceback; the
    worker goes on with the next job either way.
    """

    def __init__(self, name: str = "cpu", max_waiting: int = 16, keep_finished: int = 64) -> None:
        if max_waiting < 0 or keep_finished < 1:
            raise ValueError(f"max_waiting must be >= 0 and keep_finished >= 1, got {max_waiting}, {keep_finished}")
        self.name, self.max_waiting, self.keep_finished = name, max_waiting, keep_finished
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every job known, oldest first
        self._ids = itertools.count(1)
        self._closed = False
        self._running: Optional[Job] = None
        self._worker = threading.Thread(target=self._run, name=f"difflab-jobs-{name}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ the page's side
    def submit(self, work: Callable[[Progress], list], total: int, info: Optional[dict] = None) -> Job:
        """Put ``work`` in line: ``total`` is the steps it will report, ``info`` what the page shows
        of it (``info["kind"]``: generate, inpaint, img2img). Raises :class:`QueueFull`."""
        info = dict(info or {})
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            busy = self._running is not None or bool(self._waiting)  # max_waiting = 0: only an idle device takes one
            if busy and len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"the server is busy: {len(self._waiting)} job(s) wait on {self.name} besides the "
                                f"running one, as many as it queues (--max-queue {self.max_waiting}); try again "
                                "in a moment")
            # a counter (the order of arrival) and a random part: one client cannot guess another's jobs
            key = f"{self.name.replace(':', '')}-{next(self._ids)}-{secrets.token_hex(4)}"
            job = Job(key, info.get("kind", "job"), max(1, int(total)), work, info=info)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._wake.notify()
            return job

    def status(self, job_id: str) -> dict:
        """The job's state for the page: its position in line while it waits (1: next)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            position = next((i + 1 for i, j in enumerate(self._waiting) if j is job), 0)
            return {"id": job.id, "kind": job.kind, "state": job.state, "position": position,
                    "step": job.step, "total": job.total, "preview": job.preview,
                    "results": list(job.results), "error": job.error, "info": dict(job.info)}

    def result(self, job_id: str, index: int) -> bytes:
        """The ``index``-th PNG of a finished job (JobNotFound, IndexError)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job.results[index]

    def counts(self) -> dict:
        with self._lock:
            return {"waiting": len(self._waiting), "running": int(self._running is not None)}

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, drop the waiting ones (failed: the server stopped), let the running
        one finish (up to ``timeout`` seconds) and stop the worker."""
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.state, job.error = FAILED, "the server stopped before this job ran"
            self._waiting.clear()
            self._wake.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------------ the worker's side
    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep_finished`` (waiting and running ones stay)."""
        finished = [k for k, j in self._jobs.items() if j.state in (DONE, FAILED)]
        for k in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[k]

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state, job.started, self._running = RUNNING, time.monotonic(), job
            results, error = None, None
            try:
                results = job.work(Progress(job, self._lock))
            except (ValueError, TypeError) as err:  # a bad request only the model itself could tell
                error = " ".join(str(err).split())
            except MemoryError:
                error = "out of memory: ask for fewer images (count) or fewer steps"
            except Exception as err:  # noqa: BLE001 - the worker must outlive any job; logged for the operator
                if "out of memory" in str(err).lower():
                    error = "out of memory on the device: ask for fewer images (count)"
                else:
                    log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                    error = f"internal error ({type(err).__name__}: {err}); the server's log has the details"
            with self._lock:
                job.finished, self._running = time.monotonic(), None
                job.work = None  # its closure holds tensors: free them with the job done
                if error is None:
                    job.state, job.results, job.step = DONE, list(results), job.total
                else:
                    job.state, job.error = FAILED, error
                self._forget_old()
