"""Every shipped config (configs/*.yaml) samples within its data's range with dl.sample's defaults;
the digits configs of the other processes (digits_edm.yaml, digits_flow.yaml) are digits.yaml
but for the process and its sampler, and train.

A loaded run's process knows the data's range (``build_process``: the config's
``sample.clip_x0``, else [-1, 1] for every image data set), and the samplers clip their x0
estimates to it unless told otherwise. Without it, an eps-prediction network's error is
multiplied by up to 1 / sqrt(abar_T) in the x0 estimate: 20,000 for digits' cosine schedule,
where an imperfect network's samples reached [-2400, 5600] (issue 29). The networks here are
untrained and perturbed, the worst case of an imperfect network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import difflab as dl
from difflab.training.build import build_model, build_process, text_vocabulary
from difflab.training.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _sample(cfg, model, proc, **options) -> torch.Tensor:
    """Two samples with dl.sample's defaults (upscale's for a super-resolution network)."""
    g = torch.Generator().manual_seed(1)
    shape = (cfg.model.kwargs["dim"],) if cfg.data.flatten else (1, 8, 8) if cfg.data.name == "digits" else (1, 28, 28)  # or MNIST
    if cfg.data.name == "moving_digits":  # clips [T, 1, H, W]: two 8x8 frames, a size every video network takes
        shape = (2, 1, 8, 8)
    if cfg.data.name == "captioned_digits":  # 16x16 canvases (sklearn's digits)
        shape = (1, 16, 16)
    cond = torch.tensor([3, 10]) if getattr(model, "num_classes", None) else None
    if getattr(model, "tokenizer", None) is not None:  # a caption and the empty one
        cond = model.tokenizer.encode(["a bold 3 on the left", ""])
    if cfg.model.name == "masked":  # a mask-conditioned network samples through inpaint: nothing known, all ones
        blank = torch.zeros(2, *shape)
        return dl.editing.inpaint(model, proc, blank, torch.ones_like(blank), "ddim", 5, cond=cond, generator=g,
                                  **options)
    if cfg.model.name == "superres":
        low = torch.rand(2, 1, 14, 14, generator=g) * 2 - 1
        return dl.editing.upscale(model, proc, low, "ddim", 5, cond=cond, generator=g, **options)
    return dl.sample(model, proc, (2, *shape), "ddim", 5, cond=cond, generator=g, **options)


def test_the_configs_are_found():
    assert len(CONFIGS) >= 7 and {"digits.yaml", "digits_edm.yaml", "digits_flow.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_config(p).loss != "autoencoder"
                                  and load_config(p).latent.autoencoder is None], ids=lambda p: p.stem)
def test_default_sampling_stays_in_the_data_range(path):
    """(every config of a pixel-space denoiser: an autoencoder's, configs/mnist_vae.yaml, and the latent
    ones, whose latents are unclipped, are tested in their own files: tests/training/test_latent_config.py)"""
    cfg = load_config(path)
    if cfg.data.name == "captioned_digits":  # a text model's words come from its captions (as the trainer does)
        captions = dl.data.load("captioned_digits", **{**cfg.data.kwargs, "n": 200})[1]
        text_vocabulary(cfg, captions, "captioned_digits")
    proc = build_process(cfg)
    assert proc.clip_x0 == 1.0  # every shipped config trains on images scaled to [-1, 1]
    torch.manual_seed(0)
    x = _sample(cfg, _perturbed(build_model(cfg)), proc)
    assert torch.isfinite(x).all() and float(x.abs().max()) <= 1.0


def test_without_the_range_an_imperfect_eps_network_leaves_it_far_behind():
    """The check above can fail: the same digits network, its clipping switched off."""
    cfg = load_config(next(p for p in CONFIGS if p.name == "digits.yaml"))
    torch.manual_seed(0)
    x = _sample(cfg, _perturbed(build_model(cfg)), build_process(cfg), clip_x0=None)
    assert float(x.abs().max()) > 10


def test_a_2d_toy_run_has_no_range_and_an_explicit_clip_wins():
    cfg = load_config(next(p for p in CONFIGS if p.name == "digits.yaml"))
    toy = cfg.replace(data=cfg.data.__class__(name="toy2d"), sample=cfg.sample.__class__(clip_x0=None))
    assert build_process(toy).clip_x0 is None
    proc = dl.GaussianDiffusion(dl.schedules.linear(100), clip_x0=1.0)
    model = lambda x, t: torch.full_like(x, 3.0)  # noqa: E731 - eps = 3 everywhere: x0 far outside
    wide = dl.sample(model, proc, (2, 2), "ddim", 5, generator=torch.Generator().manual_seed(0), clip_x0=2.0)
    assert 1.0 < float(wide.abs().max()) <= 2.0
    with pytest.raises(ValueError, match="clip_x0 .*finite number > 0"):
        dl.GaussianDiffusion(dl.schedules.linear(100), clip_x0=0.0)


PROCESS_CONFIGS = {"digits_edm.yaml": ("edm", dl.processes.EDM, "heun"),
                   "digits_flow.yaml": ("flow", dl.processes.FlowMatching, "ddim")}


@pytest.mark.parametrize("name", sorted(PROCESS_CONFIGS))
def test_the_process_configs_are_digits_but_for_the_process(name, tmp_path):
    """Same network, data, optimiser, EMA, batch, steps and seed as digits.yaml (the comparison of
    processes holds all else equal); the process and its sampler differ. A 4-step run of each
    trains, writes its sample grid (the config's sampler on the process's own noise levels) and
    loads as its process."""
    from PIL import Image

    from difflab.training import Trainer, apply_overrides

    process, cls, sampler = PROCESS_CONFIGS[name]
    base = load_config(next(p for p in CONFIGS if p.name == "digits.yaml")).to_dict()
    cfg = load_config(next(p for p in CONFIGS if p.name == name))
    mine = cfg.to_dict()
    assert mine.pop("diffusion")["process"] == process and base.pop("diffusion")["process"] == "ddpm"
    assert mine.pop("sample")["sampler"] == sampler
    base.pop("sample")
    assert mine == base
    assert isinstance(build_process(cfg), cls)
    tiny = apply_overrides(cfg, ["steps=4", "log_every=2", "ckpt_every=4", "sample.steps=2", "sample.per_class=1"])
    Trainer(tiny, tmp_path, progress=False).train()
    grid = Image.open(tmp_path / "samples" / "step_00000004.png")  # one row per class: 10 rows of 1
    assert grid.size[1] > 5 * grid.size[0]
    run = dl.load(tmp_path)
    assert isinstance(run.proc, cls) and run.ema_model.trained_process is run.proc
    x = run.sample(2, sampler, 2, guidance=3.0, labels=[3, 7], seed=0)
    assert x.shape == (2, 1, 8, 8) and float(x.abs().max()) <= 1 + 1e-4  # (x + (x0 - x): x0 up to rounding)


def test_the_latent_text_config_fits_its_autoencoders_latents():
    """configs/mnist_text.yaml diffuses the 12x12x4 latents that configs/mnist_text_vae.yaml's autoencoder
    makes of 48x48 captioned MNIST canvases, conditioned on captions (its words: the grammar's)."""
    ae_cfg = load_config(next(p for p in CONFIGS if p.name == "mnist_text_vae.yaml"))
    cfg = load_config(next(p for p in CONFIGS if p.name == "mnist_text.yaml"))
    assert cfg.latent.autoencoder == "runs/mnist_text_vae" and ae_cfg.data.kwargs["source"] == "mnist"
    ae = build_model(ae_cfg).eval()
    with torch.no_grad():
        z = ae.encode(torch.zeros(1, 1, 48, 48)).mean
    captions = dl.data.load("captioned_digits", n=200)[1]  # (sklearn's digits: the same grammar's words)
    text_vocabulary(cfg, captions, "captioned_digits")
    model = build_model(cfg).eval()
    assert z.shape[1:] == (model.in_channels, model.image_size, model.image_size) == (4, 12, 12)
    with torch.no_grad():
        out = model(torch.randn(2, *z.shape[1:]), torch.tensor([10, 900]),
                    model.tokenizer.encode(["a small bold 7 on the left", ""]))
    assert out.shape == (2, 4, 12, 12) and torch.isfinite(out).all()
