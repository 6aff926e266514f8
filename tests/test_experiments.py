"""`difflab experiments --size tiny`: the whole report's code path in seconds (numbers meaningless)."""

import json
from pathlib import Path

import pytest
import torch

from difflab.cli import main

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="the project's MNIST files are absent")
def test_experiments_tiny_writes_the_report(tmp_path):
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
    assert m["mnist"]["steps"][0]["sampler"] == "ddpm" and m["mnist"]["bits_per_dim"]["mean"] > 0
    assert "tiny size" in report
