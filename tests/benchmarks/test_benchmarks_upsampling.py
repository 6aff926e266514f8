"""benchmarks/upsampling.py on the CPU: the network's upsampling shapes, each form of the layer
timed and checked against the plain form, the network's forward pass per form, JSON written."""

import json
import os

import pytest
import torch
from scripts import load_script

import difflab.accel.upsample as accel_up
from difflab.accel.upsample import FoldedUpsample


def load():
    return load_script("benchmarks/upsampling.py")


def test_shapes_are_read_off_the_network():
    bench = load()
    shapes = bench.upsample_shapes(bench.NETWORKS["ddpm_cifar10"], 128)
    assert shapes == [(128, 256, 4, 4), (128, 256, 8, 8), (128, 256, 16, 16)]  # DDPM's three up levels


def test_cpu_run_times_and_checks_every_form(tmp_path, monkeypatch):
    bench = load()
    monkeypatch.setattr(accel_up, "FOLDED_MIN_WORK", 0)  # the tiny network's layers take the form set
    out = tmp_path / "up.json"
    env = os.environ.get("DIFFLAB_UPSAMPLE_CONV")
    res = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--network", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert bench.FORMS == accel_up.UPSAMPLE_FORMS
    assert {r["form"] for r in res["layers"]} == set(accel_up.UPSAMPLE_FORMS)
    for r in res["layers"]:
        assert r["us_per_call"] > 0 and r["max_abs_diff_fp32"] < 1e-4, r
    assert [r["form"] for r in res["network"]] == list(accel_up.UPSAMPLE_FORMS)
    for r in res["network"]:
        assert r["ms_per_forward"] > 0 and r["max_abs_diff_vs_plain"] == pytest.approx(0, abs=1e-4), r
        assert len(r["ms_per_forward_runs"]) == 1
    assert os.environ.get("DIFFLAB_UPSAMPLE_CONV") == env  # each form is its own network's, by argument


def test_the_network_timing_runs_each_form(monkeypatch):
    """Each form's network (a copy of the network accelerated with that form) calls its own
    layer function."""
    bench = load()
    monkeypatch.setattr(accel_up, "FOLDED_MIN_WORK", 0)
    calls, swapped = [], []
    for name in ("upsample_conv3x3", "upsample_conv3x3_transposed"):
        real = getattr(accel_up, name)
        monkeypatch.setattr(accel_up, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    real_accelerate = bench.accelerate

    def accelerate(model, **options):
        fast = real_accelerate(model, **options)
        swapped.append({getattr(m, "form", None) for m in model.modules() if isinstance(m, FoldedUpsample)})
        return fast

    monkeypatch.setattr(bench, "accelerate", accelerate)
    res = {"network": []}
    bench.time_network(bench.NETWORKS["tiny"], 2, torch.device("cpu"), 1, 2, res, None)
    assert set(calls) == {"upsample_conv3x3", "upsample_conv3x3_transposed"}
    assert swapped == [{"transposed"}, {"subpixel"}, set()]  # "plain": the model's own Upsample
    assert [len(r["ms_per_forward_runs"]) for r in res["network"]] == [2, 2, 2]


def test_bad_counts_are_refused_by_name():
    bench = load()
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--tiny", "--repeats", "0"])
