"""A network of the model convention, seen as a denoiser D(x, sigma) ~ E[x0 | x].

Samplers work in the VE parameterisation x = x0 + sigma eps (Karras et al. 2022, sec. 2),
where the process's own state is x_t = a x (:mod:`difflab.processes.base`; a = 1 / sqrt(1 + sigma^2)
for the VP processes, 1 for VE and EDM, 1 / (1 + sigma) for flow matching). The denoiser converts:

    x_t = a x,  a = proc.scale(sigma),  t = proc.timestep(sigma)        (the network's time input)
    D(x, sigma) = x0 of model(x_t, t, cond), by the process's prediction type

Classifier-free guidance (Ho & Salimans 2022, eq. 6) combines the conditional and the
unconditional outputs in one batched forward pass of size 2B:

    out = out_uncond + w (out_cond - out_uncond)

which equals guiding eps, x0 or v alike, because the conversions are affine in the output.
A composed prompt (token ids [B, K, L]: K prompts, "a 7 AND bold") adds the K guidance
directions (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion
Models", eq. 10), sampling p(x) prod_k p(c_k | x)^w, in one forward pass of size (K + 1) B:

    out = out_uncond + w sum_k (out(c_k) - out_uncond)

An empty part (a row of padding, the empty caption) adds nothing, so prompts of fewer parts pad
the batch; K = 1 is classifier-free guidance.
A negative prompt (``negative_cond``: token ids [B, L], or labels [B]) takes the unconditional
branch's place, out_uncond = out(c_neg), so guidance moves away from what it says as it moves
towards the prompt (Stable Diffusion's and diffusers' ``negative_prompt``):

    out = out(c_neg) + w (out(c) - out(c_neg))

(with a composed prompt of K parts the negative's output weighs 1 - w K: it grows with the parts).
A network that takes the scale as an input (``guidance_input``: a guided-distilled student,
Luo et al. 2023) is instead called once, ``model(x_t, t, cond, guidance=w)``.

A network that learns its variance (``learn_sigma``, improved DDPM) outputs [prediction, v]: D is
its prediction's x0, as for any network, and :meth:`Denoiser.predict` also returns v, which DDPM
ancestral sampling reads (:mod:`.ddpm`); DDIM and the ODE solvers use the mean alone.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..validation import is_int, is_real, null_label
from ..processes import Process, call_model_with_variance, convert_prediction, model_attribute

__all__ = ["Denoiser", "check_trained_process", "model_attribute"]


class Denoiser:
    """D(x, sigma) for ``model`` under ``proc``, with guidance and optional x0 clipping.

    ``clip_x0=c`` clamps x0 to [-c, c]. ``dynamic_threshold=p`` applies Imagen's dynamic
    thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, quantile_p |x0|), x0 <- clamp(x0, -s, s) / s.
    ``calls`` counts forward passes of the network.
    """

    def __init__(
        self,
        model: Callable,
        proc: Process,
        cond: Optional[Tensor] = None,
        guidance: float = 1.0,
        null_cond: Optional[int] = None,
        clip_x0: Optional[float] = None,
        dynamic_threshold: Optional[float] = None,
        negative_cond: Optional[Tensor] = None,
    ) -> None:
        if not isinstance(proc, Process):
            raise TypeError(f"proc must be a process of dl.processes (e.g. dl.GaussianDiffusion), got "
                            f"{type(proc).__name__}")
        for name, value in (("guidance", guidance), ("clip_x0", clip_x0), ("dynamic_threshold", dynamic_threshold)):
            if value is not None and not is_real(value):
                raise TypeError(f"{name} must be a number (a Python or numpy float), got {type(value).__name__} "
                                f"{value!r}")
        check_trained_process(model, proc)  # here, so every caller (sample, invert, editing, likelihood) is covered
        guidance = float(guidance)
        if not (guidance >= 0 and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number >= 0 (1 = no guidance), got {guidance}")
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be > 0, got {clip_x0}")
        if dynamic_threshold is not None and not 0 < dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold is a quantile in (0, 1], got {dynamic_threshold}")
        clip_x0 = float(clip_x0) if clip_x0 is not None else None
        dynamic_threshold = float(dynamic_threshold) if dynamic_threshold is not None else None
        if null_cond is not None:
            null_cond = _check_null_cond(null_cond, getattr(model, "num_classes", None))
        else:
            null_cond = null_label(model)  # the null class, or a text model's empty caption
        if guidance != 1.0:
            if null_cond is None:
                raise ValueError(
                    f"guidance={guidance} needs a class-conditional model (or a text model): this model has no "
                    "num_classes (no null label to compare against). Use guidance=1, or train with "
                    "num_classes=K (or captions) and label dropout."
                )
            if cond is None:
                raise ValueError(f"guidance={guidance} needs class labels: pass cond=<long tensor [B]> (a text model: "
                                 "token ids, model.tokenizer.encode(prompts))")
        self.model, self.proc, self.cond = model, proc, cond
        self.guidance, self.null_cond = guidance, null_cond
        self.guidance_input = bool(model_attribute(model, "guidance_input"))
        if negative_cond is not None:
            if guidance == 1.0 or cond is None:
                raise ValueError("a negative prompt (negative_cond) replaces the unconditional branch of guidance: it "
                                 "needs guidance != 1 and a condition (cond) to guide towards")
            if self.guidance_input:
                raise ValueError("a negative prompt needs a network called for its unconditional branch, but this one "
                                 "takes the guidance scale as an input (a guided-distilled student): drop it")
            want = tuple(cond.shape[:1]) + tuple(cond.shape[2:]) if cond.ndim == 3 else tuple(cond.shape)
            if not isinstance(negative_cond, Tensor) or tuple(negative_cond.shape) != want:
                got = tuple(negative_cond.shape) if isinstance(negative_cond, Tensor) else type(negative_cond).__name__
                raise ValueError(f"negative_cond must be a condition a sample, of shape {want} (cond's, one "
                                 f"prompt a sample), got {got}")
        self.negative_cond = negative_cond
        if isinstance(cond, Tensor) and cond.ndim == 3 and model_attribute(model, "tokenizer") is not None:
            if self.guidance_input:
                raise ValueError("composed prompts (token ids [B, K, L]) need a network called once per prompt, but "
                                 "this one takes the guidance scale as an input (a guided-distilled student): give "
                                 "one prompt per sample")
            self.composed = True
        else:
            self.composed = False
        self.learned_variance = bool(model_attribute(model, "learn_sigma"))
        self.clip_x0, self.dynamic_threshold = clip_x0, dynamic_threshold
        self.calls = 0

    def scale(self, sigma: float) -> float:
        """a(sigma): the process's state is x_t = a x."""
        return float(self.proc.scale(float(sigma)))

    def model_output(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """The (guided) network prediction at VP state x_t, and the variance output v of a network
        that learns its variance (else None). Under classifier-free guidance v is the conditional
        branch's: guidance moves the mean, as in GLIDE's and DiT's samplers."""
        cond, w = self.cond, self.guidance
        self.calls += 1
        if cond is None:
            return call_model_with_variance(self.model, x_t, t)
        if self.composed:
            return self._composed_output(x_t, t, cond, w)
        if self.guidance_input:  # the scale is the network's input (a tensor: graphs and compile key on it): one call
            return call_model_with_variance(self.model, x_t, t, cond,
                                            guidance=torch.full((x_t.shape[0],), w, device=x_t.device))
        if w == 1.0:
            return call_model_with_variance(self.model, x_t, t, cond)
        null = self._uncond(cond)
        if w == 0.0:
            return call_model_with_variance(self.model, x_t, t, null)
        out, v = call_model_with_variance(
            self.model, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null])
        )
        out_cond, out_uncond = out.chunk(2)
        return out_uncond + w * (out_cond - out_uncond), (None if v is None else v.chunk(2)[0])

    def _uncond(self, cond: Tensor) -> Tensor:
        """The unconditional branch's condition for one prompt a sample: the negative prompt, else the
        null condition in ``cond``'s shape."""
        return torch.full_like(cond, self.null_cond) if self.negative_cond is None else self.negative_cond

    def _composed_output(self, x_t: Tensor, t: Tensor, cond: Tensor, w: float) -> tuple[Tensor, Optional[Tensor]]:
        """out_uncond + w sum_k m_k (out(c_k) - out_uncond) for cond [B, K, L], m_k = 0 for an empty
        part (out_uncond: the negative prompt's, if any, and then m_1 = 1: a prompt's first part is the
        prompt, "" included, so a batch of composed and plain prompts guides each as it would alone);
        v (a learned variance) from the first part."""
        B, K = cond.shape[:2]
        parts = cond.transpose(0, 1).reshape(K * B, *cond.shape[2:])  # part-major: [c_1 of every sample, c_2, ...]
        null = self._uncond(cond[:, 0])
        repeat = (K + 1, *([1] * (x_t.ndim - 1)))
        out, v = call_model_with_variance(self.model, x_t.repeat(repeat), t.repeat(K + 1), torch.cat([parts, null]))
        out = out.unflatten(0, (K + 1, B))
        uncond = out[K]
        said = (cond != self.null_cond).any(-1)  # [B, K]: padding parts add nothing
        if self.negative_cond is not None:  # the first part is the prompt itself, even the empty caption "": its
            said[:, 0] = True               # direction out("") - out(neg) is not zero (it is without a negative one)
        said = said.T.reshape(K, B, *([1] * (x_t.ndim - 1))).to(out.dtype)
        return uncond + w * ((out[:K] - uncond) * said).sum(0), (None if v is None else v[:B])

    def predict(self, x: Tensor, sigma: float) -> tuple[Tensor, Optional[Tensor]]:
        """(E[x0 | x], v) at VE noise level sigma: the denoised estimate and, for a network that
        learns its variance, its interpolation v in [-1, 1] between the step's beta~ and beta
        (:func:`difflab.samplers.ddpm.sample_ddpm` reads it); v is None for any other network."""
        sigma = float(sigma)
        alpha = self.scale(sigma)
        x_t = x * alpha
        out, v = self.model_output(x_t, self.proc.timestep(sigma, x.shape[0], x.device))
        x0 = convert_prediction(out, x_t, alpha, sigma * alpha, self.proc.prediction, "x0")
        if self.dynamic_threshold is not None:
            s = torch.quantile(x0.flatten(1).abs().float(), self.dynamic_threshold, dim=1)
            s = s.clamp(min=1.0).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0, v

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """E[x0 | x] at VE noise level sigma (a python float)."""
        return self.predict(x, sigma)[0]


