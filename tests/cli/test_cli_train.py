"""`difflab train` / `difflab sample` end to end at tiny sizes, with the shipped configs."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.cli import main
from difflab.training.checkpoint import LoadedRun

REPO = Path(__file__).resolve().parents[2]  # tests/cli/ -> the repository root


def test_train_sample_resume_with_digits_config(tmp_path, capsys, monkeypatch):
    run = tmp_path / "digits"
    rc = main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(run), "--steps", "4",
               "--log-every", "2", "--ckpt-every", "2", "--set", "sample.steps=2", "--set", "sample.per_class=2",
               "--quiet"])
    assert rc == 0
    assert (run / "checkpoints" / "step_00000004" / "model.safetensors").is_file()
    assert (run / "config.yaml").is_file() and (run / "log.csv").is_file()
    grid = Image.open(run / "samples" / "step_00000004.png")  # a row per class: 10 rows of 2
    assert grid.size[1] > 4 * grid.size[0]

    out = tmp_path / "seven.png"
    rc = main(["sample", "--ckpt", str(run), "--n", "6", "--sampler", "ddim", "--steps", "3", "--guidance", "3",
               "--label", "7", "--seed", "0", "--out", str(out), "--save-tensor", str(tmp_path / "x.pt")])
    assert rc == 0 and out.is_file()
    x = torch.load(tmp_path / "x.pt")
    assert x.shape == (6, 1, 8, 8)
    assert torch.equal(x, dl.load(run).sample(6, "ddim", 3, guidance=3.0, labels=7, seed=0))
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--label", "all",
                 "--out", str(tmp_path / "rows.png")]) == 0
    # the speed flags reach dl.accel.accelerate (cli/speed.py), and the run samples with the wrapper;
    # --fast is a preset of them (CUDA only: refused before any work on the CPU, as are impossible
    # combinations)
    from difflab.cli import speed as cli_speed

    seen, options = [], []
    real_sample, real_accelerate = LoadedRun.sample, cli_speed.accelerate

    def record(self, *args, **kwargs):
        seen.append(kwargs["model"])
        return real_sample(self, *args, **kwargs)

    def accelerate(model, **kwargs):
        options.append(kwargs)
        return real_accelerate(model, **kwargs)

    monkeypatch.setattr(LoadedRun, "sample", record)
    monkeypatch.setattr(cli_speed, "accelerate", accelerate)
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--precision", "bf16",
                 "--channels-last", "--group-norm", "always", "--out", str(out)]) == 0
    assert options == [{"precision": "bf16", "channels_last": True, "compile": False, "cuda_graph": False,
                        "group_norm": "always"}]
    (fast,) = seen
    assert isinstance(fast, dl.accel.Accelerated) and fast.precision == "bf16" and fast.channels_last
    capsys.readouterr()
    for flags, message in ((["--fast"], "--fast replays CUDA graphs, which needs a CUDA device"),
                           (["--cuda-graph"], "--cuda-graph replays CUDA graphs"),
                           (["--group-norm", "triton"], "add --channels-last")):
        assert main(["sample", "--ckpt", str(run), "--device", "cpu", *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert len(seen) == 1 and len(options) == 1
    monkeypatch.undo()
    # --weights bf16: the network stored in bf16, under the bf16 autocast it implies; the samples
    # (the sampler's state) stay float32
    stored = []

    def spy(self, *args, **kwargs):
        model = kwargs["model"]
        stored.append((next(self.ema_model.parameters()).dtype, model.precision, model.dtype))
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(LoadedRun, "sample", spy)
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--weights", "bf16",
                 "--save-tensor", str(tmp_path / "w.pt"), "--out", str(out)]) == 0
    assert stored == [(torch.bfloat16, "bf16", torch.float32)] and torch.load(tmp_path / "w.pt").dtype == torch.float32
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run), "--weights", "bf16", "--precision", "fp16", "--out", str(out)]) == 2
    assert "leave --precision out or set it to bf16" in capsys.readouterr().err

    # continue the run to 6 steps, reusing its stored config; --cuda-graph (a speed option a resume
    # may change) is a CUDA option: noted on the CPU, which steps eagerly
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet", "--cuda-graph"]) == 0
    assert dl.load(run).step == 6
    assert "cuda_graph is a CUDA option" in capsys.readouterr().err
    assert "cuda_graph: true" in (run / "config.yaml").read_text()
    # mistakes: a clear message and exit status 2, no traceback
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(run), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--label", "12", "--steps", "2", "--out", str(out)]) == 2
    assert "0 .. 9" in capsys.readouterr().err
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--set", "optim.lr=-1"]) == 2
    assert "'optim.lr'" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["mnist_cond.yaml", "mnist.yaml"])
def test_mnist_configs_run_small_on_the_cpu(config, tmp_path, mnist_dir):
    """The GPU configs (bf16, channels_last, torch.compile) run as they are on a CPU at reduced size
    (on the tests' MNIST-format files: the configs' ../shared/data/mnist is not needed)."""
    run = tmp_path / "mnist"
    rc = main(["train", "--config", str(REPO / "configs" / config), "--out", str(run), "--steps", "2",
               "--batch-size", "4", "--log-every", "1", "--sample-every", "-1", "--quiet",
               "--set", f"data.kwargs.root={mnist_dir}"])
    assert rc == 0
    loaded = dl.load(run)
    assert loaded.config.model.name == "unet_mnist" and loaded.config.precision == "bf16"
    assert loaded.num_classes == (10 if config == "mnist_cond.yaml" else None)
    x = loaded.sample(2, "ddim", 2, labels=3 if loaded.num_classes else None, seed=0)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_digits_config_short_run_gives_guided_digits_of_the_asked_class(tmp_path):
    """The shipped digits config, 300 steps instead of 2,000 (about 10 s): guided samples
    (w = 3) are already judged the requested class >= 90% of the time by a logistic regression
    fitted on real digits (97.8% on held-out real ones; benchmarks/digits_guided_accuracy.py
    runs the full config)."""
    from sklearn.linear_model import LogisticRegression

    from difflab.training import Trainer, apply_overrides, load_config

    cfg = apply_overrides(load_config(REPO / "configs" / "digits.yaml"),
                          ["steps=300", "sample.every=-1", "ckpt_every=300"])
    Trainer(cfg, tmp_path, progress=False).train()
    x, y = dl.data.load("digits")
    judge = LogisticRegression(max_iter=5000).fit(x.flatten(1).numpy(), y.numpy())
    labels = torch.arange(10).repeat_interleave(20)
    samples = dl.load(tmp_path).sample(200, "ddim", 20, guidance=3.0, labels=labels, seed=0)
    assert samples.shape == (200, 1, 8, 8)
    hit = judge.predict(samples.clamp(-1, 1).flatten(1).numpy()) == labels.numpy()
    assert hit.mean() >= 0.9, hit.mean()
    # the public function with its defaults on the loaded run (issue 29: [-1315, 3332] before the
    # run's process knew its data's range): the same digits, in [-1, 1]
    run = dl.load(tmp_path)
    plain = dl.sample(run.ema_model, run.proc, (200, 64), cond=labels, guidance=3.0,
                      generator=torch.Generator().manual_seed(0))
    assert float(plain.abs().max()) <= 1.0
    assert (judge.predict(plain.numpy()) == labels.numpy()).mean() >= 0.9


@pytest.mark.parametrize("process", ["ddpm", "edm"])
def test_dit_config_trains_samples_and_edits_like_any_network(process, tmp_path):
    """configs/digits_dit.yaml at toy width through difflab train and sample, then the library's samplers,
    guidance, editing functions and speed layer on the loaded DiT (under EDM: inside EDMPrecond)."""
    run = tmp_path / "dit"
    sets = ["model.kwargs.hidden_size=32", "model.kwargs.depth=1", "model.kwargs.num_heads=2"]
    if process == "edm":
        sets += ["diffusion.process=edm", "diffusion.prediction=x0", "diffusion.schedule=linear"]
    rc = main(["train", "--config", str(REPO / "configs" / "digits_dit.yaml"), "--out", str(run), "--steps", "3",
               "--batch-size", "8", "--log-every", "1", "--sample-every", "-1", "--quiet",
               *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--guidance", "3", "--label", "4",
                 "--out", str(tmp_path / "dit.png")]) == 0 and (tmp_path / "dit.png").is_file()
    loaded = dl.load(run)
    assert loaded.config.model.name == "dit_t_2" and loaded.config.diffusion.process == process
    net = loaded.ema_model.net if process == "edm" else loaded.ema_model
    assert isinstance(net, dl.models.DiT) and len(net.blocks) == 1
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    labels = torch.tensor([1, 2])
    for sampler in ("ddim", "dpmpp_2m", "heun"):
        x = loaded.sample(2, sampler, 3, guidance=2.0, labels=labels, seed=0)
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    filled = dl.editing.inpaint(loaded.ema_model, loaded.proc, image, mask, "ddim", 3, cond=labels, generator=g)
    assert torch.equal(filled * (1 - mask), image * (1 - mask))  # the known pixels (mask 0) are kept
    assert dl.editing.img2img(loaded.ema_model, loaded.proc, image, 0.5, "ddim", 4, cond=labels).shape == image.shape
    fast = dl.accel.accelerate(loaded.ema_model, precision="bf16", compile={"backend": "eager"})
    x = dl.sample(fast, loaded.proc, (2, 1, 8, 8), "ddim", 3, cond=labels, guidance=2.0, noise=image)
    ref = dl.sample(loaded.ema_model, loaded.proc, (2, 1, 8, 8), "ddim", 3, cond=labels, guidance=2.0, noise=image)
    assert x.dtype == torch.float32 and (x - ref).abs().max() < 0.1


def speed_setting(model) -> dict:
    """What the speed flags made of a network: accelerate()'s options, read back from the
    wrapper and the swapped GroupNorm classes, and the dtype the network is stored in."""
    from difflab.accel.group_norm import NHWCGroupNorm, TritonGroupNorm
    from difflab.models.norm import GroupNorm

    net = model.module if isinstance(model, dl.accel.Accelerated) else model
    norm = next(m for m in net.modules() if isinstance(m, GroupNorm))  # (a U-Net's)
    group_norm = ("triton" if isinstance(norm, TritonGroupNorm) else norm.when if isinstance(norm, NHWCGroupNorm)
                  else None)
    setting = {"group_norm": group_norm, "weights": next(net.parameters()).dtype}
    if isinstance(model, dl.accel.Accelerated):
        setting.update(precision=model.precision, channels_last=model.channels_last,
                       compile=model.compile_kwargs is not None, cuda_graph=model.cuda_graph)
    return setting


def test_fast_preset_takes_the_triton_norms_on_cuda_where_triton_is_installed(monkeypatch):
    """``--fast`` is the fastest setting measured on a GPU: the network stored in bf16,
    channels_last, compile, the whole run as one CUDA graph (a graph per call where --seed must
    drive the noise) and difflab's Triton GroupNorm, which it leaves out where the triton package
    is missing; explicit flags win. (cli/speed.py's ``accelerated``, as every sampling and editing
    command applies it; the network is a CPU one, which accelerate() does not move.)"""
    import argparse
    import importlib.util

    from difflab.cli.speed import accelerated

    def speed(device="cuda", deterministic=True, **kw):
        base = dict(fast=True, precision=None, channels_last=False, compile=False, cuda_graph=False, group_norm=None,
                    weights=None)
        args = argparse.Namespace(**{**base, **kw})
        return speed_setting(accelerated(dl.models.unet_tiny(), args, torch.device(device), deterministic)), args

    # the whole run as one graph (deterministic runs), and the network stored in bf16 (args.weights)
    want = {"precision": "bf16", "channels_last": True, "compile": True, "cuda_graph": "loop",
            "weights": torch.bfloat16}
    pytest.importorskip("triton")
    got, args = speed()
    assert got == {**want, "group_norm": "triton"} and args.weights == "bf16"
    assert speed(group_norm="compile")[0] == {**want, "group_norm": "compile"}
    assert speed(deterministic=False)[0]["cuda_graph"] is True  # --seed holds: a graph per call
    got, args = speed(weights="fp32")  # an explicit choice wins
    assert got["precision"] == "bf16" and got["weights"] == torch.float32 and args.weights == "fp32"
    got, args = speed(precision="fp16")
    assert got["precision"] == "fp16" and got["weights"] == torch.float16 and args.weights == "fp16"
    with pytest.raises(ValueError, match="--weights bf16 stores the network in bf16"):
        speed(weights="bf16", precision="fp16")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "triton" else real_find_spec(name, *a, **k))
    assert speed()[0] == {**want, "group_norm": None}
    assert speed(cuda_graph=True)[0] == {**want, "group_norm": None, "cuda_graph": True}
    assert speed(fast=False, cuda_graph="loop")[0] == {"precision": None, "channels_last": False, "compile": False,
                                                       "cuda_graph": "loop", "group_norm": None,
                                                       "weights": torch.float32}
    assert speed(fast=False)[0] == {"group_norm": None, "weights": torch.float32}  # no flag: not wrapped
    with pytest.raises(ValueError, match="--cuda-graph replays CUDA graphs"):
        speed(device="cpu", fast=False, cuda_graph="loop")
    with pytest.raises(ValueError, match="not from --seed"):  # a sampler that draws noise: --seed would not hold
        speed(deterministic=False, fast=False, cuda_graph="loop")