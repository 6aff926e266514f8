"""Super-resolution (difflab.editing.superres): its loss, training through the trainer, upscale, and
the refusals of paths that would give the network no low-res image. The network itself:
tests/models/test_superres_model.py."""

import pytest
import torch

import difflab as dl
from difflab import editing as E
from difflab.training.config import TrainConfig
from difflab.training.loss import TrainBatch


def tiny_sr(num_classes=None):
    torch.manual_seed(0)
    return E.LowResConditioned(base="unet_tiny", scale=2, image_channels=1, num_classes=num_classes)


def sr_config(**changes):
    d = {
        "model": {"name": "superres", "kwargs": {"base": "unet_tiny", "scale": 2}},
        "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "digits"},
        "sample": {"every": -1},
        "batch_size": 8, "steps": 2, "device": "cpu", "log_every": 1, "ckpt_every": 2,
        "cond_drop_prob": 0.0, "tensorboard": False,
    }
    d.update(changes)
    return TrainConfig.from_dict(d)


def test_superres_loss_is_the_diffusion_loss_given_the_low_res():
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    model = tiny_sr()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8, generator=g)
    t, noise = torch.randint(0, 100, (4,), generator=g), torch.randn(4, 1, 8, 8, generator=g)
    batch = TrainBatch(x0=x0, cond=None, labels=None, t=t, noise=noise, u=torch.rand(4), step=0, index=torch.arange(4))
    loss = E.SuperResLoss(proc, 2)(model, batch)
    x_t = proc.q_sample(x0, t, noise)
    by_hand = (model(x_t, t, lowres=E.downsample(x0, 2)) - noise).pow(2).mean()
    assert torch.allclose(loss, by_hand)


def test_upscale_requires_low_res_conditioning():
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    plain = dl.models.build("unet_tiny")
    with pytest.raises(ValueError, match="upscale needs a super-resolution model conditioned on low-resolution"):
        E.upscale(plain, proc, torch.zeros(2, 1, 4, 4))
    model = tiny_sr()
    with pytest.raises(ValueError, match=r"lowres must be images \[B, 1, h, w\]"):
        E.upscale(model, proc, torch.zeros(2, 3, 4, 4))


def test_plain_sampling_and_editing_refuse_a_superres_model():
    """Without low-res images the wrapper would condition on a blank one and return plausible-
    looking garbage: every sampling or editing path that gives it none refuses it."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    model, x = tiny_sr(), torch.zeros(2, 1, 8, 8)
    for call in (lambda: dl.sample(model, proc, (2, 1, 8, 8), "ddim", 3),
                 lambda: dl.invert(model, proc, x, 3),
                 lambda: E.img2img(model, proc, x, 0.5, "ddim", 3),
                 lambda: E.inpaint(model, proc, x, torch.ones(1, 8, 8), "ddim", 3)):
        with pytest.raises(ValueError, match="super-resolution model.*upscale"):
            call()
    assert E.upscale(model, proc, torch.zeros(2, 1, 4, 4), "ddim", 3).shape == (2, 1, 8, 8)  # bound: fine


def test_train_superres_and_upscale(tmp_path):
    cfg = sr_config(model={"name": "superres", "kwargs": {"base": "unet_tiny", "scale": 2, "num_classes": 10}},
                    cond_drop_prob=0.2, sample={"every": 0})  # no grid at the end: noted, not a crash
    summary = E.train_superres(cfg, tmp_path / "sr", progress=False)
    assert summary["step"] == 2
    run = dl.load(tmp_path / "sr")
    assert isinstance(run.ema_model, E.LowResConditioned) and run.num_classes == 10
    low = E.downsample(dl.data.load("digits")[0][:4], 2)
    g = torch.Generator().manual_seed(0)
    hi = E.upscale(run.ema_model, run.proc, low, "ddim", 5, generator=g)
    assert hi.shape == (4, 1, 8, 8) and torch.isfinite(hi).all()
    up = lambda **kw: E.upscale(run.ema_model, run.proc, low, "ddim", 5, cond=torch.arange(4),  # noqa: E731
                                generator=torch.Generator().manual_seed(1), **kw)
    guided, labelled = up(guidance=2.0), up(guidance=1.0)
    assert guided.shape == (4, 1, 8, 8)
    # the guidance reaches the sampler: same noise, a different result (eps_u + 2 (eps_c - eps_u);
    # after two steps of training the labels move the output by about 1e-4, and dropping the
    # guidance would leave the two bitwise equal)
    assert (guided - labelled).abs().max() > 1e-5
    assert not run.ema_model.training  # the samplers gave the model back in eval mode
    # resuming continues the same run
    more = E.train_superres(cfg.replace(steps=3), tmp_path / "sr", resume=True, progress=False)
    assert more["step"] == 3


def test_plain_trainer_refuses_a_superres_model(tmp_path):
    from difflab.training.trainer import Trainer

    with pytest.raises(ValueError, match="loss: superres"):  # before any step: the trainer's first call
        Trainer(sr_config(), tmp_path / "plain", progress=False)
    with pytest.raises(ValueError, match="needs model 'superres'"):
        E.train_superres(sr_config(model={"name": "unet_tiny", "kwargs": {}}), tmp_path / "x", progress=False)


def test_upscale_with_an_accelerated_model_keeps_float32_state_and_refuses_a_whole_run_capture():
    """The bound low-res wrapper reports the accelerated model's dtype (a bf16-stored network
    under bf16 autocast samples in float32), and refuses cuda_graph='loop', whose capture would
    keep the first call's low-res images for every later call."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    model = tiny_sr().to(torch.bfloat16)
    fast = dl.accel.accelerate(model, precision="bf16")
    assert E.WithLowRes(fast, torch.zeros(1, 1, 4, 4)).dtype == torch.float32
    seen = []
    hi = E.upscale(fast, proc, torch.zeros(2, 1, 4, 4), "ddim", 3, callback=lambda s: seen.append(s["x"].dtype))
    assert hi.dtype == torch.float32 and set(seen) == {torch.float32}
    with pytest.raises(ValueError, match="low-resolution images for every later run"):
        E.upscale(dl.accel.accelerate(tiny_sr(), cuda_graph="loop"), proc, torch.zeros(2, 1, 4, 4), "ddim", 3)
