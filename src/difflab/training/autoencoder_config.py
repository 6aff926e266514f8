"""The ``autoencoder:`` section of a run's config: the losses of ``loss: autoencoder``
(training/autoencoder.py), kept apart from that module so the config can name it without
importing the trainer.

    autoencoder: {reconstruction: l1, kl_weight: 1.0e-6, perceptual_weight: 0.0, perceptual_classifier: null,
                  adversarial_weight: 0.0, adversarial_start: 0, adaptive_weight: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["AutoencoderConfig", "RECONSTRUCTION_LOSSES"]

RECONSTRUCTION_LOSSES = ("l1", "l2")


def fail_field(name: str, value, allowed: str) -> None:
    """ValueError naming the config field ``name``, the ``value`` it got and what it takes
    (``allowed``): the message of every config section (training/config.py's too)."""
    raise ValueError(f"config field {name!r}: got {value!r}; {allowed}")


@dataclass
class AutoencoderConfig:
    """The autoencoder's loss (used by ``loss: autoencoder`` only), per pixel:

        |x - x_hat| (``reconstruction: l1``, SD's) or (x - x_hat)^2 (``l2``), mean over pixels
        + kl_weight * KL(q(z | x) || N(0, I)) / D        (D = C H W; SD: kl_weight 1e-6)
        + perceptual_weight * ||phi(x) - phi(x_hat)||^2 / d
        + lambda * (-mean D(x_hat))  +  0.5 mean(relu(1 - D(x))) + 0.5 mean(relu(1 + D(sg(x_hat))))
                                                    (from step ``adversarial_start`` on)

    SD sums the reconstruction over an image's pixels and adds ``kl_weight`` times the KL summed
    over its latent: dividing both by D keeps SD's ratio and reads the loss per pixel. phi is the
    d-dimensional penultimate layer of a difflab classifier (``difflab train-classifier``; MNIST's
    CNN), frozen: ``perceptual_classifier`` names its folder, needed when ``perceptual_weight`` > 0.

    The adversarial terms are SD's hinge loss with its patch discriminator D (the network's
    ``discriminator``: model.kwargs.discriminator_channels), sg = stop-gradient: the autoencoder
    learns from -D(x_hat) through a D whose weights are held fixed, D learns from its own term alone
    (x_hat held fixed), so the one optimizer of the trainer updates each as two would. lambda is
    ``adversarial_weight`` (SD's disc_weight: 0.5), times, with ``adaptive_weight`` (SD's), the ratio
    ||grad_L rec|| / (||grad_L adv|| + 1e-4) clamped to [0, 1e4] at the decoder's last layer L, rec the
    reconstruction and perceptual terms, so that neither term drowns the other. SD starts the
    discriminator late (``adversarial_start``: 50001 steps), once the reconstructions are good."""

    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    perceptual_classifier: Optional[str] = None
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    adaptive_weight: bool = True

    def validate(self, prefix: str = "autoencoder") -> None:
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            fail_field(f"{prefix}.reconstruction", self.reconstruction,
                       f"choose one of {', '.join(RECONSTRUCTION_LOSSES)}")
        for name in ("kl_weight", "perceptual_weight", "adversarial_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                fail_field(f"{prefix}.{name}", value, "must be a number >= 0")
        if isinstance(self.adversarial_start, bool) or not isinstance(self.adversarial_start, int) \
                or self.adversarial_start < 0:
            fail_field(f"{prefix}.adversarial_start", self.adversarial_start, "must be an integer >= 0 (a step)")
        if not isinstance(self.adaptive_weight, bool):
            fail_field(f"{prefix}.adaptive_weight", self.adaptive_weight, "must be true or false")
        if self.perceptual_classifier is not None and not isinstance(self.perceptual_classifier, str):
            fail_field(f"{prefix}.perceptual_classifier", self.perceptual_classifier,
                       "must be the folder of a difflab classifier (difflab train-classifier --out DIR), or null")
        if self.perceptual_weight > 0 and self.perceptual_classifier is None:
            fail_field(f"{prefix}.perceptual_weight", self.perceptual_weight,
                       "the perceptual term needs its feature network: set autoencoder.perceptual_classifier to "
                       "the folder of a difflab classifier (difflab train-classifier --data mnist --out DIR), or use "
                       "weight 0")
