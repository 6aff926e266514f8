"""The trainer's losses (difflab.training.loss): the masked loss of a mask-conditioned model -- its
task mix, its draws as a function of (seed, step, clip index), the regression on the generated part
alone against a hand computation, and a toy run of configs/moving_digits_masked.yaml's structure
through `difflab train` (resumed to the same weights) and `difflab inpaint`. The other losses are
tested with their trainers (test_trainer.py, test_hybrid.py, ...)."""

import math

import pytest
import torch
from torch import nn

import difflab as dl
from difflab.cli import main
from difflab.models.masked import MaskConditioned, WithKnown
from difflab.training import apply_overrides, load_config
from difflab.training.loss import MASK_TASKS, MaskedLoss, TrainBatch, build_loss, task_mask
from scripts import REPO

CONFIG = REPO / "configs" / "moving_digits_masked.yaml"
TOY = ["steps=4", "batch_size=4", "log_every=1", "ckpt_every=2", "data.kwargs.n=8", "model.kwargs.channels=8",
       "sample.every=-1"]


class Affine(nn.Module):
    """The base network out = a * x_t + b * (known channel) + c * (mask channel) + delta(mask)."""

    def __init__(self, a=0.5, b=1.0, c=0.0, given=0.0, generated=0.0) -> None:
        super().__init__()
        self.a, self.b, self.c, self.given, self.generated = a, b, c, given, generated
        self.num_classes = None

    def forward(self, h, t, cond=None):
        x, y, m = h.split(1, dim=2)
        return self.a * x + self.b * y + self.c * m + self.given * (1 - m) + self.generated * m


def affine_model(**kw):
    model = MaskConditioned("video_unet_tiny", channels=8, norm_groups=4)
    model.net = Affine(**kw)
    return model


def batch_of(x0, step=5, index=(3, 9), t=(10, 70), seed=0):
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(x0=x0, cond=None, labels=None, t=torch.tensor(t), noise=torch.randn(x0.shape, generator=g),
                      u=torch.rand(len(t)), step=step, index=torch.tensor(index))


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.cosine(100))


