"""experiments/classic.py --size tiny: the whole report's code path in seconds (numbers meaningless),
on the small MNIST-format data set the tests write (``mnist_dir``, tests/conftest.py: no real
MNIST needed); and `difflab experiments` saying where the experiments moved."""

import json
import math
import subprocess
import sys

import torch
from scripts import REPO, load_script

from difflab.cli import build_parser, main
from experiments import classic
from experiments.mnist import mnist_config
from experiments.settings import FIT_SEED, SIZES


def test_the_generated_mnist_reads_as_mnist(mnist_dir):
    from difflab import data

    x, y = data.load("mnist", root=str(mnist_dir), split="train5k", image_size=14)
    assert x.shape == (597, 1, 14, 14) and y.shape == (597,) and set(y.tolist()) == set(range(10))
    assert x.min() == -1 and x.max() > 0.9


def test_experiments_tiny_writes_the_report(tmp_path, capsys, mnist_dir):
    args = ["--size", "tiny", "--out", str(tmp_path), "--mnist-root", str(mnist_dir), "--quiet"]
    assert classic.main(args) == 0
    report = (tmp_path / "report.md").read_text()
    for heading in ("Swiss roll", "Classifier-free guidance", "MNIST", "floor", "Unconditional against conditional",
                    "Guidance scale", "Few-step sampling", "bits/dim", "FID (mnist-cnn features)"):
        assert heading in report, heading
    for fig in ("swiss_forward", "swiss_reverse", "swiss_samples", "guidance_2d", "mnist_forward", "mnist_unconditional",
                "mnist_conditional", "mnist_guidance_grid", "mnist_guidance", "mnist_steps"):
        assert (tmp_path / f"{fig}.png").is_file() and f"({fig}.png)" in report, fig
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["command"] == "python experiments/classic.py " + " ".join(args)
    assert f"Made by `{m['command']}`" in report
    assert m["mnist"]["metric"] == "FID (mnist-cnn features)"
    assert {r["guidance"] for r in m["mnist"]["guidance"]} == {0.0, 1.0, 3.0}
    mn = m["mnist"]
    assert mn["steps"][0]["sampler"] == "ddpm" and mn["bits_per_dim"]["mean"] > 0
    # few-step sampling: speed-ups in network passes against DDPM-T, a tolerance from the FID's noise
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
    assert classic.main(args + ["--mnist-run", str(tmp_path / "runs" / "mnist_cond")]) == 0
    (tmp_path / "metrics.json").rename(again)
    capsys.readouterr()
    assert classic.main(args + ["--mnist-run", str(tmp_path / "runs" / "8gaussians_cond")]) == 2
    assert "must be a class-conditional MNIST model (10 classes)" in capsys.readouterr().err
    m2 = json.loads(again.read_text())["mnist"]
    assert m2["steps"] == mn["steps"] and m2["guidance"] == mn["guidance"] and m2["fid_noise"] == mn["fid_noise"]
    assert m2["train"]["run"] == str(tmp_path / "runs" / "mnist_cond")

    # run as a script (its parts imported from the repository root): --report-only rewrites
    # report.md from metrics.json, the same text
    again.rename(tmp_path / "metrics.json")
    before = (tmp_path / "report.md").read_text()
    (tmp_path / "report.md").unlink()
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "classic.py"), "--report-only", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rewrote" in done.stdout and (tmp_path / "report.md").read_text() == before

    # the MNIST FID-vs-NFE benchmark runs on the same (reduced-size) run: its digits and the
    # classifier's input are resized to match, and every row is finite
    bench = load_script("benchmarks/sampler_quality.py")
    res = bench.main(["--mnist", str(tmp_path / "runs" / "mnist_cond"), "--classifier", str(tmp_path / "classifier"),
                      "--mnist-root", str(mnist_dir), "--n", "20", "--batch", "20", "--nfe", "2",
                      "--optimise-up-to", "0", "--out", str(tmp_path / "nfe"), "--quiet", "--device", "cpu"])
    assert res["image_size"] == 14 and len(res["rows"]) >= 1 + 6
    assert all(math.isfinite(r["fid"]) for r in res["rows"])
    assert (tmp_path / "nfe" / "sampler_quality_mnist.md").is_file()


def test_experiments_settings():
    """'cuda:0' ran the experiments in fp32; the fitted levels were fitted on evaluation batch 7's noise."""
    assert mnist_config(SIZES["cpu"], "/x", "cuda:0")["precision"] == "bf16"
    batches = max(-(-S["n"] // S["batch"]) for S in SIZES.values())
    assert FIT_SEED >= batches  # evaluation batch b is seeded b


def test_experiments_refuses_a_missing_report_and_an_absent_device(tmp_path, capsys):
    assert classic.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "--report-only needs" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert classic.main(["--size", "tiny", "--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "runs").exists()  # refused before any training


def test_difflab_experiments_says_where_it_moved(capsys):
    assert main(["experiments", "--size", "tiny", "--out", "my out"]) == 2
    err = capsys.readouterr().err
    assert "`difflab experiments` moved out of the package" in err
    assert "python experiments/classic.py --size tiny --out 'my out'" in err
    assert main(["experiments", "--help"]) == 2
    assert "moved out of the package" in capsys.readouterr().err
    assert "experiments" not in build_parser().format_help()  # not listed among the commands
