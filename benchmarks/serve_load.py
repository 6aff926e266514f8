"""`difflab serve` under load: do 20 concurrent requests all complete or get a clear refusal,
does the server stay up, and does its memory stay bounded?

    python benchmarks/serve_load.py --ckpt runs/digits                       # 20 requests, 2 rounds
    python benchmarks/serve_load.py --ckpt runs/digits --max-queue 4         # a short line: refusals
    python benchmarks/serve_load.py --train-steps 50 --requests 6 --rounds 1 # a toy model of its own

The harness starts the real server (``python -m difflab.cli serve --port 0``, a subprocess) on
``--ckpt`` (without one, it first trains a small class-conditional MLP on the 8x8 digits for
``--train-steps`` steps into a temporary folder), then fires ``--requests`` generation requests
at once (threads released together by a barrier), each for ``--n`` images of ``--steps`` DDIM
steps. An accepted request (202) is polled until its job is done or failed; a refused one must
be a 503 with a message and Retry-After (the queue is full: ``--max-queue``). This is repeated
``--rounds`` times, while a sampler thread reads the server's resident memory (VmRSS in
/proc/PID/status, Linux) every 20 ms. After the rounds the server must still answer.

Passes (exit 0) when every request completed or was refused with 503 and a message, the server
stayed up, and its peak RSS in the last round exceeds the first round's by at most
``--rss-growth-mb`` (finished jobs are kept up to a fixed count, so memory must level off).
docs/web.md has the numbers; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer

TOY_CONFIG = {
    "model": {"name": "mlp", "kwargs": {"dim": 64, "width": 128, "depth": 2, "num_classes": 10}},
    "diffusion": {"schedule": "cosine", "T": 100}, "data": {"name": "digits", "flatten": True},
    "optim": {"lr": 2e-3, "warmup_steps": 10}, "sample": {"every": -1, "clip_x0": 1.0}, "batch_size": 64,
    "device": "cpu", "cond_drop_prob": 0.1, "tensorboard": False, "seed": 0,
}


def rss_mb(pid: int) -> Optional[float]:
    """The resident memory of process ``pid`` in MB (VmRSS), or None where /proc has no such file."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


