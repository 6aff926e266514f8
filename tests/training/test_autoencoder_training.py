"""Training the autoencoder (difflab.training.autoencoder): the loss's terms against their formulas,
an exact resume on the trainer's checkpoints, the latent scale factor equal to 1 / std of the
training latents and read back by dl.load, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import difflab as dl
from difflab.models.autoencoder import autoencoder_kl_tiny
from difflab.training import TrainConfig, apply_overrides
from difflab.training.autoencoder import AutoencoderLoss, AutoencoderTrainer, measure_scale_factor, train_autoencoder
from difflab.training.autoencoder_config import AutoencoderConfig
from difflab.training.loss import TrainBatch
from difflab.training.trainer import Trainer


def tiny_vae(**changes) -> TrainConfig:
    d = {"model": {"name": "autoencoder_kl_tiny", "kwargs": {}}, "data": {"name": "digits"},
         "loss": "autoencoder", "autoencoder": {"reconstruction": "l1", "kl_weight": 1e-3},
         "optim": {"lr": 2e-3, "warmup_steps": 2}, "ema": {"decay": 0.9, "warmup": 2},
         "sample": {"every": -1}, "batch_size": 16, "steps": 6, "log_every": 1, "ckpt_every": 3, "device": "cpu",
         "seed": 4}
    return apply_overrides(TrainConfig.from_dict(d), [f"{k}={json.dumps(v)}" for k, v in changes.items()])


def _batch(x: torch.Tensor) -> TrainBatch:
    n = len(x)
    return TrainBatch(x0=x, cond=None, labels=None, t=torch.zeros(n, dtype=torch.long), noise=torch.zeros_like(x),
                      u=torch.ones(n), step=0, index=torch.arange(n))


class _Linear(nn.Module):
    """A fixed linear map of the flattened image: phi for the perceptual term."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 5)

    def features(self, x):
        return self.proj(x.flatten(1))


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_the_loss_is_its_terms_by_their_formulas(reconstruction, gen):
    torch.manual_seed(0)
    ae = autoencoder_kl_tiny()
    phi = _Linear()
    x = torch.rand(3, 1, 8, 8, generator=gen) * 2 - 1
    settings = AutoencoderConfig(reconstruction=reconstruction, kl_weight=0.01, perceptual_weight=0.5,
                                 perceptual_classifier="unused")
    loss = AutoencoderLoss(settings, phi)
    torch.manual_seed(7)
    got = loss(ae, _batch(x))
    torch.manual_seed(7)  # the same z ~ q(z | x): torch's generator
    q = ae.encode(x)
    x_hat = ae.decode(q.sample())
    rec = (x_hat - x).abs().mean() if reconstruction == "l1" else (x_hat - x).square().mean()
    kl = (0.5 * (q.mean ** 2 + q.logvar.exp() - 1 - q.logvar)).sum(dim=(1, 2, 3)).mean() / 64
    perceptual = (phi.features(x) - phi.features(x_hat)).square().mean()
    torch.testing.assert_close(got, rec + 0.01 * kl + 0.5 * perceptual)
    got.backward()  # phi is frozen; the autoencoder learns through all three terms
    assert all(p.grad is None for p in phi.parameters())
    assert all(p.grad is not None for p in ae.parameters() if p.requires_grad)


