"""experiments/few_step.py --size tiny: the few-step comparison's code path (teacher, the three
distillations, consistency training, every row, the checks, table and plot) and its MNIST part on
the small MNIST-format data set the tests write (``mnist_dir``); the numbers mean nothing at this size."""

import json

import pytest

import difflab as dl
from experiments import few_step


def test_few_step_tiny_writes_table_plot_metrics_and_the_checks(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert few_step.main(["--size", "tiny", "--out", str(out), "--runs", str(runs)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["runs"]) == {"teacher", "consistency", "progressive", "guided", "consistency training"}
    models = {(r["model"], r["steps"], r["guidance"]) for r in res["rows"]}
    for w in few_step.SIZES["tiny"]["guidances"]:
        assert {("guided", k, w) for k in (1, 2, 4)} <= models and ("progressive", 4, w) in models
    assert {("consistency", k, 1.0) for k in (1, 2, 4)} <= models
    for row in res["rows"]:
        assert row["fd"] >= 0 and 0 <= row["accuracy"] <= 1 and row["spread"] >= 0 and row["sec_per_1000"] > 0
        # a progressive student's guidance pair costs two calls per step
        calls = row["steps"] * (2 if row["model"] == "progressive" and row["guidance"] != 1 else 1)
        assert row["nfe"] == calls
    assert set(res["must_show"]) >= {"cd_1_step", "cd_2_better_than_1", "pd_4_steps_w1", "guided_4_steps_w3"}
    assert all(isinstance(check["pass"], bool) for check in res["must_show"].values())
    assert [r["sigma"] for r in res["renoised"]][0] == 0 and len(res["second_step"]) == 6
    assert (out / "fd_vs_nfe.png").stat().st_size > 0 and "| guided | consistency |" in (out / "table.md").read_text()
    # a second run reuses every finished run (the students are kept, not trained again)
    assert few_step.main(["--size", "tiny", "--out", str(out), "--runs", str(runs)]) == 0
    assert all(json.loads((out / "metrics.json").read_text())["runs"][m]["kept"] for m in ("consistency", "guided"))


def test_few_step_mnist_tiny(tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert few_step.main(["--mnist", "--size", "tiny", "--out", str(out), "--runs", str(tmp_path / "runs"),
                          "--mnist-root", str(mnist_dir)]) == 0
    res = json.loads((out / "mnist_metrics.json").read_text())
    rows = {(r["model"], r["sampler"], r["steps"]) for r in res["rows"]}
    assert {("consistency", "consistency", k) for k in (1, 2, 4)} <= rows and ("progressive", "ddim", 4) in rows
    assert {("teacher", "ddim", k) for k in (10, 50)} <= rows
    assert res["tolerance"]["fid"] >= 0 and "| consistency |" in (out / "mnist_table.md").read_text()


def test_few_step_mnist_tiny_longer_consistency_student_alone(tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert few_step.main(["--mnist", "--size", "tiny", "--out", str(out), "--runs", str(tmp_path / "runs"),
                          "--mnist-root", str(mnist_dir), "--cd-steps", "6", "--no-progressive"]) == 0
    res = json.loads((out / "mnist_metrics.json").read_text())
    assert res["settings"]["cd_steps"] == 6 and "progressive" not in res
    assert "--cd-steps 6 --no-progressive" in res["command"]
    assert {r["model"] for r in res["rows"]} == {"teacher", "consistency"}
    assert max(r["train_step"] for r in res["rows"] if r["model"] == "consistency") == 6


def test_few_step_progressive_check_tiny(tmp_path):
    out = tmp_path / "out"
    assert few_step.main(["--progressive-check", "--size", "tiny", "--out", str(out), "--runs",
                          str(tmp_path / "runs")]) == 0
    res = json.loads((out / "progressive_check.json").read_text())
    models = {r["model"] for r in res["rows"]}
    assert {"teacher", "v copy of the teacher (4 steps)", "eps student", "eps student, lr 1e-4", "v teacher",
            "v teacher's student"} <= models
    assert dl.load(tmp_path / "runs" / "pd_of_v").config.distill.reparam_steps == 0
    copy = dl.load(tmp_path / "runs" / "pd_copy_4")
    assert copy.config.distill.reparam_steps == 3 and copy.proc.prediction == "v"
    eps = dl.load(tmp_path / "runs" / "pd_eps")
    assert eps.proc.prediction == "eps" and eps.config.distill.reparam_steps == 0
    assert "--progressive-check --size tiny" in res["command"]


@pytest.mark.parametrize("args", [["--cd-steps", "6"], ["--no-progressive"], ["--progressive-check", "--mnist"],
                                  ["--mnist", "--cd-steps", "0"]])
def test_few_step_refuses_options_of_another_part(args, capsys):
    with pytest.raises(SystemExit):
        few_step.main(args)
    assert "--" in capsys.readouterr().err
