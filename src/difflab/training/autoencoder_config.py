"""The ``autoencoder:`` section of a run's config: the losses of ``loss: autoencoder``
(training/autoencoder.py), kept apart from that module so the config can name it without
importing the trainer.

    autoencoder: {reconstruction: l1, kl_weight: 1.0e-6, perceptual_weight: 0.0, perceptual_classifier: null}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["AutoencoderConfig", "RECONSTRUCTION_LOSSES"]

RECONSTRUCTION_LOSSES = ("l1", "l2")


def _fail(name: str, value, allowed: str) -> None:
    raise ValueError(f"config field {name!r}: got {value!r}; {allowed}")


@dataclass
class AutoencoderConfig:
    """The autoencoder's loss (used by ``loss: autoencoder`` only), per pixel:

        |x - x_hat| (``reconstruction: l1``, SD's) or (x - x_hat)^2 (``l2``), mean over pixels
        + kl_weight * KL(q(z | x) || N(0, I)) / D        (D = C H W; SD: kl_weight 1e-6)
        + perceptual_weight * ||phi(x) - phi(x_hat)||^2 / d

    SD sums the reconstruction over an image's pixels and adds ``kl_weight`` times the KL summed
    over its latent: dividing both by D keeps SD's ratio and reads the loss per pixel. phi is the
    d-dimensional penultimate layer of a difflab classifier (``difflab train-classifier``; MNIST's
    CNN), frozen: ``perceptual_classifier`` names its folder, needed when ``perceptual_weight`` > 0."""

    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    perceptual_classifier: Optional[str] = None

    def validate(self, prefix: str = "autoencoder") -> None:
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            _fail(f"{prefix}.reconstruction", self.reconstruction, f"choose one of {', '.join(RECONSTRUCTION_LOSSES)}")
        for name in ("kl_weight", "perceptual_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                _fail(f"{prefix}.{name}", value, "must be a number >= 0")
        if self.perceptual_classifier is not None and not isinstance(self.perceptual_classifier, str):
            _fail(f"{prefix}.perceptual_classifier", self.perceptual_classifier,
                  "must be the folder of a difflab classifier (difflab train-classifier --out DIR), or null")
        if self.perceptual_weight > 0 and self.perceptual_classifier is None:
            _fail(f"{prefix}.perceptual_weight", self.perceptual_weight,
                  "the perceptual term needs its feature network: set autoencoder.perceptual_classifier to the "
                  "folder of a difflab classifier (difflab train-classifier --data mnist --out DIR), or use weight 0")