def test_the_adversarial_terms_train_each_network_on_its_own_loss(gen):
    """From adversarial_start on: the autoencoder's gradient is that of rec + w KL + lambda (-D(x_hat))
    with D's weights fixed, D's gradient that of its hinge loss alone; lambda is SD's adaptive weight."""
    torch.manual_seed(0)
    ae = autoencoder_kl_tiny(discriminator_channels=8, discriminator_layers=1)
    disc = ae.discriminator
    x = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
    settings = AutoencoderConfig(kl_weight=0.01, adversarial_weight=0.5, adversarial_start=3)
    loss = AutoencoderLoss(settings)
    before = _batch(x)
    before.step = 2
    assert set(loss.terms(ae, before)) == {"reconstruction", "kl"}  # not yet
    batch = _batch(x)
    batch.step = 3
    torch.manual_seed(7)
    total = loss(ae, batch)
    ae_params = [p for n, p in ae.named_parameters() if not n.startswith("discriminator.")]
    got_ae = torch.autograd.grad(total, ae_params + list(disc.parameters()), allow_unused=True)

    torch.manual_seed(7)  # by hand, the same z
    q = ae.encode(x)
    x_hat = ae.decode(q.sample())
    rec = (x_hat - x).abs().mean()
    kl = (0.5 * (q.mean ** 2 + q.logvar.exp() - 1 - q.logvar)).sum(dim=(1, 2, 3)).mean() / 64
    frozen = [p.detach().clone().requires_grad_(False) for p in disc.parameters()]
    copy = autoencoder_kl_tiny(discriminator_channels=8, discriminator_layers=1).discriminator
    with torch.no_grad():
        for p, v in zip(copy.parameters(), frozen):
            p.copy_(v)
    copy.requires_grad_(False)
    adversarial = -copy(x_hat).mean()
    last = ae.decoder_out.weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
    lam = 0.5 * float(g_rec.norm() / (g_adv.norm() + 1e-4))
    want_ae = torch.autograd.grad(rec + 0.01 * kl + lam * adversarial, ae_params)
    d_loss = 0.5 * (torch.relu(1 - disc(x)).mean() + torch.relu(1 + disc(x_hat.detach())).mean())
    want_d = torch.autograd.grad(d_loss, list(disc.parameters()))
    for got, want in zip(got_ae, list(want_ae) + list(want_d)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert lam > 0 and float(g_adv.norm()) > 0  # the term moves the decoder


def test_without_the_discriminator_the_adversarial_weight_is_refused(gen):
    loss = AutoencoderLoss(AutoencoderConfig(adversarial_weight=0.5))
    with pytest.raises(ValueError, match="discriminator_channels"):
        loss(autoencoder_kl_tiny(), _batch(torch.zeros(2, 1, 8, 8)))


def test_a_run_resumes_exactly_and_measures_the_latent_scale(tmp_path):
    """With the discriminator, which joins at step 2 of 6 (the split is at 3)."""
    cfg = tiny_vae(**{"optim.decay": "constant", "model.kwargs": {"discriminator_channels": 8, "discriminator_layers": 1},
                      "autoencoder.adversarial_weight": 0.5, "autoencoder.adversarial_start": 2})
    whole = train_autoencoder(cfg, tmp_path / "whole", progress=False)
    half = train_autoencoder(cfg.replace(steps=3), tmp_path / "split", progress=False)
    assert half["step"] == 3
    resumed = train_autoencoder(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = dl.load(tmp_path / "whole"), dl.load(tmp_path / "split")
    for net_a, net_b in ((a.model, b.model), (a.ema_model, b.ema_model)):
        for (name, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            assert torch.equal(p, q), name
    assert resumed["loss"] == whole["loss"]

    # the scale: 1 / std of the training latents z ~ q(z | x), drawn with the run's seed; both networks
    x, _ = dl.data.load("digits")
    for net in (a.model, a.ema_model):
        z = net.encode(x).sample(torch.Generator().manual_seed(cfg.seed))
        assert float(net.scaling_factor) == pytest.approx(1 / float(z.flatten().std()), rel=1e-5)
    assert whole["scaling_factor"] == pytest.approx(a.ema_model.latent_scale)
    assert float(a.ema_model.encode_latents(x).std()) == pytest.approx(1.0, rel=0.02)  # unit variance


def test_measure_scale_factor_accumulates_batches_to_the_std_of_all_latents(gen):
    """With the posterior's variance clamped to exp(-30), z is its mean: s = 1 / std(mean), by
    torch's std of all the latent numbers at once, whatever the batches."""
    ae = autoencoder_kl_tiny().eval()
    c = ae.latent_channels
    with torch.no_grad():  # quant_conv's log-variance rows: -100, clamped to -30
        ae.quant_conv.weight[c:] = 0
        ae.quant_conv.bias[c:] = -100
    x = torch.rand(30, 1, 8, 8, generator=gen) * 2 - 1
    with torch.no_grad():
        expected = 1 / float(ae.encode(x).mean.flatten().std())
    for batch_size in (7, 30):
        assert measure_scale_factor(ae, x, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"images must be a tensor \[N, C, H, W\]"):
        measure_scale_factor(ae, x[0])
    with torch.no_grad():
        ae.encoder_out.bias[0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        measure_scale_factor(ae, x)


def test_the_reconstruction_grid_is_written(tmp_path):
    cfg = tiny_vae(steps=2, **{"sample.every": 0, "sample.n": 8})
    train_autoencoder(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()


def test_refusals_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="difflab train-autoencoder"):
        Trainer(tiny_vae(), tmp_path / "plain", progress=False)  # the plain trainer would sample an autoencoder
    with pytest.raises(ValueError, match="'diffusion'.*leave it out"):
        AutoencoderTrainer(tiny_vae(**{"diffusion.process": "edm", "diffusion.T": 1000}), tmp_path / "a",
                           progress=False)
    with pytest.raises(ValueError, match="loss: autoencoder"):
        AutoencoderTrainer(tiny_vae(loss="diffusion", **{"model.name": "mlp", "model.kwargs": {"dim": 64}}),
                           tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="perceptual_classifier to the folder"):
        tiny_vae(**{"autoencoder.perceptual_weight": 0.1})
    with pytest.raises(ValueError, match="needs the classifier 'clf'"):
        AutoencoderTrainer(tiny_vae(**{"autoencoder.perceptual_weight": 0.1,
                                       "autoencoder.perceptual_classifier": "clf"}), tmp_path / "c", progress=False)
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")  # (refused before any process group is started)
        with pytest.raises(ValueError, match="adversarial loss trains in one process"):
            AutoencoderTrainer(tiny_vae(**{"model.kwargs": {"discriminator_channels": 8}}), tmp_path / "e")
    with pytest.raises(ValueError, match="autoencoder.adversarial_start"):
        tiny_vae(**{"autoencoder.adversarial_start": -1})
    with pytest.raises(ValueError, match="autoencoder.reconstruction"):
        tiny_vae(**{"autoencoder.reconstruction": "l3"})
    with pytest.raises(ValueError, match="trains an AutoencoderKL"):
        AutoencoderTrainer(tiny_vae(**{"model.name": "unet_tiny"}), tmp_path / "d", progress=False)
