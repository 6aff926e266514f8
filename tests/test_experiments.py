"""`difflab experiments --size tiny`: the whole report's code path in seconds (numbers meaningless)."""

import json
import math
from pathlib import Path

import pytest
import torch
from scripts import load_script

from difflab.cli import main

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="the project's MNIST files are absent")
def test_experiments_tiny_writes_the_report(tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["experiments", "--size", "tiny", "--out", str(tmp_path), "--mnist-root", str(MNIST), "--quiet"]) == 0
    finally:
        torch.set_num_threads(n)
    report = (tmp_path / "report.md").read_text()
    for heading in ("Swiss roll", "Classifier-free guidance", "MNIST", "floor", "Unconditional against conditional",
                    "Guidance scale", "Accelerated sampling", "bits/dim", "FID (mnist-cnn features)"):
        assert heading in report, heading
    for fig in ("swiss_forward", "swiss_reverse", "swiss_samples", "guidance_2d", "mnist_forward", "mnist_unconditional",
                "mnist_conditional", "mnist_guidance_grid", "mnist_guidance", "mnist_steps"):
        assert (tmp_path / f"{fig}.png").is_file() and f"({fig}.png)" in report, fig
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["mnist"]["metric"] == "FID (mnist-cnn features)"
    assert {r["guidance"] for r in m["mnist"]["guidance"]} == {0.0, 1.0, 3.0}
    mn = m["mnist"]
    assert mn["steps"][0]["sampler"] == "ddpm" and mn["bits_per_dim"]["mean"] > 0
    # accelerated sampling: speed-ups in network passes against DDPM-T, a tolerance from the FID's noise
    ref, tol = mn["steps"][0], mn["tolerance"]
    assert [r["calls_per_batch"] for r in mn["steps"]] == [r["steps"] for r in mn["steps"]]  # one pass per step at w = 1
    assert all(r["speedup_passes"] == ref["calls_per_batch"] / r["calls_per_batch"] for r in mn["steps"])
    assert len(mn["fid_noise"]["fid"]) == 2 and tol["fid"] == max(tol["relative_fid"], tol["noise_fid"])
    assert all(r["within_tolerance"] == (r["fid"] <= ref["fid"] + tol["fid"]) for r in mn["steps"])
    fitted = next(r for r in mn["steps"] if r["fitted"])
    sig = fitted["sigmas"]
    assert len(sig) == fitted["steps"] + 1 and sig[-1] == 0 and all(a > b for a, b in zip(sig, sig[1:]))
    assert "Nearly the same quality as" in report and ("Fastest within tolerance" in report or "No faster setting" in report)
    assert "tiny size" in report

    # a second call on the trained run (--mnist-run) evaluates nothing again: every finished row
    # comes from the row cache (a GPU run cut off at a time limit continues the same way)
    again = tmp_path / "again.json"
    torch.set_num_threads(1)
    try:
        assert main(["experiments", "--size", "tiny", "--out", str(tmp_path), "--mnist-root", str(MNIST), "--quiet",
                     "--mnist-run", str(tmp_path / "runs" / "mnist_cond")]) == 0
        (tmp_path / "metrics.json").rename(again)
        capsys.readouterr()
        assert main(["experiments", "--size", "tiny", "--out", str(tmp_path), "--mnist-root", str(MNIST), "--quiet",
                     "--mnist-run", str(tmp_path / "runs" / "8gaussians_cond")]) == 2
        assert "must be a class-conditional MNIST model (10 classes)" in capsys.readouterr().err
    finally:
        torch.set_num_threads(n)
    m2 = json.loads(again.read_text())["mnist"]
    assert m2["steps"] == mn["steps"] and m2["guidance"] == mn["guidance"] and m2["fid_noise"] == mn["fid_noise"]
    assert m2["train"]["run"] == str(tmp_path / "runs" / "mnist_cond")

    # the MNIST FID-vs-NFE benchmark runs on the same (reduced-size) run: its digits and the
    # classifier's input are resized to match, and every row is finite
    bench = load_script("benchmarks/sampler_quality.py")
    torch.set_num_threads(1)
    try:
        res = bench.main(["--mnist", str(tmp_path / "runs" / "mnist_cond"), "--classifier", str(tmp_path / "classifier"),
                          "--mnist-root", str(MNIST), "--n", "20", "--batch", "20", "--nfe", "2",
                          "--optimise-up-to", "0", "--out", str(tmp_path / "nfe"), "--quiet", "--device", "cpu"])
    finally:
        torch.set_num_threads(n)
    assert res["image_size"] == 14 and len(res["rows"]) >= 1 + 6
    assert all(math.isfinite(r["fid"]) for r in res["rows"])
    assert (tmp_path / "nfe" / "sampler_quality_mnist.md").is_file()
