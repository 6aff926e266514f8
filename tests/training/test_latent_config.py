"""training/latent_config.py: the ``latent:`` section, and the shipped latent configs: their networks
take their autoencoder's latents and sample them unclipped (the autoencoder run itself is not needed:
its config, configs/mnist_vae.yaml, gives the latents' shape)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import difflab as dl
from difflab.training.build import build_model, build_process
from difflab.training.config import TrainConfig, load_config
from difflab.training.latent import latent_channels_of

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_section_defaults_to_pixel_space_and_checks_its_fields():
    cfg = TrainConfig.from_dict({})
    assert cfg.latent.autoencoder is None and cfg.latent.posterior == "sample"
    with pytest.raises(ValueError, match="config field 'latent.autoencoder': got 3; must be the folder"):
        TrainConfig.from_dict({"latent": {"autoencoder": 3}})
    with pytest.raises(ValueError, match="config field 'latent.posterior': got 'mode'; choose one of sample, mean"):
        TrainConfig.from_dict({"latent": {"autoencoder": "runs/vae", "posterior": "mode"}})
    with pytest.raises(ValueError, match="unknown field 'latent.scale'"):
        TrainConfig.from_dict({"latent": {"scale": 0.18}})


@pytest.mark.parametrize("name", ["mnist_latent.yaml"])
def test_a_shipped_latent_config_takes_its_autoencoders_latents_unclipped(name):
    cfg = load_config(CONFIGS / name)
    ae_cfg = load_config(CONFIGS / "mnist_vae.yaml")
    assert cfg.latent.autoencoder == "runs/mnist_vae" and cfg.data == ae_cfg.data  # the data it was trained on
    ae = build_model(ae_cfg)
    shape = ae.latent_shape((1, 28, 28))
    model = build_model(cfg).eval()
    assert latent_channels_of(model) == shape[0] == 4
    proc = build_process(cfg)
    assert proc.clip_x0 is None
    torch.manual_seed(0)
    x = dl.sample(model, proc, (2, *shape), "ddim", 3, cond=torch.tensor([3, 10]),
                  generator=torch.Generator().manual_seed(1))
    assert x.shape == (2, 4, 7, 7) and torch.isfinite(x).all()
    # its pixel-space twin: the same training but for the network and the latents
    twin = load_config(CONFIGS / "mnist_latent_pixel.yaml")
    assert twin.latent.autoencoder is None
    assert {k: v for k, v in twin.to_dict().items() if k not in ("model", "latent")} == \
        {k: v for k, v in cfg.to_dict().items() if k not in ("model", "latent")}
