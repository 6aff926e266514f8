"""`difflab eval` and `difflab train-classifier` end to end at tiny sizes."""

import json
import math
from pathlib import Path

import pytest
import yaml

from difflab.cli import main
from difflab.cli.eval import parse_sweep

REPO = Path(__file__).resolve().parents[2]  # tests/cli/ -> the repository root


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A class-conditional digits model trained for a few steps, and a digits classifier."""
    root = tmp_path_factory.mktemp("eval")
    run = root / "digits"
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(run), "--steps", "3",
                 "--ckpt-every", "3", "--sample-every", "-1", "--quiet"]) == 0
    clf = root / "clf"
    assert main(["train-classifier", "--data", "digits", "--out", str(clf), "--epochs", "2", "--quiet"]) == 0
    return run, clf


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """The digits model under flow matching (configs/digits_flow.yaml), trained for a few steps."""
    run = tmp_path_factory.mktemp("eval_flow") / "flow"
    assert main(["train", "--config", str(REPO / "configs" / "digits_flow.yaml"), "--out", str(run), "--steps", "3",
                 "--ckpt-every", "3", "--sample-every", "-1", "--quiet"]) == 0
    return run


def test_parse_sweep():
    assert parse_sweep("steps=10,20,50") == ("steps", [10, 20, 50])
    assert parse_sweep("guidance=0,1.5") == ("guidance", [0.0, 1.5])
    for bad in ("eta=1,2", "steps=", "steps=a,b", "steps=0,5", "guidance"):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)


def test_eval_writes_json_markdown_and_sweep_plots(digits_run, tmp_path, capsys):
    run, clf = digits_run
    out = tmp_path / "ev"
    rc = main(["eval", "--ckpt", str(run), "--classifier", str(clf), "--n", "30", "--sampler", "ddim,dpmpp_2m",
               "--steps", "3", "--sweep", "steps=2,4", "--sweep", "guidance=0,3", "--bpd-n", "6",
               "--bpd-timesteps", "3", "--batch-size", "16", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["metric"] == "FID (digits-cnn features)"
    rows = m["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows if r["sweep"] == "steps"] == [
        ("ddim", 2), ("ddim", 4), ("dpmpp_2m", 2), ("dpmpp_2m", 4)]
    assert sorted(r["guidance"] for r in rows if r["sweep"] == "guidance") == [0.0, 0.0, 3.0, 3.0]
    for r in rows:
        assert r["fid"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["accuracy"] <= 1
        assert r["n"] == 30
    # single-evaluation samplers: one forward pass per step (a guided step is one 2B pass)
    assert all(r["calls_per_batch"] == r["steps"] for r in rows)
    assert m["bits_per_dim"]["n"] == 6 and m["bits_per_dim"]["bins"] == 17 and m["bits_per_dim"]["mean"] > 0
    md = (out / "summary.md").read_text()
    assert "FID (digits-cnn features)" in md and "not Inception FIDs" in md and "bits/dim" in md
    assert (out / "sweep_steps.png").is_file() and (out / "sweep_guidance.png").is_file()


def test_eval_on_a_2d_model_reports_toy_metrics(tmp_path):
    cfg = {"model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 1}},
           "data": {"name": "toy2d", "kwargs": {"dataset": "8gaussians", "n": 2000}},
           "steps": 3, "batch_size": 64, "cond_drop_prob": 0.0, "device": "cpu", "sample": {"every": -1},
           "ckpt_every": 3}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--n", "200", "--steps", "5", "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    (row,) = m["rows"]
    assert row["num_modes"] == 8 and 0 <= row["modes_covered"] <= 8 and row["sliced_wasserstein"] > 0
    assert m["floor"]["modes_covered"] == 8  # fresh data covers every mode


def test_eval_mistakes_get_clear_messages(digits_run, tmp_path, capsys):
    run, _ = digits_run
    assert main(["eval", "--ckpt", str(run), "--classifier", str(tmp_path / "none"), "--n", "4",
                 "--out", str(tmp_path / "ev")]) == 2
    assert "train-classifier" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(run), "--sweep", "eta=1", "--out", str(tmp_path / "ev")]) == 2
    assert "--sweep" in capsys.readouterr().err


def test_a_reference_file_is_range_checked_and_never_its_own_floor(digits_run, tmp_path, capsys):
    """A --ref file has no held-out split: the floor was the file scored against itself (FID 0)
    and bits/dim ran on it; images in [0, 1] or 0..255 gave FIDs off by orders of magnitude."""
    import torch

    from difflab import data

    run, clf = digits_run
    x, _ = data.load("digits")
    ref = tmp_path / "ref.pt"
    torch.save(x[:40].clone(), ref)
    common = ["eval", "--ckpt", str(run), "--classifier", str(clf), "--steps", "1", "--quiet"]
    res_path = tmp_path / "ev"
    assert main([*common, "--ref", str(ref), "--n", "8", "--floor-split", "test", "--bpd-n", "2",
                 "--bpd-timesteps", "1", "--out", str(res_path)]) == 0
    res = json.loads((res_path / "metrics.json").read_text())
    assert "floor" not in res and "no held-out split" in res["floor_skipped"]
    assert res["bits_per_dim"]["images"] != str(ref)  # the run's own data, not the reference file
    capsys.readouterr()
    torch.save((x[:40] + 1) * 127.5, ref)  # 0..255
    assert main([*common, "--ref", str(ref), "--n", "8", "--out", str(res_path)]) == 2
    assert "images must lie in [-1, 1] as the samples do" in capsys.readouterr().err
    torch.save((x[:40] + 1) / 2, ref)  # [0, 1]: in range, but most likely scaled the other way
    assert main([*common, "--ref", str(ref), "--n", "4", "--bpd-n", "0", "--out", str(res_path)]) == 0
    assert "if its images are in [0, 1], scale them by 2 * x - 1" in capsys.readouterr().err
    torch.save(x[:3].clone(), ref)
    assert main([*common, "--ref", str(ref), "--n", "8", "--out", str(res_path)]) == 2
    assert "holds 3 images; precision and recall need 4 at least" in capsys.readouterr().err
    assert main([*common, "--n", "3", "--out", str(res_path)]) == 2
    assert "--n must be >= 4" in capsys.readouterr().err


def test_bits_per_dim_of_a_continuous_process_is_the_probability_flow_odes(digits_run, flow_run, tmp_path, capsys):
    """A flow model has no variational bound: eval reports the PF-ODE bits/dim instead (it raised
    AttributeError before); the DDPM chain keeps its bound, with the ODE's beside it on request."""
    _, clf = digits_run
    common = ["eval", "--classifier", str(clf), "--n", "4", "--steps", "1", "--bpd-n", "3", "--ode-steps", "2",
              "--quiet"]
    assert main([*common, "--ckpt", str(flow_run), "--out", str(tmp_path / "flow")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "flow" / "metrics.json").read_text())
    b = m["bits_per_dim"]
    assert b["method"] == "pf-ode" and b["n"] == 3 and b["bins"] == 17 and b["steps"] == 2 and b["dequantized"]
    assert math.isfinite(b["mean"]) and b["stderr"] >= 0 and "bits_per_dim_ode" not in m
    assert "Probability-flow ODE on 3 held-out images" in (tmp_path / "flow" / "summary.md").read_text()

    run, _ = digits_run
    assert main([*common, "--ckpt", str(run), "--bpd-timesteps", "2", "--likelihood", "both",
                 "--out", str(tmp_path / "ddpm")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "ddpm" / "metrics.json").read_text())
    assert m["bits_per_dim"]["method"] == "vlb" and m["bits_per_dim"]["timesteps"] == 2
    assert m["bits_per_dim_ode"]["method"] == "pf-ode" and m["bits_per_dim_ode"]["n"] == 3
    assert math.isfinite(m["bits_per_dim_ode"]["mean"])
    md = (tmp_path / "ddpm" / "summary.md").read_text()
    assert "Variational bound on 3" in md and "Probability-flow ODE on 3" in md

    capsys.readouterr()
    assert main([*common, "--ckpt", str(flow_run), "--likelihood", "vlb", "--out", str(tmp_path / "bad")]) == 2
    assert "the variational bound is the discrete DDPM chain's" in capsys.readouterr().err
    assert main([*common, "--ckpt", str(flow_run), "--ode-steps", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--ode-steps" in capsys.readouterr().err
