"""benchmarks/upsampling.py on the CPU: the network's upsampling shapes, each form of the layer
timed and checked against the plain form, the network's forward pass per form, JSON written."""

import json

import pytest
import torch
from scripts import load_script

import difflab.models.unet as unet_mod


def load():
    return load_script("benchmarks/upsampling.py")


def test_shapes_are_read_off_the_network():
    bench = load()
    shapes = bench.upsample_shapes(bench.NETWORKS["ddpm_cifar10"], 128)
    assert shapes == [(128, 256, 4, 4), (128, 256, 8, 8), (128, 256, 16, 16)]  # DDPM's three up levels


def test_cpu_run_times_and_checks_every_form(tmp_path, monkeypatch):
    bench = load()
    monkeypatch.setattr(unet_mod, "FOLDED_MIN_WORK", 0)  # the tiny network's layers take the form set
    out = tmp_path / "up.json"
    before = unet_mod.UPSAMPLE_CONV
    res = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--network", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert {r["form"] for r in res["layers"]} == set(unet_mod.UPSAMPLE_CONV_FORMS)
    for r in res["layers"]:
        assert r["us_per_call"] > 0 and r["max_abs_diff_fp32"] < 1e-4, r
    assert [r["form"] for r in res["network"]] == list(unet_mod.UPSAMPLE_CONV_FORMS)
    for r in res["network"]:
        assert r["ms_per_forward"] > 0 and r["max_abs_diff_vs_plain"] == pytest.approx(0, abs=1e-4), r
        assert len(r["ms_per_forward_runs"]) == 1
    assert unet_mod.UPSAMPLE_CONV == before  # the network timing sets the form for itself only


def test_the_network_timing_runs_each_form(monkeypatch):
    """Each form's network calls its own layer function (the global is set around every call)."""
    bench = load()
    monkeypatch.setattr(unet_mod, "FOLDED_MIN_WORK", 0)
    calls = []
    for name in ("upsample_conv3x3", "upsample_conv3x3_transposed"):
        real = getattr(unet_mod, name)
        monkeypatch.setattr(unet_mod, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    res = {"network": []}
    bench.time_network(bench.NETWORKS["tiny"], 2, torch.device("cpu"), 1, 2, res, None)
    assert set(calls) == {"upsample_conv3x3", "upsample_conv3x3_transposed"}
    assert [len(r["ms_per_forward_runs"]) for r in res["network"]] == [2, 2, 2]


def test_bad_counts_are_refused_by_name():
    bench = load()
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--tiny", "--repeats", "0"])
