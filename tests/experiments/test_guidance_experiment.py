"""experiments/guidance.py --size tiny: the guidance comparison's code path (the three runs, every
row, the checks, table, plot and grids) and that a second run reuses the finished runs; the numbers
mean nothing at this size."""

import json

from experiments import guidance


def test_guidance_tiny_writes_table_plot_metrics_and_the_checks(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert guidance.main(["--size", "tiny", "--out", str(out), "--runs", str(runs)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    S = guidance.SIZES["tiny"]
    assert set(res["runs"]) == {"uncond", "cond", "classifier", "classifier_unscaled"}
    assert res["runs"]["classifier"]["step"] == S["clf_steps"]
    rows = {(r["method"], r["sampler"], r["classifier_scale"], r["guidance"]) for r in res["rows"]}
    assert {("classifier", "ddim", s, 1.0) for s in S["scales"]} <= rows
    assert {("classifier", "ddpm", s, 1.0) for s in S["ddpm_scales"]} <= rows
    assert {("classifier-free", "ddim", 0.0, w) for w in S["guidances"]} <= rows
    assert {("both", "ddim", s, w) for w, s in S["both"]} <= rows
    assert {("unscaled classifier", "ddim", s, 1.0) for s in S["unscaled"]} <= rows
    for row in res["rows"]:
        assert row["fd"] >= 0 and 0 <= row["accuracy"] <= 1 and row["spread"] >= 0 and row["sec_per_1000"] > 0
    assert set(res["must_show"]) == {"unguided_about_10_percent", "classifier_guided_at_least_90_percent"}
    assert all(isinstance(check["pass"], bool) for check in res["must_show"].values())
    assert (out / "sweep.png").stat().st_size > 0 and (out / "grid_classifier.png").stat().st_size > 0
    assert "| classifier | ddpm |" in (out / "table.md").read_text()
    stamp = (runs / "classifier" / "noisy_classifier.safetensors").stat().st_mtime_ns
    assert guidance.main(["--size", "tiny", "--out", str(out), "--runs", str(runs)]) == 0
    assert (runs / "classifier" / "noisy_classifier.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