def test_the_loss_by_hand_on_a_tiny_clip(proc):
    """L = mean_b sum(m (out - eps)^2) / sum(m), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, computed
    element by element in float64 from the schedule's abar."""
    x0 = torch.rand(2, 3, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = MaskedLoss(proc, seed=7)
    batch = batch_of(x0)
    model = affine_model(a=0.5, b=1.0, c=0.25)
    m = loss.masks(x0, batch.step, batch.index)
    assert m.shape == (2, 3, 1, 2, 2)
    abar = dl.schedules.cosine(100).alphas_cumprod.double()
    total = 0.0
    for b in range(2):
        s, n = 0.0, 0.0
        ab = float(abar[batch.t[b]])
        for i in range(3):
            for r in range(2):
                for c in range(2):
                    mi = float(m[b, i, 0, r, c])
                    x, e = float(x0[b, i, 0, r, c]), float(batch.noise[b, i, 0, r, c])
                    xt = math.sqrt(ab) * x + math.sqrt(1 - ab) * e
                    out = 0.5 * xt + (1 - mi) * x + 0.25 * mi
                    s, n = s + mi * (out - e) ** 2, n + mi
        total += s / n
    assert float(loss(model, batch)) == pytest.approx(total / 2, rel=1e-5)


def test_no_loss_on_the_given_part(proc):
    """The output on given pixels does not enter the loss; on generated pixels it does."""
    x0 = torch.rand(2, 8, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = MaskedLoss(proc, seed=0)
    batch = batch_of(x0, step=1, index=(0, 1))
    m = loss.masks(x0, 1, batch.index)
    assert 0 < float(m.mean()) < 1  # both parts present in these two draws
    base = loss(affine_model(), batch)
    assert torch.equal(loss(affine_model(given=3.0), batch), base)
    assert not torch.allclose(loss(affine_model(generated=3.0), batch), base)


def test_nothing_given_is_the_process_loss(proc):
    """With every pixel generated (m = 1) the loss is Process.training_loss, weighting included."""
    x0 = torch.rand(2, 4, 1, 4, 4) * 2 - 1
    batch = batch_of(x0)
    model = affine_model(c=0.3)
    for weighting in (None, "min_snr"):
        loss = MaskedLoss(proc, probs=(0, 0, 0, 1), weighting=weighting)
        ones = torch.ones_like(x0)
        want = proc.training_loss(WithKnown(model, x0, ones), x0, t=batch.t, noise=batch.noise,
                                  weighting=weighting)
        assert float(loss(model, batch)) == pytest.approx(float(want), rel=1e-6)


def test_masks_are_a_function_of_seed_step_and_index(proc):
    x0 = torch.zeros(6, 8, 1, 8, 8)
    loss = MaskedLoss(proc, seed=3)
    index = torch.tensor([5, 0, 17, 2, 9, 4])
    a = loss.masks(x0, 11, index)
    assert torch.equal(a, MaskedLoss(proc, seed=3).masks(x0, 11, index))  # another instance: the same
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    assert torch.equal(loss.masks(x0, 11, index[perm]), a[perm])  # a clip's mask is its own: not its place
    assert torch.equal(loss.masks(x0[:2], 11, index[:2]), a[:2])  # nor the batch's size
    assert not torch.equal(loss.masks(x0, 12, index), a)
    assert not torch.equal(MaskedLoss(proc, seed=4).masks(x0, 11, index), a)


def test_the_task_mix():
    """Each task drawn at its probability (within 4 standard errors), prediction's k uniform on
    1 .. T-1, every mask of a frame task whole frames with something given and something generated,
    boxes of size/4 .. 3 size/4 in every frame, nothing: all ones."""
    T, H, W, n = 8, 16, 16, 2000
    probs = (0.35, 0.3, 0.2, 0.15)
    g = torch.Generator()
    counts, ks = dict.fromkeys(MASK_TASKS, 0), []
    for i in range(n):
        task, m = task_mask(T, H, W, g.manual_seed(i), probs)
        counts[task] += 1
        assert m.shape == (T, 1, H, W) and set(m.unique().tolist()) <= {0.0, 1.0}
        if task in ("prediction", "interpolation"):
            frame = m[:, 0, 0, 0]
            assert torch.equal(m, frame.view(T, 1, 1, 1).expand_as(m)) and 0 < frame.sum() < T
            if task == "prediction":
                k = int((frame == 0).sum())
                assert torch.equal(frame[:k], torch.zeros(k)) and torch.equal(frame[k:], torch.ones(T - k))
                ks.append(k)
        elif task == "box":
            assert torch.equal(m, m[:1].expand_as(m))  # the same box in every frame
            rows, cols = m[0, 0].sum(1).max(), m[0, 0].sum(0).max()
            assert H // 4 <= cols <= 3 * H // 4 and W // 4 <= rows <= 3 * W // 4
        else:
            assert torch.equal(m, torch.ones_like(m))
    for task, p in zip(MASK_TASKS, probs):
        assert abs(counts[task] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (task, counts)
    hist = torch.bincount(torch.tensor(ks), minlength=T)[1:]
    expect = len(ks) / (T - 1)
    assert float(((hist - expect) ** 2 / expect).sum()) < 24.3  # chi-square, 6 dof, p = 0.0005


def test_refusals(proc):
    with pytest.raises(ValueError, match="clips \\[B, T, C, H, W\\] of 2 or more frames"):
        MaskedLoss(proc).masks(torch.zeros(2, 1, 8, 8), 0, torch.arange(2))
    with pytest.raises(ValueError, match="probs must be 4 non-negative numbers"):
        MaskedLoss(proc, probs=(1, 0, 0))
    cfg = load_config(CONFIG)
    with pytest.raises(ValueError, match="needs model 'masked'"):
        build_loss(proc, apply_overrides(cfg, ["model.name=video_unet_tiny", "model.kwargs={num_classes: 10}"]))
    with pytest.raises(ValueError, match="EDM's preconditioning"):
        build_loss(proc, apply_overrides(cfg, ["diffusion.process=edm", "diffusion.schedule=linear",
                                               "diffusion.T=1000", "diffusion.prediction=null"]))


def test_a_toy_run_trains_resumes_to_the_same_weights_and_inpaints(tmp_path):
    """configs/moving_digits_masked.yaml shrunk (8 channels, 4 clips a step, 4 steps) through `difflab
    train`; the same run stopped at step 2 and resumed ends on the same weights (the masks are drawn
    from the step and the clips, not from the order of events); `difflab inpaint` samples it."""
    sets = [a for kv in TOY for a in ("--set", kv)]
    assert main(["train", "--config", str(CONFIG), "--out", str(tmp_path / "a"), "--quiet", *sets]) == 0
    assert main(["train", "--config", str(CONFIG), "--out", str(tmp_path / "b"), "--quiet", *sets,
                 "--max-time", "0.001"]) == 0  # stops at the first log window (step 1) with a checkpoint
    stopped = dl.load(tmp_path / "b").step
    assert 0 < stopped < 4
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--quiet", "--max-time", "3600"]) == 0
    a, b = dl.load(tmp_path / "a"), dl.load(tmp_path / "b")
    assert a.step == b.step == 4 and isinstance(a.ema_model, MaskConditioned)
    for (name, p), q in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().values()):
        assert torch.equal(p, q), name
    md = dl.data.moving_digits(1, frames=8, canvas=16, digits=1, speed=(0.5, 1.5), seed=13)
    dl.data.clips.save_clips_gif(md.clips, tmp_path / "clip.gif", nrow=1, padding=0)
    assert main(["inpaint", "--ckpt", str(tmp_path / "a"), "--input", str(tmp_path / "clip.gif"), "--mask",
                 "future:2", "--steps", "3", "--label", str(int(md.labels[0, 0])), "--out",
                 str(tmp_path / "out.gif")]) == 0
    assert (tmp_path / "out.gif").stat().st_size > 0
