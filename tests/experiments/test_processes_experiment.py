"""experiments/processes.py --size tiny: the digits comparison's whole code path (five trainings,
reflow, every sampler setting, the table and plot) in seconds; the numbers mean nothing at this size."""

import json

from experiments import processes


def test_processes_tiny_writes_table_plot_and_metrics(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert processes.main(["--size", "tiny", "--out", str(out), "--runs", str(runs)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    names = [*processes.PROCESSES, processes.REFLOW]
    assert list(res["runs"]) == names
    settings = {(r["process"], r["nfe"]) for r in res["rows"]}
    assert settings == {(n, k) for n in names for k in processes.SIZES["tiny"]["nfes"]}
    for row in res["rows"]:  # every setting spends exactly its network evaluations
        evals = 2 * row["steps"] - 1 if row["sampler"] == "heun" else row["steps"]
        assert evals == row["nfe"] and row["fd"] >= 0 and 0 <= row["accuracy"] <= 1
    for name in ("flow", "OT-CFM", processes.REFLOW):
        assert res["runs"][name]["straightness"] >= 0
    assert all(res["runs"][n]["train_seconds"] > 0 for n in names)
    table = (out / "table.md").read_text()
    assert all(f"| {n} |" in table for n in names) and (out / "fd_vs_nfe.png").stat().st_size > 0
    assert res["command"].endswith(f"--out {out} --runs {runs}")


def test_every_nfe_is_spent_on_each_sampler_and_spacing():
    import difflab as dl

    flow, chain = dl.processes.FlowMatching(), dl.GaussianDiffusion(dl.schedules.cosine(100))
    assert processes.samplers_at(2, flow) == [("euler", 2, "uniform"), ("dpmpp_2m", 2, "uniform")]
    three = processes.samplers_at(3, chain)
    assert ("heun", 2, "logsnr") in three and ("euler", 3, "trailing") in three and ("ddim", 3, "trailing") not in three


def test_train_run_reuses_a_finished_run_only_for_its_own_config(tmp_path):
    import pytest

    from experiments.processes import run_config, split_digits, train_run

    x, y, _, _ = split_digits()
    data = (x[:64], y[:64])
    cfg = run_config({"schedule": "cosine", "T": 50}, steps=2)
    out = tmp_path / "run"
    train_run(cfg, out, data)
    stamp = (out / "checkpoints" / "latest").stat().st_mtime_ns
    train_run(cfg, out, data)  # the same config: reused, not retrained
    assert (out / "checkpoints" / "latest").stat().st_mtime_ns == stamp
    other = run_config({"schedule": "sqrt", "T": 50}, steps=2)
    with pytest.raises(ValueError, match=r"holds a run of another config: diffusion\.schedule .*'cosine'.*'sqrt'"):
        train_run(other, out, data)