class MemoryWatch:
    """Samples a process's RSS every ``every`` seconds in a thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every, self.samples, self._stop = pid, every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            v = rss_mb(self.pid)
            if v is not None:
                self.samples.append(v)
            time.sleep(self.every)

    def reset(self) -> None:
        self.samples = []

    def peak(self) -> Optional[float]:
        return max(self.samples) if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def request(method: str, url: str, body: Optional[dict] = None, timeout: float = 60.0) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one HTTP request; HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"error": raw.decode(errors="replace")}
        return err.code, payload, {k.lower(): v for k, v in err.headers.items()}


def one_request(url: str, k: int, args, barrier: threading.Barrier) -> dict:
    """One client: wait for the others, ask for n images of class k % 10, follow the job to its end."""
    barrier.wait()
    t0 = time.monotonic()
    body = {"label": k % 10, "steps": args.steps, "n": args.n, "seed": k}
    try:
        status, answer, headers = request("POST", url + "/api/generate", body)
    except OSError as err:  # refused connection, reset: the server did not answer at all
        return {"k": k, "outcome": "no answer", "error": str(err), "seconds": time.monotonic() - t0}
    if status == 503:
        ok = bool(answer.get("error")) and "retry-after" in headers
        return {"k": k, "outcome": "refused" if ok else "bad refusal", "status": status,
                "error": answer.get("error"), "retry_after": headers.get("retry-after"),
                "seconds": time.monotonic() - t0}
    if status != 202:
        return {"k": k, "outcome": f"unexpected {status}", "error": answer.get("error"),
                "seconds": time.monotonic() - t0}
    job, position = answer["job"], answer["position"]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status, s, _ = request("GET", f"{url}/api/jobs/{job}")
        if status != 200:
            return {"k": k, "outcome": f"lost job ({status})", "error": s.get("error"),
                    "seconds": time.monotonic() - t0}
        if s["state"] in ("done", "failed"):
            ok = s["state"] == "done" and len(s["images"]) == args.n
            return {"k": k, "outcome": "completed" if ok else "failed", "error": s["error"], "position": position,
                    "seconds": time.monotonic() - t0}
        time.sleep(0.05)
    return {"k": k, "outcome": "timed out", "position": position, "seconds": time.monotonic() - t0}


def start_server(ckpt: str, args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "difflab.cli", "serve", "--ckpt", ckpt, "--port", "0",
           "--max-n", str(max(args.n, 1)), "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    line = proc.stdout.readline()
    m = re.search(r"on (http://\S+?)/\s", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, m.group(1)


def train_toy(steps: int, folder: Path) -> str:
    Trainer(TrainConfig.from_dict({**TOY_CONFIG, "steps": steps, "ckpt_every": steps, "log_every": steps}),
            folder / "digits", progress=False).train()
    return str(folder / "digits")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="the run to serve (default: a small model trained here first)")
    ap.add_argument("--train-steps", type=int, default=400, help="training steps of that model (default 400)")
    ap.add_argument("--requests", type=int, default=20, help="concurrent requests per round (default 20)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of requests (default 2)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps per request (default 50)")
    ap.add_argument("--n", type=int, default=4, help="images per request (default 4)")
    ap.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue (default 16, its own)")
    ap.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS (default 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a request may take (default 300)")
    ap.add_argument("--rss-growth-mb", type=float, default=100,
                    help="allowed growth of the peak RSS from the first round to the last (default 100)")
    ap.add_argument("--out", type=Path, help="write the result as JSON")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.steps < 1 or args.n < 1 or args.max_queue < 0:
        ap.error("--requests, --rounds, --steps and --n must be >= 1, --max-queue >= 0")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or train_toy(args.train_steps, Path(tmp))
        proc, url = start_server(ckpt, args)
        watch = MemoryWatch(proc.pid)
        rounds = []
        try:
            time.sleep(0.2)
            idle = rss_mb(proc.pid)
            for r in range(args.rounds):
                watch.reset()
                barrier = threading.Barrier(args.requests)
                t0 = time.monotonic()
                with ThreadPoolExecutor(args.requests) as pool:
                    rows = list(pool.map(one_request, [url] * args.requests, range(args.requests),
                                         [args] * args.requests, [barrier] * args.requests))
                wall = time.monotonic() - t0
                counts = {}
                for row in rows:
                    counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
                done = [row["seconds"] for row in rows if row["outcome"] == "completed"]
                rounds.append({"round": r + 1, "counts": counts, "wall_seconds": round(wall, 2),
                               "completed_latency_s": {"min": round(min(done), 3), "max": round(max(done), 3)}
                               if done else None,
                               "max_position": max((row.get("position", 0) for row in rows), default=0),
                               "refusal_message": next((row["error"] for row in rows if row["outcome"] == "refused"),
                                                       None),
                               "peak_rss_mb": watch.peak(), "rows": rows})
            status, _, _ = request("GET", url + "/api/models")
            up = proc.poll() is None and status == 200
            after = rss_mb(proc.pid)
        finally:
            watch.stop()
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    clear = all(set(r["counts"]) <= {"completed", "refused"} for r in rounds)
    peaks = [r["peak_rss_mb"] for r in rounds if r["peak_rss_mb"] is not None]
    growth = peaks[-1] - peaks[0] if len(peaks) >= 2 else 0.0
    result = {
        "command": "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in ("requests", "rounds", "steps", "n", "max_queue", "threads")},
        "passed": bool(clear and up and growth <= args.rss_growth_mb),
        "all_completed_or_refused": clear, "server_up": up,
        "rss_mb": {"idle": idle, "peaks": peaks, "after": after, "growth_first_to_last_peak": round(growth, 1)},
        "rounds": rounds,
    }
    for r in rounds:
        lat = r["completed_latency_s"]
        print(f"round {r['round']}: {r['counts']} in {r['wall_seconds']} s"
              + (f", completed in {lat['min']}..{lat['max']} s" if lat else "")
              + f", deepest place in line {r['max_position']}, peak RSS {r['peak_rss_mb'] or float('nan'):.0f} MB")
    print(f"server up: {up}; RSS idle {idle or float('nan'):.0f} MB, after {after or float('nan'):.0f} MB, peak growth "
          f"{growth:+.1f} MB; {'PASSED' if result['passed'] else 'FAILED'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
