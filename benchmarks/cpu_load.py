"""`difflab demo` beside one busy process: does it still finish in under a minute?

    python benchmarks/cpu_load.py                      # the demo beside one busy process, then alone
    python benchmarks/cpu_load.py --threads 2          # the same with 2 threads (torch's default on 2 cores)
    python benchmarks/cpu_load.py --demo-args "--train-steps 50 --n 100 --ddpm-steps 20 --ddim-steps 5"

The harness starts the load itself: ``--busy`` processes (default 1) that each keep one core busy
(a pure-Python loop, or ``--busy-kind matmul``: torch matmuls on one thread) and stop on their own
after ``--busy-limit`` seconds whatever happens to the harness; they are killed as soon as the
demo ends. It then runs ``difflab demo --quiet`` (a subprocess, into a temporary folder, with a
``--timeout``) and reports the demo's wall time, the thread line the demo printed, and the
seconds of CPU the busy process got meanwhile (proof that it was busy). Without ``--no-baseline``
the same demo runs once more with no load, for comparison. ``--out`` writes the rows as JSON.

The must-show (issue 29): the default demo under ``--limit`` (60) seconds with one other busy
process on the machine; the exit status is 1 when the loaded run is over the limit or failed.
docs/benchmarks.md ("The demo under load") has the numbers measured on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each busy process: one core's worth of work until its deadline (argv[1] seconds from its start)
# or SIGTERM; it prints "ready" once running and, at exit, the CPU seconds it used.
BUSY = r"""
import signal, sys, time
limit, kind = float(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
deadline = time.monotonic() + limit
try:
    if kind == "matmul":
        import torch
        torch.set_num_threads(1)
        a = torch.randn(256, 256)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            for _ in range(20):
                a = torch.tanh(a @ a)
    else:
        print("ready", flush=True)
        x = 0
        while time.monotonic() < deadline:
            for i in range(10000):
                x += i * i
finally:
    print(f"cpu_seconds {time.process_time():.3f}", flush=True)
"""


def start_busy(kind: str, limit: float) -> subprocess.Popen:
    """One busy process, started and running (it said "ready") when this returns."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY, str(limit), kind], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"the busy process did not start (it said {line!r})")
    return proc


def stop_busy(proc: subprocess.Popen) -> float:
    """Stop a busy process (SIGTERM, then kill) and return the CPU seconds it used (nan if unknown)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    for line in (out or "").splitlines():
        if line.startswith("cpu_seconds "):
            return float(line.split()[1])
    return float("nan")


def run_demo(demo_args: list[str], threads: int | None, timeout: float) -> dict:
    """`difflab demo --quiet` into a temporary folder: wall seconds, its thread line, its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "difflab.cli", "demo", "--out", str(Path(tmp) / "demo"), "--quiet", *demo_args]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "seconds": time.perf_counter() - t0, "error": f"timed out after {timeout:.0f} s"}
        seconds = time.perf_counter() - t0
        row = {"ok": done.returncode == 0, "seconds": round(seconds, 2)}
        line = next((s for s in done.stdout.splitlines() if s.startswith("cpu threads:")), None)
        row["threads_line"] = line
        if done.returncode != 0:
            row["error"] = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            return row
        metrics = json.loads((Path(tmp) / "demo" / "metrics.json").read_text())
        row["demo_seconds"] = {k: round(v, 2) for k, v in metrics["seconds"].items()}
        row["cpu_threads"] = metrics.get("cpu_threads")
        row["sliced_wasserstein"] = metrics["sliced_wasserstein"]
    return row


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measure(demo_args: list[str], threads: int | None, busy: int, kind: str, busy_limit: float,
            timeout: float) -> dict:
    """One demo run beside ``busy`` busy processes (0: none)."""
    procs = []
    load_before = _loadavg()
    t0 = time.perf_counter()
    try:
        for _ in range(busy):
            procs.append(start_busy(kind, busy_limit))
        row = run_demo(demo_args, threads, timeout)
    finally:
        cpu = [stop_busy(p) for p in procs]
    wall = time.perf_counter() - t0
    row["busy_processes"] = busy
    # the 1-minute load average before and after: other work on the machine shows here
    row["loadavg_1min"] = [load_before, _loadavg()]
    if busy:
        row["busy_kind"] = kind
        row["busy_cpu_share"] = [round(c / wall, 2) for c in cpu]  # ~1.0: it held a core throughout
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the demo (default 1)")
    ap.add_argument("--busy-kind", choices=["python", "matmul"], default="python")
    ap.add_argument("--busy-limit", type=float, default=900,
                    help="seconds after which a busy process stops on its own (default 900)")
    ap.add_argument("--threads", type=int, default=None, help="passed to difflab demo --threads (default: its choice)")
    ap.add_argument("--demo-args", default="", help="more arguments for difflab demo, e.g. \"--train-steps 50\"")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a demo run is stopped (default 600)")
    ap.add_argument("--limit", type=float, default=60, help="the loaded demo's wall-time target (default 60 s)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without load")
    ap.add_argument("--out", type=Path, help="write the result as JSON")
    args = ap.parse_args(argv)
    if args.busy < 0 or args.busy_limit <= 0 or args.timeout <= 0:
        ap.error("--busy must be >= 0, --busy-limit and --timeout > 0")
    demo_args = shlex.split(args.demo_args)
    busy_limit = min(args.busy_limit, args.timeout + 60)  # never outlives the run it loads by much

    loaded = measure(demo_args, args.threads, args.busy, args.busy_kind, busy_limit, args.timeout)
    rows = [loaded]
    if not args.no_baseline:
        rows.append(measure(demo_args, args.threads, 0, args.busy_kind, busy_limit, args.timeout))
    result = {
        "command": "python benchmarks/cpu_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "limit_seconds": args.limit,
        "passed": bool(loaded["ok"] and loaded["seconds"] < args.limit),
        "rows": rows,
    }
    for r in rows:
        load = f"beside {r['busy_processes']} busy process(es)" if r["busy_processes"] else "alone"
        state = f"{r['seconds']:.1f} s" if r["ok"] else f"FAILED ({r.get('error')})"
        share = f"; busy CPU share {r['busy_cpu_share']}" if r.get("busy_cpu_share") else ""
        print(f"difflab demo {load}: {state}; {r.get('threads_line') or 'no thread line'}{share}; "
              f"load average {r['loadavg_1min'][0]} -> {r['loadavg_1min'][1]}")
    verdict = "under" if result["passed"] else "NOT under"
    print(f"{verdict} {args.limit:.0f} s with {args.busy} busy process(es) on {os.cpu_count()} CPUs")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
