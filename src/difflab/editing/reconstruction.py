"""Reconstruction-guided sampling (Ho et al. 2022, "Video Diffusion Models", sec. 3.1, eq. 7).

To sample the unknown part x^b of x = (x^a, x^b) given the known part x^a = y^a, the
replacement method (:mod:`.inpaint`) only overwrites the state's known part with y^a noised to
the current level: the network sees y^a as a noisy copy, which at high noise carries almost
nothing, so x^b is drawn nearly as if y^a were unknown. Ho et al. instead write the
conditional denoiser as the unconditional one plus the gradient of log q(x^a | z_t),

    E[x^b | z_t, x^a] = E[x^b | z_t] + (sigma_t^2 / alpha_t) grad_{z_t^b} log q(x^a | z_t),

approximate q(x^a | z_t) by N(x^_a(z_t), (sigma_t^2 / alpha_t^2) I) around the network's own
reconstruction x^_a of the known part, and weight the result by w_r (eq. 7):

    x~^b(z_t) = x^^b(z_t) - (w_r alpha_t / 2) grad_{z_t^b} || y^a - x^^a(z_t) ||^2.

The samplers work in the VE state x = z_t / alpha_t (:mod:`difflab.samplers.denoiser`), where
grad_{z_t} = grad_x / alpha_t, so the alpha_t cancels and the rule is the same for every process:

    D~(x, sigma) = D(x, sigma) - (w_r / 2) m * grad_x || (1 - m) (y - D(x, sigma)) ||^2,

m the mask (1 = the unknown part b, 0 = the known part a). w_r = 1 is the Gaussian
approximation itself; Ho et al. use w_r > 1 (their larger weights improve the samples). The
gradient flows through the network (one backward pass per evaluation, as classifier guidance),
and through both branches of classifier-free guidance, whose combination D is. The known part of
D~ stays the network's own estimate: the sampler's step then moves the state and
:func:`.inpaint.inpaint` replaces the known part as usual.

For data N(mu, Sigma) the exact denoiser is D(x) = mu + J (x - mu), J = Sigma (Sigma + sigma^2 I)^-1
(symmetric), and the correction is linear: D~^b = D^b + w_r J_ba (y^a - D^a) (the tests' closed form).

Clipping (``clip_x0``) applies to D~, after the correction: the gradient is taken through the
unclipped D, because clamping the known part's estimate to [-c, c] would zero the gradient of
exactly the pixels it gets most wrong (an ink pixel the network puts below the background).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import Tensor

from ..samplers import Denoiser
from ..validation import is_real, model_attribute

__all__ = ["ReconstructionGuided", "check_reconstruction_weight"]


def check_reconstruction_weight(weight, name: str = "reconstruction_guidance") -> float:
    """w_r: a finite real number >= 0 (0: no guidance, the replacement method); errors name ``name``
    (the CLI's flag)."""
    if isinstance(weight, bool) or not is_real(weight):
        raise TypeError(f"{name} must be a number w_r >= 0 (0 = the replacement method; Ho et al. use w_r > 1), "
                        f"got {type(weight).__name__} {weight!r}")
    weight = float(weight)
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"{name} must be a finite weight w_r >= 0 (0 = the replacement method; Ho et al. use "
                         f"w_r > 1), got {weight}")
    return weight


@contextlib.contextmanager
def _parameters_frozen(model) -> Iterator[None]:
    """``model``'s trainable parameters set not to require gradients for the block, then restored:
    autograd then records only the path from x (no weight-gradient nodes, and no activations kept
    for them alone), as the gradient here is with respect to x only."""
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class ReconstructionGuided:
    """D~(x, sigma) = D(x, sigma) - (w_r / 2) m * grad_x ||(1 - m)(y - D(x, sigma))||^2, a denoiser.

    ``denoiser``: a :class:`~difflab.samplers.Denoiser` built without clipping (``clip_x0=None``);
    ``clip_x0`` clamps D~ instead. ``image`` y and ``mask`` m (1 = fill) broadcast to the state.
    It offers what the samplers read of a denoiser: calling it, ``predict`` (D~ and the variance
    output v, for DDPM ancestral sampling), ``scale`` and ``learned_variance``; ``calls`` counts
    the network's forward passes (each here with a backward pass).
    """

    def __init__(self, denoiser: Denoiser, image: Tensor, mask: Tensor, weight: float,
                 clip_x0: Optional[float] = None) -> None:
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser must be a difflab.samplers.Denoiser, got {type(denoiser).__name__}")
        # a network call captured as a CUDA graph (the speed layer's cuda_graph=True) is replayed on
        # static copies of its inputs: its output has no autograd path back to x, so no gradient
        if model_attribute(denoiser.model, "cuda_graph") is True:
            raise ValueError("reconstruction guidance takes the gradient through the network, and a replayed CUDA "
                             "graph gives no gradient: accelerate the model without cuda_graph=True (precision, "
                             "channels_last and compile still apply)")
        if denoiser.clip_x0 is not None or denoiser.dynamic_threshold is not None:
            raise ValueError("build the Denoiser without clip_x0 and dynamic_threshold and pass clip_x0 here: "
                             "the gradient is taken through the unclipped estimate")
        self.denoiser, self.image, self.mask = denoiser, image, mask
        self.keep = 1 - mask
        self.weight = check_reconstruction_weight(weight)
        if clip_x0 is not None and (isinstance(clip_x0, bool) or not is_real(clip_x0) or not clip_x0 > 0):
            raise ValueError(f"clip_x0 must be a number > 0 (or None: no clipping), got {clip_x0!r}")
        self.clip_x0 = None if clip_x0 is None else float(clip_x0)
        self.learned_variance = denoiser.learned_variance

    @property
    def calls(self) -> int:
        return self.denoiser.calls

    def scale(self, sigma: float) -> float:
        """a(sigma) of the process, as :meth:`Denoiser.scale`."""
        return self.denoiser.scale(sigma)

    def correction(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(D, -(w_r / 2) m * grad_x ||(1 - m)(y - D)||^2, v) at the VE state x, level sigma.

        The squared error is summed over the batch: the samples do not interact in the network, so
        each sample's gradient is that of its own error."""
        with torch.enable_grad(), _parameters_frozen(self.denoiser.model):
            x_in = x.detach().requires_grad_(True)
            x0, v = self.denoiser.predict(x_in, sigma)
            error = (self.keep * (self.image - x0)).square().sum()
            (grad,) = torch.autograd.grad(error, x_in)
        shift = (-0.5 * self.weight) * self.mask * grad
        return x0.detach(), shift.to(x0.dtype), None if v is None else v.detach()

    def predict(self, x: Tensor, sigma: float) -> tuple[Tensor, Optional[Tensor]]:
        """(D~(x, sigma), v): the guided estimate of x0 (clipped if ``clip_x0``) and the network's
        variance output (None unless it learns its variance)."""
        x0, shift, v = self.correction(x, sigma)
        x0 = x0 + shift
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0, v

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        return self.predict(x, sigma)[0]
