"""The ``latent:`` section of a run's config: latent diffusion (Rombach et al. 2022), diffusion
trained on the latents of a KL autoencoder instead of on pixels (training/latent_data.py).
Kept apart from that module so the config can name it without importing the trainer.

    latent: {autoencoder: runs/mnist_vae, posterior: sample}

``autoencoder``: the run folder (or checkpoint folder) of a trained autoencoder (``difflab
train-autoencoder --out DIR``, or a Stable Diffusion VAE written as a run by
``training.diffusers_vae.autoencoder_run_from_diffusers``); null (the default): pixel space.
Whether the folder holds an autoencoder with a measured latent scale is checked when a run
starts, not here: a trained run's config is read again (``dl.load``) when the folder it named
has moved, and the run samples with its own copy (``RUN/autoencoder``).

``posterior``: how the training images become latents, once, cached in the run folder:
``sample`` (the default) one draw z ~ q(z | x) per image from a generator seeded by the run's
seed, as DiT's feature extraction does; ``mean`` the posterior's mean. The diffusion model
learns the distribution of the latents it is given, and the draws are what the decoder was
trained to decode and what the latent scale factor was measured on (1 / std of z ~ q(z | x));
the mean drops the posterior's spread (tiny at SD's KL weight 1e-6, so the two differ little).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .autoencoder_config import fail_field

__all__ = ["LatentConfig", "POSTERIORS"]

POSTERIORS = ("sample", "mean")


@dataclass
class LatentConfig:
    """Latent diffusion: ``autoencoder`` (the autoencoder's run folder; null = pixel space) and
    ``posterior`` (sample or mean: how images become the cached training latents)."""

    autoencoder: Optional[str] = None
    posterior: str = "sample"

    def validate(self, prefix: str = "latent") -> None:
        if self.autoencoder is not None and (not isinstance(self.autoencoder, str) or not self.autoencoder.strip()):
            fail_field(f"{prefix}.autoencoder", self.autoencoder,
                       "must be the folder of a trained autoencoder run (difflab train-autoencoder --out DIR), or null "
                       "for diffusion in pixel space")
        if self.posterior not in POSTERIORS:
            fail_field(f"{prefix}.posterior", self.posterior, f"choose one of {', '.join(POSTERIORS)}")
