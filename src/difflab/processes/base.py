"""The process interface: what samplers, the trainer, editing and evaluation need from a
Gaussian diffusion process, whatever its formulation.

Every process here corrupts data by a Gaussian whose mean shrinks and whose spread grows,

    x_t = a(t) x0 + s(t) eps,        eps ~ N(0, I),

in its own time t (a DDPM step index, an SDE's t in [0, 1], EDM's sigma, a flow's t). Divided
by a(t) this is the "variance exploding" form x = x_t / a = x0 + sigma eps with the noise
level sigma = s / a (Karras et al. 2022, eq. 4 with s(t) = a): the same process for all of
them, up to a change of time and of scale. The samplers run there, on the denoiser
D(x, sigma) ~ E[x0 | x], so each process gives the samplers three maps:

    sigma_of(t), t_of(sigma)   its time <-> the noise level
    scale(sigma) = a           VE state x -> its own state x_t = a x
    timestep(sigma)            what the network receives as its time input

and the network's output becomes D by :func:`convert_prediction`. For training it draws its
times (:meth:`Process.training_times`), corrupts x0 (:meth:`Process.q_sample`) and gives the
regression target with its weight (:meth:`Process.training_loss`).

Prediction types, for x_t = a x0 + s eps (Salimans & Ho 2022 for v, Lipman et al. 2023 for the
velocity of the straight path):

    eps        the noise:      x0 = (x_t - s eps) / a
    x0         the data
    v          a eps - s x0:   x0 = (a x_t - s v) / (a^2 + s^2)
    velocity   eps - x0:       x0 = (x_t - s u) / (a + s)       (d x_t / dt when a = 1 - t, s = t)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..validation import (DATA_RANGE_LIMIT, NOISE_FIX, X0_FIX, check_image_range, check_labels, float_input,
                          is_real, model_attribute, null_label)

__all__ = [
    "Process",
    "PREDICTION_TYPES",
    "convert_prediction",
    "call_model",
    "call_model_with_variance",
    "model_attribute",
    "check_weighting",
    "check_clip_x0",
    "Weighting",
]

PREDICTION_TYPES = ("eps", "x0", "v", "velocity")
Weighting = Union[str, Callable[[Tensor], Tensor], None]


def convert_prediction(output: Tensor, x_t: Tensor, alpha, sigma, source: str, target: str) -> Tensor:
    """Convert a prediction of type ``source`` at x_t into type ``target`` (eps, x0, v or velocity).

    ``alpha`` and ``sigma`` are the coefficients a, s of x_t = a x0 + s eps (numbers or tensors
    broadcastable against x_t); see the module docstring for the formulas.
    """
    if source == target:
        return output
    if source == "eps":
        eps, x0 = output, (x_t - sigma * output) / alpha
    elif source == "x0":
        eps, x0 = (x_t - alpha * output) / sigma, output
    elif source == "v":
        norm = alpha * alpha + sigma * sigma  # 1 for a variance-preserving process
        eps, x0 = (sigma * x_t + alpha * output) / norm, (alpha * x_t - sigma * output) / norm
    elif source == "velocity":
        total = alpha + sigma  # 1 for the straight path a = 1 - t, s = t
        eps, x0 = (x_t + alpha * output) / total, (x_t - sigma * output) / total
    else:
        raise ValueError(f"unknown prediction type {source!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        return alpha * eps - sigma * x0
    if target == "velocity":
        return eps - x0
    raise ValueError(f"unknown prediction type {target!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def check_weighting(weighting: Weighting) -> Optional[float]:
    """Check a loss weighting (see :meth:`Process.loss_weight`); returns Min-SNR's gamma
    for ``"min_snr"`` / ``"min_snr_<gamma>"``, else None."""
    if weighting is None or callable(weighting) or (isinstance(weighting, str) and weighting == "uniform"):
        return None
    if isinstance(weighting, str) and weighting.startswith("min_snr"):
        gamma_txt = weighting[len("min_snr"):]
        if gamma_txt.startswith("_"):
            gamma_txt = gamma_txt[1:]
        try:
            gamma = float(gamma_txt) if gamma_txt else 5.0
        except ValueError:
            raise ValueError(f"cannot read gamma from weighting {weighting!r}; use e.g. 'min_snr_5'") from None
        if not gamma > 0:  # also NaN
            raise ValueError(
                f"weighting {weighting!r}: Min-SNR's gamma must be > 0 (the SNR at which the weight is "
                f"clipped; 5 in Hang et al. 2023), got {gamma}; use e.g. 'min_snr_5'"
            )
        return gamma
    raise ValueError(
        f"unknown weighting {weighting!r}; use None/'uniform', 'min_snr', 'min_snr_<gamma>' "
        "or a callable of SNR(t)"
    )


def check_clip_x0(clip_x0) -> Optional[float]:
    """The data's range |x0| <= clip_x0 a process's samplers clip to: a finite number > 0, or None."""
    if clip_x0 is not None and not (is_real(clip_x0) and math.isfinite(clip_x0) and clip_x0 > 0):
        raise ValueError(f"clip_x0 (the data's range |x0| <= clip_x0) must be a finite number > 0 or None, "
                         f"got {clip_x0!r}")
    return None if clip_x0 is None else float(clip_x0)


def check_positive(name: str, value, hint: str = "") -> float:
    """A finite number > 0 as a float, else a ValueError naming ``name`` (and ``hint``)."""
    if not (is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")
    return float(value)


def call_model(model: Callable, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, **inputs) -> Tensor:
    """Evaluate ``model(x_t, t)`` or ``model(x_t, t, cond)`` (with keyword ``inputs`` such as a
    guidance scale, for the networks that take one), check the output's shape and return the
    prediction: of a network that learns its variance, the first half (:func:`call_model_with_variance`)."""
    return call_model_with_variance(model, x_t, t, cond, **inputs)[0]


def call_model_with_variance(model: Callable, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None,
                             **inputs) -> tuple[Tensor, Optional[Tensor]]:
    """(prediction, v): a network with ``learn_sigma`` (improved DDPM, Nichol & Dhariwal 2021)
    outputs twice x_t's channels, [prediction, v] along dim 1, where v in [-1, 1] interpolates the
    log-variance between beta~_t (v = -1) and beta_t (v = 1); any other network returns x_t's shape
    and v is None."""
    out = model(x_t, t, cond, **inputs) if inputs else (model(x_t, t) if cond is None else model(x_t, t, cond))
    learns = bool(model_attribute(model, "learn_sigma"))
    want = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:]) if learns and x_t.ndim >= 2 else tuple(x_t.shape)
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        if learns:
            raise ValueError(f"the model returned {got}, but it learns its variance (learn_sigma), so it must return "
                             f"a tensor of shape {want}: its prediction of eps, x0 or v, then the variance "
                             "interpolation v, along dim 1")
        raise ValueError(f"the model returned {got}, but it must return a tensor of x_t's shape {want} "
                         "(its prediction of eps, x0, v or the velocity)")
    if learns:
        prediction, v = out.chunk(2, dim=1)
        return prediction, v
    return out, None


def vp_scale(sigma):
    """1 / sqrt(1 + sigma^2) of a float (as a float, Python's own arithmetic) or a tensor (float64)."""
    if isinstance(sigma, float):
        return (1.0 + sigma * sigma) ** -0.5
    return (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2).rsqrt()


def ve_scale(sigma):
    """1, as a float or as a float64 tensor of sigma's shape."""
    if isinstance(sigma, float):
        return 1.0
    return torch.ones_like(torch.as_tensor(sigma, dtype=torch.float64))


def _view(value: Tensor, x: Tensor) -> Tensor:
    """A per-sample [B] tensor shaped to broadcast against x [B, ...]."""
    return value.view(-1, *([1] * (x.ndim - 1)))


class Process(ABC):
    """A Gaussian process x_t = a(t) x0 + s(t) eps in its own time t (see the module docstring).

    Subclasses give the time maps (:meth:`sigma_of`, :meth:`t_of`, :meth:`scale`), the
    sampling range [t_min, t_max], how the network sees time (``timestep_scale``) and how
    training draws its times (:meth:`training_times`). ``prediction`` is what the network
    outputs; ``clip_x0`` the data's range that samplers clip their x0 estimates to (None: no
    known bound).
    """

    prediction: str = "eps"
    clip_x0: Optional[float] = None
    predictions: tuple[str, ...] = PREDICTION_TYPES  # the prediction types this process trains
    timestep_scale: float = 1.0  # network time input = timestep_scale * t
    default_spacing: str = "karras"  # the noise levels a sampler visits unless told otherwise
    discrete: bool = False  # a DDPM chain with a grid of T steps (GaussianDiffusion)
    t_min: float
    t_max: float

    # ------------------------------------------------------------------ time
    @abstractmethod
    def sigma_of(self, t: Tensor) -> Tensor:
        """The VE noise level sigma = s(t) / a(t) at the process's time t (float64)."""

    @abstractmethod
    def t_of(self, sigma: Tensor) -> Tensor:
        """The process's time at noise level sigma, the inverse of :meth:`sigma_of` (float64)."""

    @abstractmethod
    def scale(self, sigma: Union[float, Tensor]) -> Union[float, Tensor]:
        """a at noise level sigma: the process's state is x_t = a x, x = x0 + sigma eps. A Python
        float gives a float (the samplers' step loop), a tensor a float64 tensor."""

    @abstractmethod
    def training_times(self, n: int, generator: Optional[torch.Generator] = None,
                       device: Union[torch.device, str, None] = None) -> Tensor:
        """n times t drawn from the training distribution of this process, shape [n]."""

    def signature(self) -> tuple:
        """What the process means, hashable: equal for two processes that sample alike."""
        return (type(self).__name__, self.prediction)

    def network_signature(self) -> tuple:
        """What a network trained under this process has learnt, hashable: its kind, prediction and
        the map from noise level to its time input. Settings that only choose where sampling runs
        (t_min, t_max, sigma_max of EDM) or how training weights its times are not part of it, so a
        network may be sampled under a process that differs in those."""
        return (type(self).__name__, self.prediction)

    @property
    def sigma_min(self) -> float:
        """The lowest noise level samplers visit before the final 0."""
        return float(self.sigma_of(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        """The noise level sampling starts from."""
        return float(self.sigma_of(torch.tensor(self.t_max, dtype=torch.float64)))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """a(t) and s(t) of x_t = a x0 + s eps, float64."""
        sigma = self.sigma_of(t)
        a = torch.as_tensor(self.scale(sigma), dtype=torch.float64)
        return a, a * sigma

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio a^2 / s^2 = 1 / sigma(t)^2."""
        return self.sigma_of(t) ** -2

    def timestep(self, sigma: float, batch: int, device: Union[torch.device, str, None] = None) -> Tensor:
        """What the network receives as its time at noise level sigma, a float tensor [batch]:
        ``timestep_scale * t_of(sigma)``."""
        t = float(self.t_of(torch.tensor(float(sigma), dtype=torch.float64))) * self.timestep_scale
        return torch.full((batch,), t, dtype=torch.float32, device=device)

    def sigma_of_timestep(self, timestep: Tensor) -> Tensor:
        """The noise level of a network time input, the inverse of :meth:`timestep` (float64)."""
        return self.sigma_of(torch.as_tensor(timestep, dtype=torch.float64) / self.timestep_scale)

    # ------------------------------------------------------------- checks
    def check_t(self, t: Tensor, x: Tensor, argname: str = "x0") -> Tensor:
        """t: a tensor [B] of x's batch size, of the process's times (:meth:`_check_t_values`)."""
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a torch tensor of shape [B], got {type(t).__name__}")
        if t.ndim != 1 or x.ndim < 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must have shape [B] matching {argname}'s batch size: got t of shape "
                f"{tuple(t.shape)} and {argname} of shape {tuple(x.shape)}"
            )
        return self._check_t_values(t)

    def _check_t_values(self, t: Tensor) -> Tensor:
        """A float tensor within :meth:`time_range`. The values are read on CPU tensors only: on an
        accelerator reading them would stall the step loop on a host-device sync (as for class
        labels in check_labels); and not while torch.compile traces (a data-dependent branch would
        split the graph)."""
        if not t.is_floating_point():
            raise TypeError(f"t must be a float tensor: {type(self).__name__} runs in continuous time, got {t.dtype}")
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = self.time_range()
            if not torch.isfinite(t).all() or (t < lo).any() or (t > hi).any():
                raise ValueError(f"t must lie in [{lo:g}, {hi:g}] ({type(self).__name__}'s time), "
                                 f"got values in [{float(t.min()):.4g}, {float(t.max()):.4g}]")
        return t

    def time_range(self) -> tuple[float, float]:
        """The times the process is defined at (training may reach beyond the sampling range)."""
        return self.t_min, self.t_max

    # ----------------------------------------------------------- forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """x_t = a(t) x0 + s(t) noise."""
        self.check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return self._q_sample(x0, t, noise)

    def _coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.alpha_sigma(t)
        return _view(a.to(x.device, x.dtype), x), _view(s.to(x.device, x.dtype), x)

    def _q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    # ------------------------------------------------------- prediction types
    def convert(self, x_t: Tensor, t: Tensor, model_output: Tensor, target: str) -> Tensor:
        """The model's output (of this process's prediction type) at (x_t, t) as ``target``."""
        if model_output.shape != x_t.shape:
            raise ValueError(
                f"model_output must have x_t's shape {tuple(x_t.shape)}, got {tuple(model_output.shape)}"
            )
        self.check_t(t, x_t, "x_t")
        a, s = self._coefficients(t, x_t)
        return convert_prediction(model_output, x_t, a, s, self.prediction, target)

    def predict_x0(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """x0 from the model's output (of this process's prediction type)."""
        return self.convert(x_t, t, model_output, "x0")

    def predict_eps(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """eps from the model's output (of this process's prediction type)."""
        return self.convert(x_t, t, model_output, "eps")

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output at x_t = q_sample(x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "velocity":
            return noise - x0
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    # ---------------------------------------------------------------- training
    def loss_weight(self, t: Tensor, weighting: Weighting = None) -> Tensor:
        """Per-sample weight of the squared error on this process's target.

        ``None`` / ``"uniform"``: 1, the plain regression on the model's own target.
        ``"min_snr"`` or ``"min_snr_<gamma>"``: Min-SNR-gamma (Hang et al. 2023, gamma = 5 by
        default; gamma > 0), expressed for the prediction type so that the weight on the x0 error
        is min(SNR, gamma). A callable receives SNR(t) and returns the weights.
        """
        gamma = check_weighting(weighting)
        if weighting is None or (isinstance(weighting, str) and weighting == "uniform"):
            return torch.ones(t.shape, device=t.device)
        snr = self.snr(t).to(t.device)
        if callable(weighting):
            w = weighting(snr)
        else:
            clipped = snr.clamp(max=gamma)
            w = clipped / self._x0_error_factor(t).to(t.device)
        if not isinstance(w, Tensor) or w.shape != t.shape:
            raise ValueError("a weighting callable must return one weight per sample, shape [B]")
        return w.to(torch.float32)

    def _x0_error_factor(self, t: Tensor) -> Tensor:
        """k(t) with ||target - target_hat||^2 = k ||x0 - x0_hat||^2 at fixed x_t (float64 [B])."""
        a, s = self.alpha_sigma(t)
        k = {"x0": torch.ones_like(a), "eps": (a / s) ** 2, "v": ((a * a + s * s) / s) ** 2,
             "velocity": ((a + s) / s) ** 2}
        return k[self.prediction]

    def draw_times(self, x0: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Training times for the batch x0 (drawn, so in range: no validation, no host-device sync)."""
        return self.training_times(x0.shape[0], generator, x0.device)

    def couple(self, x0: Tensor, noise: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Pair the batch's data with its noise: as drawn (independent coupling) unless a process says otherwise."""
        return x0, noise, cond

    def training_loss(
        self,
        model: Callable,
        x0: Tensor,
        cond: Optional[Tensor] = None,
        *,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        weighting: Weighting = None,
        cond_drop_prob: float = 0.0,
        generator: Optional[torch.Generator] = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Regression loss E_{t, eps} w(t) ||model(x_t, timestep(t)) - target||^2.

        t is drawn from :meth:`training_times` unless given. With ``cond_drop_prob`` p > 0 each
        label is replaced by the null label ``model.num_classes`` with probability p (a text model's
        caption by the empty one, ``null_cond``: :func:`difflab.validation.null_label`), training
        the unconditional model used by classifier-free guidance (Ho & Salimans 2022).
        ``reduction="none"`` returns the per-sample weighted losses.

        dtypes: ``x0`` (and ``noise``) must be float tensors (integer data is refused); they are
        cast to the dtype of the model's parameters (e.g. float64 data for a float32 network).
        Image-shaped ``x0`` (3 or more dimensions) on the CPU must be on the [-1, 1] scale: values
        beyond +-10 (0..255 pixels) are refused (:func:`difflab.validation.check_image_range`).
        """
        if not isinstance(x0, Tensor) or x0.ndim < 2:
            raise ValueError(f"x0 must be a batch tensor of shape [B, ...], got {getattr(x0, 'shape', x0)}")
        if not isinstance(cond_drop_prob, (int, float)) or not 0 <= cond_drop_prob <= 1:
            raise ValueError(f"cond_drop_prob must be a probability in [0, 1] (0.1 is usual), got {cond_drop_prob!r}")
        x0 = float_input(x0, "x0", model, X0_FIX)
        # images far off the [-1, 1] scale (0..255 pixels) would train silently on the wrong data; the
        # values are read on the CPU only (on an accelerator a per-step host-device sync; and not
        # under torch.compile), as check_labels reads labels
        if x0.device.type == "cpu" and not torch.compiler.is_compiling():
            check_image_range(x0, "x0 (image-shaped data)", DATA_RANGE_LIMIT)
        B = x0.shape[0]
        if t is None:
            t = self.draw_times(x0, generator)
        else:
            self.check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        else:
            noise = float_input(noise, "noise", model, NOISE_FIX)
            if noise.shape != x0.shape:
                raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
            noise = noise.to(x0.dtype)
        if cond is not None:
            cond = check_labels(model, cond, B)
            if cond_drop_prob > 0:
                null = null_label(model)
                if null is None:  # a plain function: no null label to drop to
                    raise ValueError("cond_drop_prob > 0 replaces labels by the null label model.num_classes "
                                     "(a text model's null_cond), but the model has neither attribute")
                drop = torch.rand(B, device=cond.device, generator=generator) < cond_drop_prob
                drop = drop.view(B, *([1] * (cond.ndim - 1)))  # whole rows: a caption is dropped entirely
                cond = torch.where(drop, torch.full_like(cond, null), cond)
        elif cond_drop_prob > 0:
            raise ValueError("cond_drop_prob > 0 needs class labels: pass cond")
        x0, noise, cond = self.couple(x0, noise, cond)
        x_t = self._q_sample(x0, t, noise)
        out = call_model(model, x_t, self.model_time(t), cond)
        err = (out.float() - self.target(x0, noise, t).float()) ** 2
        per_sample = err.flatten(1).mean(1) * self.loss_weight(t, weighting)
        if reduction == "mean":
            return per_sample.mean()
        if reduction == "none":
            return per_sample
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    def model_time(self, t: Tensor) -> Tensor:
        """The network's time input at the process's times t: ``timestep_scale * t`` as float32."""
        return (t * self.timestep_scale).to(torch.float32)
