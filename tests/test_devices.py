"""difflab.devices' choice of CPU threads: one for a small step unless told otherwise, torch's
default for large work; the trainer (a tiny MLP run, and a U-Net's step counted without training
it) and `difflab train` use it and say what they chose. (resolve_device and the CUDA-graph
helpers are tested where they are used: tests/accel, tests/training.)"""

import pytest
import torch
from scripts import REPO

from difflab import devices
from difflab.cli import main
from difflab.training import TrainConfig, Trainer, apply_overrides, load_config


@pytest.fixture
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_the_rule(no_omp_env, monkeypatch):
    monkeypatch.setattr(devices, "_TORCH_DEFAULT_THREADS", 7)
    assert devices.choose_cpu_threads(0.56e9) == (1, "small model: 0.56 GFLOP a step")
    assert devices.choose_cpu_threads(devices.SMALL_STEP_FLOPS) == (7, "2 GFLOP a step, torch's default")
    assert devices.choose_cpu_threads(None) == (7, "torch's default")  # unknown work: torch's choice
    assert devices.choose_cpu_threads(0.56e9, requested=3) == (3, "as asked")
    assert devices.choose_cpu_threads(64e9, requested=1) == (1, "as asked")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the environment's setting is a request too
    assert devices.choose_cpu_threads(0.56e9) == (2, "OMP_NUM_THREADS")
    assert devices.choose_cpu_threads(0.56e9, requested=1) == (1, "as asked")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: ignored
    assert devices.choose_cpu_threads(0.56e9) == (1, "small model: 0.56 GFLOP a step")


def test_use_sets_torch_and_says_so(no_omp_env):
    torch.set_num_threads(2)
    line = devices.use_cpu_threads(1e8)
    assert torch.get_num_threads() == 1
    assert line == "cpu threads: 1 (small model: 0.1 GFLOP a step; --threads N to change)"
    assert devices.use_cpu_threads(1e8, 2) == "cpu threads: 2 (as asked; --threads N to change)"
    assert torch.get_num_threads() == 2


def test_count_flops_counts_matmuls():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert devices.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert devices.count_flops(lambda: conv(torch.randn(2, 3, 6, 6))) == 2 * (2 * 6 * 6) * (5 * 3 * 9)


def test_the_trainer_chooses_by_the_step(tmp_path, no_omp_env):
    """A tiny MLP: one thread; the shipped MNIST U-Net on the CPU (a step counted, not trained):
    torch's default; cpu_threads wins over both."""
    tiny = {"model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 2}},
            "diffusion": {"schedule": "linear", "T": 100}, "sample": {"every": -1},
            "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 100}},
            "batch_size": 16, "steps": 2, "device": "cpu"}
    torch.set_num_threads(2)
    t = Trainer(TrainConfig.from_dict(tiny), tmp_path / "a", progress=False)
    assert torch.get_num_threads() == 1 and t.cpu_threads_note.startswith("cpu threads: 1 (small model: ")
    t = Trainer(TrainConfig.from_dict({**tiny, "cpu_threads": 2}), tmp_path / "b", progress=False)
    assert torch.get_num_threads() == 2 and t.cpu_threads_note.startswith("cpu threads: 2 (as asked")
    cfg = apply_overrides(load_config(REPO / "configs" / "mnist.yaml"),
                          ["device=cpu", "batch_size=4", "precision=fp32", "compile=none", "cuda_graph=false"])
    t = Trainer(cfg, tmp_path / "c", data=(torch.zeros(8, 1, 28, 28), None), progress=False)
    # 4 images of the 7M-parameter U-Net: about 25 GFLOP a step
    assert "GFLOP a step, torch's default" in t.cpu_threads_note
    assert torch.get_num_threads() == devices._TORCH_DEFAULT_THREADS


def test_difflab_train_prints_the_choice_and_takes_threads(tmp_path, capsys, no_omp_env):
    cfg = REPO / "configs" / "digits.yaml"  # it sets cpu_threads: 1
    common = ["--steps", "2", "--log-every", "1", "--ckpt-every", "2", "--sample-every", "-1", "--quiet"]
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "a"), *common]) == 0
    assert "cpu threads: 1 (as asked; --threads N to change)" in capsys.readouterr().out
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "b"), "--threads", "0", *common]) == 0
    assert "cpu threads: 1 (small model: 0.58 GFLOP a step; --threads N to change)" in capsys.readouterr().out
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "c"), "--threads", "2", *common]) == 0
    assert "cpu threads: 2 (as asked" in capsys.readouterr().out
