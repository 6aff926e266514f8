"""benchmarks/cpu_load.py at toy size: the busy process starts, is busy, stops (killed at the end,
or on its own at its time limit), and the demo beside it is timed and reported."""

import json
import time

from scripts import load_script

TOY = "--train-steps 20 --n 50 --ddpm-steps 10 --ddim-steps 2"


def test_a_toy_demo_beside_one_busy_process(tmp_path, capsys):
    bench = load_script("benchmarks/cpu_load.py")
    out = tmp_path / "cpu_load.json"
    rc = bench.main(["--demo-args", TOY, "--no-baseline", "--busy-limit", "120", "--limit", "600", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["passed"] and result["limit_seconds"] == 600 and result["machine"]["cpus"] >= 1
    (row,) = result["rows"]
    assert row["ok"] and 0 < row["seconds"] < 600 and row["busy_processes"] == 1
    # the demo said which threads it used: one, for its small MLP
    assert row["threads_line"].startswith("cpu threads: 1 (small model") and row["cpu_threads"] == 1
    assert set(row["demo_seconds"]) == {"train", "ddpm", "ddim", "total"}
    assert 0 < row["busy_cpu_share"][0] <= 1.2  # it ran (and reported its CPU time when stopped)
    printed = capsys.readouterr().out
    assert "beside 1 busy process(es)" in printed and "under 600 s" in printed


def test_the_busy_process_stops_on_its_own_and_a_failing_demo_fails_the_run(tmp_path):
    bench = load_script("benchmarks/cpu_load.py")
    busy = bench.start_busy("python", limit=1.0)
    t0 = time.monotonic()
    while busy.poll() is None and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert busy.poll() == 0, "the busy process outlived its time limit"
    assert bench.stop_busy(busy) > 0.3  # it was busy for most of its second
    # a demo that fails (a bad argument) is reported as failed, and the busy process still goes
    rc = bench.main(["--demo-args", "--train-steps 0", "--no-baseline", "--busy-limit", "60",
                     "--out", str(tmp_path / "r.json")])
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert rc == 1 and not row["ok"] and "train_steps" in row["error"]
