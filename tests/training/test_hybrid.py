"""Improved DDPM's losses (difflab.training.hybrid): L_hybrid = L_simple + lambda L_vlb with the
mean's gradient stopped in L_vlb, L_vlb alone with the loss-aware timestep sampler, and their
place in the trainer (draws, checkpoints, exact resume, config checks)."""

import math

import pytest
import torch
from tiny_config import tiny

import difflab as dl
from difflab.training import Trainer, TrainBatch
from difflab.training.hybrid import HybridLoss, LossAwareSampler


class _Leaf(torch.nn.Module):
    """A 'network' whose output is a parameter: [prediction, v] for a batch of 3 flat samples of 4 values."""

    learn_sigma = True

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mean = torch.nn.Parameter(0.5 * torch.randn(3, 4, generator=g))
        self.v = torch.nn.Parameter(torch.rand(3, 4, generator=g) * 2 - 1)

    def forward(self, x, t, cond=None):
        return torch.cat([self.mean, self.v], dim=1)


def _batch(proc, t):
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (3, 4), generator=g) / 127.5 - 1).float()
    return TrainBatch(x0=x0, cond=None, labels=None, t=torch.tensor(t), noise=torch.randn(3, 4, generator=g),
                      u=torch.ones(3), step=0, index=torch.arange(3))


def test_hybrid_loss_is_l_simple_plus_lambda_t_times_the_term_in_bits():
    """Written out independently: the KL of torch.distributions at t >= 1 and the discretized
    decoder at t = 0, per value, then mean / ln 2, times lambda T."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    model, batch = _Leaf(), _batch(proc, [0, 5, 99])
    got = HybridLoss(proc, vlb_weight=0.001).per_sample(model, batch)[0]
    x0, t, noise = batch.x0.double(), batch.t, batch.noise.double()
    x_t = proc.q_sample(x0, t, noise)
    eps_hat = model.mean.detach().double()
    mse = ((eps_hat - noise) ** 2).mean(1)
    x0_hat = proc.predict_x0(x_t, t, eps_hat)
    frac = (model.v.detach().double() + 1) / 2
    log_var = frac * proc.betas.log()[t, None] + (1 - frac) * proc.posterior_log_variance_clipped[t, None]
    mq, _, lq = proc.q_posterior(x0, x_t, t)
    mp, _, _ = proc.q_posterior(x0_hat, x_t, t)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mq, (lq / 2).exp()),
                                           torch.distributions.Normal(mp, (log_var / 2).exp())).sum(1)
    dec = -dl.processes.discretized_gaussian_log_likelihood(x0, x0_hat, log_var / 2).sum(1)
    term = torch.where(t == 0, dec, kl) / (4 * math.log(2))
    torch.testing.assert_close(got.double(), mse + 0.001 * 100 * term, rtol=1e-5, atol=1e-6)


def test_l_vlb_trains_only_the_variance_in_the_hybrid_loss_and_both_alone():
    """sg[mean] (Nichol & Dhariwal, sec. 3.1): the mean's gradient of L_hybrid is L_simple's alone."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    batch = _batch(proc, [3, 40, 70])
    grads = {}
    for name, loss in [("hybrid", HybridLoss(proc)), ("vlb", HybridLoss(proc, "vlb"))]:
        model = _Leaf()
        loss(model, batch).backward()
        grads[name] = (model.mean.grad.clone(), model.v.grad.clone())
    model = _Leaf()
    simple = ((model.mean - batch.noise) ** 2).flatten(1).mean(1).mean()
    simple.backward()
    torch.testing.assert_close(grads["hybrid"][0], model.mean.grad)
    assert grads["hybrid"][1].abs().sum() > 0  # the variance learns from L_vlb
    assert grads["vlb"][0].abs().sum() > 0 and not torch.allclose(grads["vlb"][0], model.mean.grad)


def test_the_loss_aware_sampler_is_uniform_until_warm_then_follows_the_terms_second_moment():
    s = LossAwareSampler(T=4, history=2, uniform_prob=0.1)
    torch.testing.assert_close(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    s.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # t = 3: one value
    s.update(torch.tensor([3, 3]), torch.tensor([0.0, 8.0]))  # the oldest of t = 3 dropped: [0, 8]
    rms = torch.tensor([1.0, 2.0, 3.0, math.sqrt(32)], dtype=torch.float64)
    torch.testing.assert_close(s.probabilities(), 0.9 * rms / rms.sum() + 0.1 / 4)
    other = LossAwareSampler(T=4, history=2, uniform_prob=0.1)
    other.load_state_dict(s.state_dict())
    torch.testing.assert_close(other.probabilities(), s.probabilities())
    with pytest.raises(ValueError, match="diffusion.T or vlb.history"):
        LossAwareSampler(T=5, history=2).load_state_dict(s.state_dict())


def test_importance_weights_keep_the_vlb_estimate_unbiased():
    """E_{t ~ p}[L_t / p_t] = sum_t L_t = E_{t uniform}[T L_t], for any p of the sampler."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(10))
    loss = HybridLoss(proc, "vlb", timestep_sampler="loss_aware", history=1, uniform_prob=0.05)
    model = _Leaf().eval()  # (evaluation calls leave the history alone)
    terms = torch.stack([loss.per_sample(model, _batch(proc, [t] * 3))[1] for t in range(10)])  # [T, 3]
    loss.sampler.update(torch.arange(10), terms.mean(1) * torch.linspace(1, 5, 10))  # some p
    p = loss.sampler.probabilities()
    assert p.max() / p.min() > 3
    expectation = sum(p[t] * loss(model, _batch(proc, [t] * 3)) for t in range(10))
    torch.testing.assert_close(expectation.double(), (proc.T * terms.double()).mean(), rtol=1e-5, atol=1e-6)


def test_loss_aware_draws_follow_the_samplers_probabilities():
    """The draws the trainer takes (training_times) have frequencies p_t, within 5 standard errors;
    the uniform sampler keeps the process's own draw."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(8))
    loss = HybridLoss(proc, "vlb", timestep_sampler="loss_aware", history=1, uniform_prob=0.0)
    loss.sampler.update(torch.arange(8), torch.tensor([1.0, 1, 2, 2, 4, 4, 8, 8]))
    p = loss.sampler.probabilities()
    n = 200_000
    t = loss.training_times(n, torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=8).double() / n
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)
    uniform = HybridLoss(proc)
    torch.testing.assert_close(uniform.training_times(16, torch.Generator().manual_seed(1)),
                               proc.training_times(16, torch.Generator().manual_seed(1)))