def check_trained_process(model: Callable, proc: Process) -> None:
    """Refuse to sample a network under another process than the one it was trained under: its
    outputs would be read at other noise levels or as another prediction, giving noise. A network
    loaded by ``dl.load`` names its process (``trained_process``), found also through the wrappers
    that keep the network as ``.module`` (DDP, the speed layer's Accelerated), ``._orig_mod``
    (torch.compile) or ``.model`` (a bound low-res image); processes compare by what the network
    learnt (``network_signature()``), so another sampling range of the same process is allowed."""
    trained = model_attribute(model, "trained_process")
    if isinstance(trained, Process) and isinstance(proc, Process) and trained.network_signature() != proc.network_signature():
        raise ValueError(f"this network was trained under {trained!r} but is sampled under {proc!r}: sample it "
                         "under its own process, the run's (dl.load(...).proc, or model.trained_process)")


def _check_null_cond(null_cond, num_classes: Optional[int]) -> int:
    """The label of the unconditional branch of guidance: an integer, in 0 .. num_classes when
    the model has ``num_classes`` (the null label is num_classes itself)."""
    if not is_int(null_cond):
        raise TypeError(f"null_cond must be an integer class label (or None for the model's null label), "
                        f"got {type(null_cond).__name__} {null_cond!r}")
    null_cond = int(null_cond)
    if num_classes is not None and not 0 <= null_cond <= num_classes:
        raise ValueError(f"null_cond must lie in 0 .. {num_classes} (the null label of this model is "
                         f"{num_classes}; None uses it), got {null_cond}")
    if null_cond < 0:
        raise ValueError(f"null_cond must be a label >= 0, got {null_cond}")
    return null_cond
