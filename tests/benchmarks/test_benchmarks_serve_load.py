"""benchmarks/serve_load.py at toy size: a model it trains itself, a real server process, a
burst of concurrent requests in two rounds; every request completes or is refused with 503 and
a message, the server stays up, and its memory is read and reported."""

import json
import threading

from scripts import load_script


def test_a_toy_burst_completes_or_is_refused_and_the_server_stays_up(tmp_path, capsys):
    bench = load_script("benchmarks/serve_load.py")
    out = tmp_path / "serve_load.json"
    rc = bench.main(["--train-steps", "10", "--requests", "8", "--rounds", "2", "--steps", "5", "--n", "2",
                     "--max-queue", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0 and result["passed"] and result["server_up"] and result["all_completed_or_refused"]
    for r in result["rounds"]:
        assert sum(r["counts"].values()) == 8 and r["counts"].get("completed", 0) >= 1
        assert r["max_position"] <= 2  # never deeper in line than --max-queue
        for row in r["rows"]:
            if row["outcome"] == "refused":
                assert row["status"] == 503 and row["retry_after"] == "5" and "--max-queue 2" in row["error"]
    rss = result["rss_mb"]
    assert rss["idle"] > 50 and len(rss["peaks"]) == 2 and rss["after"] >= rss["idle"] * 0.5
    printed = capsys.readouterr().out
    assert "round 2:" in printed and "server up: True" in printed and "PASSED" in printed


def test_a_request_that_gets_no_clear_answer_fails_the_run():
    bench = load_script("benchmarks/serve_load.py")

    class Args:
        steps, n, timeout = 5, 1, 5

    row = bench.one_request("http://127.0.0.1:9", 0, Args, threading.Barrier(1))  # nothing listens on port 9
    assert row["outcome"] == "no answer"