def _digits(**changes):
    return tiny(**{"data": {"name": "digits", "flatten": True},
                   "model.kwargs": {"dim": 64, "width": 32, "depth": 2, "num_classes": 10, "learn_sigma": True},
                   "loss": "hybrid", **changes})


def test_a_hybrid_run_trains_and_samples_with_its_learned_variance(tmp_path):
    with Trainer(_digits(), tmp_path / "run", progress=False) as trainer:
        out = trainer.train()
    assert out["step"] == 8 and math.isfinite(out["loss"])
    run = dl.load(tmp_path / "run")
    assert run.ema_model.learn_sigma
    x = dl.sample(run.ema_model, run.proc, (4, 64), "ddpm", 10, cond=torch.arange(4),
                  generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 64) and torch.isfinite(x).all()
    bpd = run.proc.vlb_bits_per_dim(run.ema_model, dl.data.load("digits")[0][:4].flatten(1), torch.arange(4),
                                    num_timesteps=3, generator=torch.Generator().manual_seed(0))
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()


def test_a_loss_aware_run_resumes_exactly(tmp_path):
    """The history decides the next draws: it is saved with each checkpoint (state.json) and
    restored, so 4 + 4 resumed steps equal 8 uninterrupted ones. With history 1 on T = 20 the
    sampler is warm by step 4, so the second half's draws follow the terms (a resume that lost
    the history would draw uniformly: other timesteps, other weights)."""
    cfg = _digits(loss="vlb", **{"vlb.history": 1, "vlb.uniform_prob": 0.1, "steps": 8, "ckpt_every": 4,
                                 "batch_size": 64, "diffusion.T": 20})
    with Trainer(cfg, tmp_path / "whole", progress=False) as trainer:
        trainer.train()
    with Trainer(cfg.replace(steps=4), tmp_path / "half", progress=False) as trainer:
        trainer.train()
        assert int(trainer.loss_fn.sampler.counts.min()) == 1  # warm
        p = trainer.loss_fn.sampler.probabilities()
        assert float(p.max() / p.min()) > 2
    with Trainer(cfg, tmp_path / "half", resume=True, progress=False) as trainer:
        torch.testing.assert_close(trainer.loss_fn.sampler.probabilities(), p)
        trainer.train()
    a, b = dl.load(tmp_path / "whole"), dl.load(tmp_path / "half")
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("changes, field", [
    ({"model.kwargs.learn_sigma": False}, "learn_sigma: true"),
    ({"loss": "diffusion"}, "variance output would stay untrained"),
    ({"diffusion.process": "flow", "diffusion.T": 1000}, "process: ddpm"),
    ({"loss": "vlb", "cuda_graph": True}, "loss-aware sampler"),
    ({"vlb.weight": 0}, "vlb.weight"),
    ({"vlb.timestep_sampler": "importance"}, "vlb.timestep_sampler"),
    ({"vlb.bins": 1}, "vlb.bins"),
    ({"diffusion.weighting": "min_snr"}, "diffusion.weighting.*weights its terms itself"),
])
def test_bad_hybrid_configs_are_named(changes, field):
    with pytest.raises(ValueError, match=field):
        _digits(**changes)


def test_continuous_data_has_no_discretized_decoder():
    with pytest.raises(ValueError, match="toy2d"):
        tiny(**{"model.kwargs.learn_sigma": True, "model.kwargs.dim": 2, "loss": "hybrid"})


@pytest.mark.parametrize("model", [
    {"name": "unet", "kwargs": {"in_channels": 1, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                                "norm_groups": 8, "num_classes": 10, "learn_sigma": True}},
    {"name": "dit_t_2", "kwargs": {"in_channels": 1, "image_size": 8, "num_classes": 10, "learn_sigma": True}},
], ids=["unet", "dit"])
def test_the_image_networks_train_their_variance(model, tmp_path):
    """The U-Net and the DiT output [prediction, v] on images: the hybrid loss trains them (finite
    gradients), and DDPM samples them with their learned variance."""
    cfg = tiny(**{"data": {"name": "digits"}, "model": model, "loss": "hybrid", "steps": 2, "ckpt_every": 2,
                  "batch_size": 8})
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        batch = next(trainer._micro_batches(0))
        loss = trainer.loss_fn(trainer.model, batch)
        loss.backward()
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        trainer.model.zero_grad()
        trainer.train()
    run = dl.load(tmp_path / "run")
    x = dl.sample(run.ema_model, run.proc, (2, 1, 8, 8), "ddpm", 5, cond=torch.tensor([1, 2]),
                  generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
