"""experiments/dit.py --size tiny: the DiT comparison's code path (the baselines at equal parameters, the
size-and-patch sweep, the conditioning ablation, the tables and the plot); the numbers mean nothing at this
size, but the sizes and multiply-adds are the networks' own."""

import json

from experiments import dit


def test_dit_tiny_writes_tables_plot_and_metrics(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = ["--size", "tiny", "--out", str(out), "--runs", str(runs)]
    assert dit.main(common + ["--part", "ablation"]) == 0  # one part alone, then the rest merged with it
    part = json.loads((out / "metrics_ablation.json").read_text())
    assert set(part) >= {"ablation", "floor"} and "sweep" not in part
    assert dit.main(common) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["ablation"] == part["ablation"] and "--part" not in res["command"]
    assert [r["model"] for r in res["baselines"]] == list(dit.BASELINES)
    params = [r["params"] for r in res["baselines"]]
    assert max(params) < 1.1 * min(params)  # equal parameters, within 10%
    assert [r["conditioning"] for r in res["ablation"]] == list(dit.ABLATION)
    sweep = {(r["size"], r["patch"]): r["gmacs"] for r in res["sweep"]}
    assert sweep[("S", 2)] > 3 * sweep[("S", 4)]  # four times the tokens: more than three times the work
    for row in res["baselines"] + res["sweep"] + res["ablation"]:
        for w in ("w1", "w3"):
            assert row[w]["fd"] >= 0 and 0 <= row[w]["accuracy"] <= 1
        assert row["train_steps"] == (dit.SIZES["tiny"]["sweep_steps"] if row in res["sweep"] else dit.SIZES["tiny"]["steps"])
    assert (out / "fd_vs_gflops.png").stat().st_size > 0
    assert "| in_context |" in (out / "tables.md").read_text()
