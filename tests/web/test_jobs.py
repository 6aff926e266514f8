"""The job queue: one job at a time per device in the order they came, positions in line, a
bounded line (QueueFull past it), errors turned into messages without stopping the worker, and a
bounded memory of finished jobs."""

import threading
import time

import pytest

from difflab.web import JobNotFound, JobQueue, QueueFull


def wait_for(queue, job_id, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = queue.status(job_id)
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.005)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {s}")


def test_one_job_at_a_time_first_in_first_out_with_positions():
    q = JobQueue("cpu", max_waiting=8)
    gate, lock, running, order, most = threading.Event(), threading.Lock(), [0], [], [0]

    def work(k):
        def run(progress):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            if k == 0:
                gate.wait(10)  # the first job holds the device while the others are queued
            for step in range(1, 4):
                progress(step, b"png" if step == 3 else None)
            with lock:
                running[0] -= 1
                order.append(k)
            return [bytes([k])]
        return run

    try:
        jobs = [q.submit(work(k), total=3, info={"kind": "generate", "seed": k}) for k in range(5)]
        t0 = time.monotonic()
        while q.status(jobs[0].id)["state"] != "running" and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        assert [q.status(j.id)["position"] for j in jobs] == [0, 1, 2, 3, 4]  # 0: running
        assert q.status(jobs[3].id)["state"] == "queued" and q.counts() == {"waiting": 4, "running": 1}
        gate.set()
        done = [wait_for(q, j.id) for j in jobs]
    finally:
        q.close()
    assert order == [0, 1, 2, 3, 4] and most[0] == 1
    assert all(s["state"] == "done" and s["step"] == s["total"] == 3 for s in done)
    assert [s["results"] for s in done] == [[bytes([k])] for k in range(5)]
    assert done[2]["preview"] == b"png" and done[2]["info"] == {"kind": "generate", "seed": 2}
    assert q.result(jobs[4].id, 0) == bytes([4])


def test_a_full_line_refuses_new_jobs_until_it_moves():
    q = JobQueue("cpu", max_waiting=2)
    gate = threading.Event()
    try:
        first = q.submit(lambda p: gate.wait(10) and [], 1)
        while q.status(first.id)["state"] != "running":
            time.sleep(0.005)
        waiting = [q.submit(lambda p: [], 1) for _ in range(2)]
        with pytest.raises(QueueFull, match=r"busy: 2 job\(s\) wait on cpu besides the running one, as many as it "
                                            r"queues \(--max-queue 2\)"):
            q.submit(lambda p: [], 1)
        gate.set()
        for j in [first, *waiting]:
            wait_for(q, j.id)
        wait_for(q, q.submit(lambda p: [b"x"], 1).id)  # room again
    finally:
        q.close()
    alone = JobQueue("cpu", max_waiting=0)  # no line at all: an idle device takes one job, a busy one none
    gate.clear()
    try:
        first = alone.submit(lambda p: gate.wait(10) and [], 1)
        while alone.status(first.id)["state"] != "running":
            time.sleep(0.005)
        with pytest.raises(QueueFull, match=r"busy: 0 job\(s\) wait"):
            alone.submit(lambda p: [], 1)
        gate.set()
        wait_for(alone, first.id)
        wait_for(alone, alone.submit(lambda p: [], 1).id)
    finally:
        alone.close()


def test_errors_become_messages_and_the_worker_goes_on(caplog):
    q = JobQueue("cpu")

    def bad_value(p):
        raise ValueError("sampler 'x' does not fit\n  this model")

    def bug(p):
        raise KeyError("oops")

    def oom(p):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    try:
        a, b, c, d = (q.submit(f, 1) for f in (bad_value, bug, oom, lambda p: [b"ok"]))
        assert wait_for(q, a.id)["error"] == "sampler 'x' does not fit this model"
        assert wait_for(q, b.id)["error"].startswith("internal error (KeyError: 'oops')")
        assert "out of memory" in wait_for(q, c.id)["error"]
        assert wait_for(q, d.id)["results"] == [b"ok"]  # the worker survived all three
    finally:
        q.close()
    assert "KeyError" in caplog.text  # the operator's log has the bug's traceback


def test_finished_jobs_are_forgotten_beyond_keep_finished_and_close_fails_the_waiting():
    q = JobQueue("cpu", keep_finished=3)
    try:
        jobs = [q.submit(lambda p: [b"x"], 1) for _ in range(6)]
        wait_for(q, jobs[-1].id)
        q.submit(lambda p: [], 1)  # forgetting happens as jobs come and go
        with pytest.raises(JobNotFound):
            q.status(jobs[0].id)
        assert q.status(jobs[-1].id)["state"] == "done"
        gate = threading.Event()
        running = q.submit(lambda p: gate.wait(10) and [], 1)
        while q.status(running.id)["state"] != "running":
            time.sleep(0.005)
        waiting = q.submit(lambda p: [], 1)
        threading.Timer(0.2, gate.set).start()
    finally:
        q.close()
    assert q.status(waiting.id)["error"] == "the server stopped before this job ran"
    with pytest.raises(QueueFull, match="shutting down"):
        q.submit(lambda p: [], 1)
    with pytest.raises(ValueError, match="max_waiting must be >= 0"):
        JobQueue("cpu", max_waiting=-1)
