"""Classifier guidance (Dhariwal & Nichol 2021, sec. 4): a noise-aware classifier's gradient steers sampling.

With a classifier p(y | x_t) of the process's noisy states (:mod:`difflab.models.noisy_classifier`),
Bayes' rule gives the conditional score, grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t);
guidance of scale s samples p(x_t) p(y | x_t)^s instead. Two forms, both here:

**The eps form** (their Algorithm 2, for DDIM and every ODE solver). In the process's VP frame,
x_t = sqrt(abar) x0 + sqrt(1 - abar) eps and eps_hat = -sqrt(1 - abar) grad log p(x_t), so

    eps' = eps_hat - sqrt(1 - abar) s grad_{x_t} log p(y | x_t).

difflab's samplers see the denoiser D(x, sigma) in the VE frame x = x_t / a (:mod:`.denoiser`).
Tweedie's formula there reads D(x, sigma) = x + sigma^2 grad_x log p_sigma(x), and the
classifier, a function of x_t = a x, has grad_x log p(y | a x) = a grad_{x_t} log p(y | x_t), so

    D'(x, sigma) = D(x, sigma) + s sigma^2 grad_x log p(y | x_t = a x)
                 = D(x, sigma) + s a sigma^2 grad_{x_t} log p(y | x_t),

which is eps' above carried through x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) with
sqrt(abar) = a, sqrt(1 - abar) = a sigma, and holds for every process of the form x_t = a x
(VE, EDM, flow matching alike). At s = 1 with the exact classifier, D' is exactly the conditional
denoiser E[x0 | x, y]. The shift is added to the base denoiser's (possibly clipped) estimate and
not clipped again, as guided-diffusion's ``condition_score`` adds it to the clipped ``pred_xstart``.

**The mean shift** (their Algorithm 1, for DDPM ancestral sampling): the step's Gaussian
N(mu, Sigma) is moved to N(mu + s Sigma grad_{x_t} log p(y | x_t), Sigma), with x0 from the
unguided model. The ancestral sampler works in the VE frame of the next level sigma', where
x' = x_{t-1} / a', so with the VE variance var of that step (Sigma = a'^2 var) the shift is

    shift = s Sigma grad_{x_t} log p(y | x_t) / a' = s var (a' / a) grad_x log p(y | x_t = a x)

(:meth:`ClassifierGuidance.mean_shift`). For small steps it agrees with what the eps form gives the
posterior mean, (1 - sigma'^2 / sigma^2) s sigma^2 grad_x log p(y | a x), to first order.

Classifier-free guidance composes: the base :class:`~.denoiser.Denoiser` applies its own scale w to
the labels it was given, and the classifier's gradient is added on top.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..processes import PREDICTION_TYPES, Process
from ..validation import LABEL_DTYPES, is_int, is_real

__all__ = ["ClassifierGuidance", "check_classifier", "classifier_labels", "learnt_noise_levels"]


def learnt_noise_levels(signature: Sequence) -> tuple:
    """What a classifier learnt from a process whose ``network_signature()`` is ``signature``: the
    same without the prediction type (its second entry, a name of ``PREDICTION_TYPES``; a
    classifier reads x_t and the time input, never the diffusion network's output), as nested
    tuples (a signature read back from JSON holds lists)."""
    def frozen(v):
        return tuple(frozen(u) for u in v) if isinstance(v, (list, tuple)) else v

    entries = [frozen(v) for v in signature]
    if len(entries) > 1 and entries[1] in PREDICTION_TYPES:
        del entries[1]
    return tuple(entries)


def _describe(signature: Sequence) -> str:
    """A short description of a process signature: its kind and, for long ones, a summary."""
    text = repr(tuple(signature))
    return text if len(text) < 120 else f"{signature[0]} ({len(repr(signature))}-character signature)"


def check_classifier(classifier: Callable, proc: Process, data_shape: Optional[Sequence[int]] = None,
                     num_classes: Optional[int] = None) -> int:
    """Refuse a classifier that cannot guide this run; return its class count K.

    It must have ``num_classes`` (K >= 2); a ``data_shape`` equal to the samples' (when both are
    known); K equal to the diffusion model's class count when that model is conditional (its labels
    and the classifier's must mean the same classes); and a ``process_signature`` that learnt the
    same noise levels as ``proc`` (:func:`learnt_noise_levels`): read under another schedule or
    process, its time input and states would mean other noise levels and its gradient would be
    garbage."""
    if not callable(classifier):
        raise TypeError(f"classifier must be a callable classifier(x_t, t) -> logits [B, K] (e.g. one from "
                        f"`difflab train-classifier --noisy`), got {type(classifier).__name__}")
    K = getattr(classifier, "num_classes", None)
    if K is None or not isinstance(K, int) or K < 2:
        raise ValueError(f"the classifier must have num_classes (an integer >= 2: the classes it tells apart), got "
                         f"{K!r}; a noisy classifier trained by `difflab train-classifier --noisy` has it")
    shape = getattr(classifier, "data_shape", None)
    if shape is not None and data_shape is not None and tuple(shape) != tuple(data_shape):
        raise ValueError(f"the classifier was trained on data of shape {tuple(shape)} but the samples have shape "
                         f"{tuple(data_shape)} (another resolution or layout): train a classifier on this run's data "
                         "(`difflab train-classifier --noisy --ckpt RUN`)")
    if num_classes is not None and num_classes != K:
        raise ValueError(f"the classifier tells {K} classes apart but the diffusion model has num_classes = "
                         f"{num_classes}: their labels would mean different classes; use a classifier of the same "
                         "classes")
    trained = getattr(classifier, "process_signature", None)
    if trained is not None and learnt_noise_levels(trained) != learnt_noise_levels(proc.network_signature()):
        raise ValueError(f"the classifier read the noisy states of another process ({_describe(trained)}) than "
                         f"this sampling's {proc!r}: its time input and states would mean other noise levels; "
                         "train one under this run's process (`difflab train-classifier --noisy --ckpt RUN`)")
    return K


def classifier_labels(y, num_classes: int, batch: int, device=None) -> Tensor:
    """The classes to guide towards as a long tensor [batch]: an int (all alike) or integers [batch]
    in 0 .. num_classes - 1 (no null label: a classifier has no "no class")."""
    if y is None:
        raise ValueError(f"classifier guidance needs the classes to guide towards: pass cond (labels 0 .. "
                         f"{num_classes - 1}: an int or a long tensor [{batch}]); `difflab sample --label`")
    if not (is_int(y) or (isinstance(y, Tensor) and y.dtype in LABEL_DTYPES)):
        raise TypeError(f"the classifier's labels must be an int or an integer tensor [{batch}], got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if isinstance(y, Tensor) and y.ndim == 0:
        y = int(y)
    y = torch.full((batch,), int(y), dtype=torch.long) if is_int(y) else y.long()
    if y.shape != (batch,):
        raise ValueError(f"the classifier's labels must have shape [{batch}] (one per sample), got {tuple(y.shape)}")
    if bool((y < 0).any()) or bool((y >= num_classes).any()):  # (on any device: one sync, once per run)
        raise ValueError(f"classifier guidance needs labels in 0 .. {num_classes - 1} (the classifier's classes), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return y if device is None else y.to(device)


class ClassifierGuidance:
    """D'(x, sigma) = D(x, sigma) + s sigma^2 grad_x log p(y | x_t = a x): ``denoiser`` guided by
    ``classifier`` towards the labels ``y`` (long [B]) with scale ``s`` (see the module docstring).

    ``denoiser`` is a :class:`~.denoiser.Denoiser` (or anything with ``proc`` and ``scale``): it is
    kept as ``.denoiser`` (the unguided base, whose x0 DDPM's mean shift uses) and every other
    attribute (``scale``, ``proc``, ``calls``, ``guidance``, ...) is read from it, so any sampler
    takes this wrapper where it takes a denoiser. ``classifier_calls`` counts the classifier's
    forward-and-backward passes. ``levels``: the run's noise levels (decreasing), from which
    :meth:`mean_shift` reads the next level when its caller does not give it. The gradient is
    taken with autograd enabled inside, as samplers run under ``torch.no_grad``.
    """

    def __init__(self, denoiser: Callable, classifier: Callable, y: Union[int, Tensor],
                 scale: float = 1.0, levels: Optional[Sequence[float]] = None) -> None:
        proc = getattr(denoiser, "proc", None)
        if not callable(denoiser) or not isinstance(proc, Process) or not callable(getattr(denoiser, "scale", None)):
            raise TypeError(f"denoiser must be a difflab Denoiser (with .proc and .scale), got "
                            f"{type(denoiser).__name__}")
        if not is_real(scale) or not (math.isfinite(float(scale)) and float(scale) >= 0):
            raise ValueError(f"classifier_scale must be a finite number >= 0 (0 = no classifier guidance), got "
                             f"{scale!r}")
        K = check_classifier(classifier, proc)
        batch = y.shape[0] if isinstance(y, Tensor) and y.ndim == 1 else 1
        self.denoiser, self.classifier = denoiser, classifier
        self.y = classifier_labels(y, K, batch)
        self.classifier_scale = float(scale)
        self.classifier_calls = 0
        self.levels = None if levels is None else tuple(float(v) for v in levels)

    def __getattr__(self, name: str):
        if name in ("denoiser", "__setstate__"):  # (not set yet: no recursion while unpickling)
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def grad_log_prob(self, x: Tensor, sigma: float) -> Tensor:
        """grad_x log p(y | x_t = a x) at the VE state x and level sigma (x's shape and dtype)."""
        sigma = float(sigma)
        a = float(self.denoiser.scale(sigma))
        shape = getattr(self.classifier, "data_shape", None)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"the classifier was trained on data of shape {tuple(shape)} but the samples have shape "
                             f"{tuple(x.shape[1:])}: train a classifier on this run's data")
        y = self.y.to(x.device)
        if y.shape[0] != x.shape[0]:
            if y.shape[0] != 1:
                raise ValueError(f"{y.shape[0]} classifier labels for a batch of {x.shape[0]}: give one per sample")
            y = y.expand(x.shape[0])
        t = self.denoiser.proc.timestep(sigma, x.shape[0], x.device)
        dtype = next((p.dtype for p in getattr(self.classifier, "parameters", lambda: iter(()))()), x.dtype)
        with torch.enable_grad():
            x_in = x.detach().to(dtype).requires_grad_(True)
            logits = self.classifier(x_in * a, t)
            if not isinstance(logits, Tensor) or logits.shape != (x.shape[0], self.classifier_classes):
                raise ValueError(f"the classifier must return logits [B, K] = [{x.shape[0]}, {self.classifier_classes}], got "
                                 f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        self.classifier_calls += 1
        return grad.to(x.dtype)

    @property
    def classifier_classes(self) -> int:
        """K, the classes the classifier tells apart."""
        return int(self.classifier.num_classes)

    def predict(self, x: Tensor, sigma: float) -> tuple[Tensor, Optional[Tensor]]:
        """(D'(x, sigma), v): the guided estimate and the base's variance output v (None unless the
        network learns its variance; guidance moves the mean, not the variance)."""
        base_predict = getattr(self.denoiser, "predict", None)
        x0, v = base_predict(x, sigma) if base_predict is not None else (self.denoiser(x, sigma), None)
        sigma = float(sigma)
        if self.classifier_scale == 0.0 or sigma == 0.0:
            return x0, v
        return x0 + (self.classifier_scale * sigma**2) * self.grad_log_prob(x, sigma), v

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """D'(x, sigma) = D(x, sigma) + s sigma^2 grad_x log p(y | a x): the eps form (Alg. 2)."""
        return self.predict(x, sigma)[0]

    def mean_shift(self, x: Tensor, sigma: float, var: Union[float, Tensor],
                   sigma_next: Optional[float] = None) -> Tensor:
        """s var (a' / a) grad_x log p(y | x_t = a x): Alg. 1's shift s Sigma grad_{x_t} log p(y | x_t)
        of the ancestral step from level ``sigma`` to ``sigma_next`` in the VE frame of sigma_next
        (module docstring), with ``var`` that step's VE-frame variance (a float, or a tensor
        broadcastable to x: a learned variance). Add it to the mean computed with the unguided
        ``.denoiser``'s x0. ``sigma_next`` defaults to the level after ``sigma`` in ``levels``."""
        sigma = float(sigma)
        sigma_next = self._next_level(sigma) if sigma_next is None else float(sigma_next)
        if self.classifier_scale == 0.0:
            return torch.zeros_like(x)
        ratio = float(self.denoiser.scale(sigma_next)) / float(self.denoiser.scale(sigma))
        return (self.classifier_scale * ratio) * var * self.grad_log_prob(x, sigma)

    def _next_level(self, sigma: float) -> float:
        """The level after ``sigma`` in the run's ``levels`` (the step's target a' depends on it)."""
        if self.levels is not None:
            for i, level in enumerate(self.levels[:-1]):
                if math.isclose(level, sigma, rel_tol=1e-9, abs_tol=0.0):
                    return self.levels[i + 1]
        raise ValueError(f"mean_shift at sigma = {sigma:g} needs the step's next level: pass sigma_next, or build "
                         "ClassifierGuidance with the run's levels= (dl.sample does)")
