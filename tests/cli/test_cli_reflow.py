"""`difflab reflow` end to end on a toy 2-D flow: the run it writes, resuming it, and its refusals."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import difflab as dl
from difflab.cli import main
from difflab.processes import FlowMatching

FLOW = {
    "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 64, "depth": 2}},
    "diffusion": {"process": "flow"},
    "data": {"name": "toy2d", "kwargs": {"dataset": "8gaussians", "n": 500}},
    "optim": {"lr": 3.0e-3, "warmup_steps": 10, "decay": "linear"},
    "ema": {"decay": 0.9, "warmup": 10},
    "sample": {"every": -1},
    "batch_size": 128, "steps": 200, "log_every": 50, "ckpt_every": 200, "device": "cpu", "seed": 0,
}


def _train(folder, config: dict, *flags) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(folder / "config.yaml"), "--out", str(folder / "run"), "--quiet",
                 *flags]) == 0


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A 1-rectified flow on 8 Gaussians (200 steps, about a second)."""
    folder = tmp_path_factory.mktemp("flow")
    _train(folder, FLOW)
    return folder / "run"


def _reflow(source, out, *flags):
    return main(["reflow", "--ckpt", str(source), "--out", str(out), "--quiet", *flags])


def test_reflow_writes_a_straighter_run_that_samples(flow_run, tmp_path, capsys):
    out = tmp_path / "reflow"
    assert _reflow(flow_run, out, "--pairs", "500", "--steps", "10", "--train-steps", "200", "--eval-n", "500") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "reflow.json").read_text())
    before, after = report["straightness"]["before"], report["straightness"]["after"]
    assert f"straightness {before:.4g} -> {after:.4g}" in printed
    assert after <= before / 2
    assert report["pairs"] == 500 and report["steps"] == 10 and report["train_steps"] == 200
    assert report["source_step"] == 200 and report["checkpoint"].endswith("step_00000200")
    run = dl.load(out)
    assert isinstance(run.proc, FlowMatching) and run.step == 200
    assert run.config.diffusion.process == "flow"
    pairs = load_file(str(out / "pairs.safetensors"))
    assert pairs["noise"].shape == pairs["samples"].shape == (500, 2)
    assert main(["sample", "--ckpt", str(out), "--n", "5", "--sampler", "euler", "--steps", "1", "--out",
                 str(tmp_path / "x.png"), "--save-tensor", str(tmp_path / "x.pt")]) == 0
    assert torch.load(tmp_path / "x.pt").shape == (5, 2)


def test_reflow_resumes_on_its_saved_pairs(flow_run, tmp_path, capsys):
    out = tmp_path / "reflow"
    assert _reflow(flow_run, out, "--pairs", "64", "--steps", "4", "--train-steps", "4", "--eval-n", "16") == 0
    assert _reflow(flow_run, out, "--pairs", "64", "--steps", "4", "--train-steps", "4") == 2
    assert "already holds the pairs of a reflow" in capsys.readouterr().err
    assert _reflow(flow_run, out, "--pairs", "32", "--steps", "4", "--train-steps", "8", "--resume") == 2
    assert "pairs (saved: 64, now: 32)" in capsys.readouterr().err
    assert _reflow(flow_run, out, "--pairs", "64", "--steps", "4", "--train-steps", "8", "--eval-n", "16",
                   "--resume") == 0
    assert "resuming from" in capsys.readouterr().err
    report = json.loads((out / "reflow.json").read_text())
    assert report["train_steps"] == 8 and dl.load(out).step == 8
    # difflab train --resume would continue it on fresh noise (plain flow matching): refused, naming reflow
    assert main(["train", "--resume", "--out", str(out), "--steps", "12", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a reflow run" in err and "difflab reflow --resume" in err and dl.load(out).step == 8


def test_reflow_refusals(flow_run, tmp_path, capsys):
    def refused(*argv):
        assert main(["reflow", *argv]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "out")
    assert "--pairs must be a positive integer, got 0" in refused("--ckpt", str(flow_run), "--pairs", "0", "--out", out)
    assert "--steps must be a positive integer" in refused("--ckpt", str(flow_run), "--pairs", "8", "--steps", "-1",
                                                           "--out", out)
    assert "holds the run it would reflow" in refused("--ckpt", str(flow_run), "--pairs", "8", "--out",
                                                       str(flow_run.parent))
    assert "nothing to resume" in refused("--ckpt", str(flow_run), "--pairs", "8", "--out", out, "--resume")
    ddpm = dict(FLOW, diffusion={"process": "ddpm", "T": 50}, steps=2, ckpt_every=2)
    _train(tmp_path / "ddpm", ddpm)
    err = refused("--ckpt", str(tmp_path / "ddpm" / "run"), "--pairs", "8", "--out", out)
    assert "is a 'ddpm' run" in err and "reflow straightens a flow" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work
