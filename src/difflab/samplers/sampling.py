"""``dl.sample`` and ``dl.invert``: the samplers run on a network of the model convention.

:func:`sample` checks its arguments once, builds the noise levels (a timestep spacing, or
explicit timesteps or sigmas), draws x_T and hands a :class:`SamplingSettings` -- everything
but the inputs that determines the run -- to the registered sampler function, which runs in
the VE parameterisation x = x0 + sigma eps on the network seen as a denoiser (:mod:`.denoiser`).

Speed is not an argument here: it is applied to the model from outside (:mod:`difflab.accel`),
and the accelerated model follows the model convention like any other. A model may take over
how a whole run executes by defining ``sampling_run`` (the speed layer's whole-run CUDA graph);
everything it computes is still :meth:`SamplingSettings.run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..processes import Process
from ..validation import (NOISE_FIX, X0_FIX, check_finite, check_labels, float_input, is_int, is_real, model_dtype,
                          positive_int)
from .base import eval_mode, model_device, randn
from .classifier_guidance import ClassifierGuidance, check_classifier, classifier_labels
from .ddim import sample_ddim
from .denoiser import Denoiser, check_trained_process, model_attribute
from .registry import SAMPLERS, SamplerSpec
from .timesteps import SPACINGS, default_spacing, sampling_sigmas, sigmas_from_timesteps

__all__ = ["sample", "invert", "sampler_sigmas", "SamplingSettings", "SAMPLING_OPTIONS"]

# Keyword options of sample() that every sampler takes (the rest of **options are the sampler's own).
SAMPLING_OPTIONS = ("spacing", "timesteps", "sigmas", "clip_x0", "dynamic_threshold", "null_cond")

# Keywords of sample() that moved to the speed layer, and what to write instead.
MOVED_TO_ACCEL = ("precision", "channels_last", "compile", "cuda_graph", "group_norm")


@dataclass(frozen=True)
class SamplingSettings:
    """Everything but the inputs (x_T, labels, generator) that determines a sampling run: the
    sampler, its noise levels (decreasing, ending at 0) and options, the process and the
    denoiser's guidance and thresholding. Hashable, so a run can be cached by it; the process
    compares by what it means (``proc.signature()``: its kind, prediction and parameters), so an
    equal one built anew (processes have identity equality) is the same run."""

    sampler: str
    sigmas: tuple[float, ...]
    options: tuple[tuple[str, Any], ...]
    proc: Process = field(compare=False)
    guidance: float = 1.0
    null_cond: Optional[int] = None
    clip_x0: Optional[float] = None
    dynamic_threshold: Optional[float] = None
    classifier_scale: Optional[float] = None  # classifier guidance's s (None: no classifier)
    process: tuple = field(init=False, repr=False)  # proc by value: its signature()

    def __post_init__(self) -> None:
        object.__setattr__(self, "process", self.proc.signature())

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise as it runs (DDPM, DDIM with eta > 0, churn)."""
        return SAMPLERS[self.sampler].stochastic(dict(self.options))

    def run(self, model: Callable, x_T: Tensor, cond: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None, callback: Optional[Callable[[dict], None]] = None,
            *, classifier: Optional[Callable] = None, classifier_labels: Optional[Tensor] = None,
            negative_cond: Optional[Tensor] = None) -> Tensor:
        """x0 from the noise x_T: x = x_T sqrt(1 + sigma_0^2) at the top level sigma_0, then the sampler.

        For the VP processes x_T is the state itself (x_T / sqrt(abar_T)); for any process it is
        the standard normal draw scaled to the marginal spread sqrt(1 + sigma_0^2) of unit-variance data.
        With ``classifier_scale`` set, the denoiser is guided by ``classifier`` towards
        ``classifier_labels`` (:class:`~.classifier_guidance.ClassifierGuidance`); ``negative_cond``
        is the unconditional branch's condition (a negative prompt, :class:`.denoiser.Denoiser`)."""
        denoiser = Denoiser(model, self.proc, cond, self.guidance, self.null_cond, self.clip_x0,
                            self.dynamic_threshold, negative_cond)
        if self.classifier_scale is not None:
            if classifier is None:
                raise ValueError("these settings guide by a classifier (classifier_scale is set): pass classifier= "
                                 "and classifier_labels=")
            denoiser = ClassifierGuidance(denoiser, classifier, classifier_labels, self.classifier_scale, self.sigmas)
        x = x_T * math.sqrt(1.0 + self.sigmas[0] ** 2)
        sig = torch.tensor(self.sigmas, dtype=torch.float64)
        return SAMPLERS[self.sampler].fn(denoiser, x, sig, generator=generator, callback=callback,
                                         **dict(self.options))


class _StepReport:
    """The per-step callback of a run: advances the progress bar and calls the user's callback
    with the process's state x_t = a(sigma) x (the VP state x / sqrt(1 + sigma^2) for DDPM)."""

    def __init__(self, callback: Optional[Callable[[dict], None]], bar, proc: Process) -> None:
        self.callback, self.bar, self.proc = callback, bar, proc
        self.has_user_callback = callback is not None

    def __call__(self, step: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            a = float(self.proc.scale(float(step["sigma"])))
            self.callback(dict(step, x=step["x"] * a))


def _refuse_moved_keywords(options: dict) -> None:
    moved = [k for k in MOVED_TO_ACCEL if k in options]
    if moved:
        given = ", ".join(f"{k}={options[k]!r}" for k in moved)
        raise TypeError(
            f"dl.sample no longer takes speed options ({given}): speed is applied to the model from outside, "
            f"fast = dl.accel.accelerate(model, {given}); then dl.sample(fast, ...), dl.invert(fast, ...) or any "
            "editing function"
        )


def _sigmas(proc, spec: SamplerSpec, steps, spacing, sigmas, timesteps_) -> Tensor:
    given = [name for name, v in (("spacing", spacing), ("timesteps", timesteps_), ("sigmas", sigmas))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each set the noise levels: give one of them")
    if sigmas is not None:
        sig = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        if sig.ndim != 1 or sig.numel() < 2:
            raise ValueError("sigmas must be a 1-D tensor of at least 2 noise levels")
        if not torch.isfinite(sig).all():
            raise ValueError(f"sigmas must be finite noise levels, got {sig.tolist()}")
        if sig[-1] != 0:
            sig = torch.cat([sig, sig.new_zeros(1)])
        if (sig[1:] >= sig[:-1]).any() or (sig < 0).any():
            raise ValueError("sigmas must be strictly decreasing and non-negative (ending at 0)")
        # The network only knows the levels of its training grid: outside them it would be
        # evaluated at the clamped end of the grid while the solver assumes another level.
        lo, hi = proc.sigma_min * (1 - 1e-6), proc.sigma_max * (1 + 1e-6)
        inside = sig[:-1]
        if (inside < lo).any() or (inside > hi).any():
            raise ValueError(
                f"sigmas (except the final 0) must lie in the process's range [sigma_min, sigma_max] = "
                f"[{proc.sigma_min:.4g}, {proc.sigma_max:.4g}], got values in [{float(inside.min()):.4g}, "
                f"{float(inside.max()):.4g}]; e.g. karras_sigmas(steps, proc.sigma_min, proc.sigma_max)"
            )
        return sig
    if timesteps_ is not None:
        return sigmas_from_timesteps(proc, timesteps_)
    return sampler_sigmas(proc, spec, steps, spacing)


def sampler_sigmas(proc: Process, sampler, steps: int, spacing: Optional[str] = None) -> Tensor:
    """The noise levels ``sampler`` (a name or its :class:`SamplerSpec`) visits in ``steps`` steps of
    ``spacing`` (default: the sampler's own on the DDPM chain, the process's otherwise), as
    :func:`sample` builds them: for a sampler of consistency models (``SamplerSpec.consistency``) a last
    level at sigma_min -- where a consistency model returns its input -- is replaced by one more level above it."""
    spec = sampler if isinstance(sampler, SamplerSpec) else SAMPLERS.get(sampler)
    if spec is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    spacing = spacing or default_spacing(proc, spec.default_spacing)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    sig = sampling_sigmas(proc, steps, spacing)
    if spec.consistency and len(sig) > 2 and sig[-2] <= proc.sigma_min * (1 + 1e-6):
        # (karras, logsnr; the chain's leading and linspace end at timestep 0): the levels above
        # sigma_min of one step more
        sig = sampling_sigmas(proc, positive_int("steps", steps) + 1, spacing)
        sig = torch.cat([sig[:-2], sig[-1:]])
    return sig


def _distilled_levels(distilled, sig: Tensor, steps, explicit: bool) -> Tensor:
    """The noise levels of a run on a progressively distilled student, which learnt one update per
    interval of its grid ``distilled`` (decreasing, ending at 0): with no levels given, its grid
    when ``steps`` is its step count; given levels must lie on its grid (a run from an intermediate level, as
    SDEdit starts). Anything else is refused: between its levels the student has learnt nothing."""
    grid = torch.as_tensor(distilled, dtype=torch.float64)
    n = len(grid) - 1
    fix = (f"this student was distilled for {n} steps on the noise levels {[round(float(v), 4) for v in grid]}; "
           f"sample it with steps={n} (difflab sample --steps {n}) and no spacing, or sample its teacher for other "
           "step counts")
    if not explicit:
        if steps != n:
            raise ValueError(f"steps={steps}: {fix}")
        return grid
    # given levels: the grid's tail from one of its levels (each step one the student learnt)
    start = int((grid - sig[0]).abs().argmin())
    tail = grid[start:]
    if len(tail) != len(sig) or not torch.allclose(sig, tail, rtol=1e-6, atol=0):
        raise ValueError(f"the given noise levels {[round(float(v), 4) for v in sig]} are not the student's steps "
                         f"from one of its levels to 0: {fix}")
    return sig


def _check_shape(shape) -> tuple[int, ...]:
    entries = None if isinstance(shape, (str, bytes)) else shape
    try:
        entries = tuple(entries)
    except TypeError:
        entries = None
    if entries is None or any(not is_int(s) for s in entries):
        raise TypeError(f"shape must be a sequence of ints like (B, C, H, W), got {shape!r}")
    shape = tuple(int(s) for s in entries)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) with every size >= 1, got {shape}")
    return shape


def sample(
    model: Callable,
    proc: Process,
    shape: Sequence[int],
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    progress: bool = False,
    *,
    callback: Optional[Callable[[dict], None]] = None,
    **options,
) -> Tensor:
    """Draw x0 ~ p_model by running ``sampler`` from x_T = ``noise`` for ``steps`` steps.

    ``options`` are the sampler's own (e.g. ``variance="beta"`` for DDPM, ``s_churn`` for Euler)
    and these, which every sampler takes:

    - the noise levels: ``spacing`` picks the timesteps (:mod:`.timesteps`; default per sampler);
      ``timesteps`` (decreasing ints) or ``sigmas`` (decreasing VE noise levels) give them
      explicitly, and then ``steps`` is ignored;
    - thresholding of the x0 estimates: ``clip_x0=c`` clamps them to [-c, c] (default: the
      process's ``clip_x0``, the data's range where it is known -- a loaded run's process knows
      it; ``clip_x0=None``: no clipping); ``dynamic_threshold=p`` is Imagen's dynamic
      thresholding at quantile p;
    - ``null_cond``: the label of guidance's unconditional branch (default: the model's null label).

    ``cond``: class labels, or a text model's token ids [B, L]; a composed prompt, token ids
    [B, K, L] (``training.generate.prompts_for("a 7 AND bold", ...)``), adds the guidance of its K
    parts (composable diffusion, :class:`.denoiser.Denoiser`). ``negative_cond`` (a keyword of
    ``options``): a negative prompt,
    the condition [B, L] (or labels [B]) guidance moves away from, in place of the null condition
    (``training.generate.prompts_for(negative_prompts, ...)``; needs guidance != 1).

    Classifier guidance (Dhariwal & Nichol 2021), two keywords of ``options``: ``classifier`` a noise-aware classifier
    ``classifier(x_t, t) -> logits [B, K]`` of this process's states (``difflab train-classifier
    --noisy``), ``classifier_scale`` its scale s; the samples are drawn towards the classes ``cond``
    (required). An unconditional model gets ``cond`` only through the classifier; a conditional one
    gets it too, with classifier-free guidance ``guidance`` on top. Every sampler takes it (the eps
    form, :mod:`.classifier_guidance`; DDPM's mean shift); the run is eager (a model's own
    ``sampling_run``, a captured whole-run graph, is not used).

    ``callback`` receives a dict per step with the VP state ``x``, the estimate ``denoised``, the
    noise level ``sigma`` and the index ``i``. Returns x0 (clamped only as the thresholding
    above clamps the last estimate).

    dtypes: ``noise`` must be a float tensor; it is cast to the model's dtype (its parameters',
    or its ``dtype`` attribute: an accelerated 16-bit network keeps float32 state); a model
    without parameters runs in the noise's dtype, and noise drawn here is float32. ``device``:
    "auto", "cpu", "cuda", "cuda:<i>" or a torch.device that exists here (default: the model's).

    Speed: ``dl.sample(dl.accel.accelerate(model, precision="bf16", compile=True, ...), ...)``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    spec = SAMPLERS[sampler]
    # (keywords of options, not of the signature: dl.sample keeps its numerics-only arguments few)
    classifier, classifier_scale = options.pop("classifier", None), options.pop("classifier_scale", 1.0)
    negative_cond = options.pop("negative_cond", None)
    if not isinstance(proc, Process):
        raise TypeError(f"proc must be a process of dl.processes (e.g. dl.GaussianDiffusion), got "
                        f"{type(proc).__name__}")
    check_trained_process(model, proc)
    _refuse_moved_keywords(options)
    common = {k: options.pop(k) for k in SAMPLING_OPTIONS if k in options}
    shape = _check_shape(shape)
    if not is_real(eta):
        raise TypeError(f"eta must be a number in [0, 1] (0 = deterministic DDIM), got {type(eta).__name__} {eta!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {float(eta)}")
    if eta != 0.0:
        if "eta" not in spec.options:
            raise ValueError(f"eta is an option of {[n for n, s in SAMPLERS.items() if 'eta' in s.options]}, not of {sampler!r}")
        options["eta"] = float(eta)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise ValueError(
            f"sampler {sampler!r} takes no option {', '.join(sorted(unknown))}; its options: "
            f"{', '.join(spec.options) or 'none'} (and {', '.join(SAMPLING_OPTIONS)}, which every sampler takes)"
        )
    if not callable(model):
        raise TypeError(f"model must be a callable model(x_t, t[, cond]), got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    state_dtype = model_dtype(model)
    if noise is not None:  # a float tensor in the model's dtype (see the docstring)
        noise = float_input(noise, "noise", model, NOISE_FIX, state_dtype)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        check_finite(noise, "noise", NOISE_FIX)  # NaN noise would give NaN samples, not an error
    device = resolve_device(device, "device") if device is not None else model_device(model, noise)
    sig = _sigmas(proc, spec, steps, common.get("spacing"), common.get("sigmas"), common.get("timesteps"))
    distilled = model_attribute(model, "distilled_sigmas")
    if distilled is not None:  # a progressively distilled student: its own levels
        explicit = any(common.get(k) is not None for k in ("spacing", "sigmas", "timesteps"))
        sig = _distilled_levels(distilled, sig, steps, explicit)
    if classifier is not None:  # the labels guide the classifier, and the model only when it is conditional
        model_classes = model_attribute(model, "num_classes")
        K = check_classifier(classifier, proc, shape[1:], model_classes)
        if not is_real(classifier_scale) or not (math.isfinite(float(classifier_scale)) and classifier_scale >= 0):
            raise ValueError(f"classifier_scale must be a finite number >= 0 (0 = no classifier guidance), got "
                             f"{classifier_scale!r}")
        if cond is None:
            raise ValueError(f"classifier guidance needs the classes to guide towards: pass cond (labels 0 .. {K - 1}: "
                             f"an int or a long tensor [{shape[0]}])")
        guide_labels = classifier_labels(cond, K, shape[0], device)
        if model_classes is None:
            cond = None
    elif not is_real(classifier_scale) or classifier_scale != 1.0:
        raise ValueError(f"classifier_scale={classifier_scale!r} needs classifier= (a noise-aware classifier, "
                         "`difflab train-classifier --noisy`)")
    cond = check_labels(model, cond, shape[0], device, composed=True)
    if negative_cond is not None:
        negative_cond = check_labels(model, negative_cond, shape[0], device, name="negative_cond")
    x_T = (noise if noise is not None else randn(shape, generator, device, state_dtype or torch.float32)).to(device)
    clip_x0 = common.get("clip_x0", ...)  # absent (or ...): the data's range the process knows; None: no clipping
    settings = SamplingSettings(sampler, tuple(sig.tolist()), tuple(sorted(options.items())), proc, guidance,
                                common.get("null_cond"), proc.clip_x0 if clip_x0 is ... else clip_x0,
                                common.get("dynamic_threshold"),
                                None if classifier is None else float(classifier_scale))
    bar = tqdm(total=len(sig) - 1, desc=sampler, leave=False) if progress else None
    report = _StepReport(callback, bar, proc)
    runner = getattr(model, "sampling_run", None)  # a model that runs a whole run its own way
    if classifier is not None or negative_cond is not None:  # (classifier: gradients step by step; a negative
        runner = None                                           # prompt is an input a captured run does not take)
    try:
        with eval_mode(model), eval_mode(classifier):
            if runner is None and classifier is not None:
                x = settings.run(model, x_T, cond, generator, report, classifier=classifier,
                                 classifier_labels=guide_labels, negative_cond=negative_cond)
            elif runner is None:
                x = settings.run(model, x_T, cond, generator, report, negative_cond=negative_cond)
            else:
                x = runner(lambda *a: settings.run(model, *a), settings, x_T, cond, generator, report)
        if bar is not None:
            bar.update(bar.total - bar.n)  # (a run captured whole reports no steps)
    finally:
        if bar is not None:
            bar.close()
    return x


def invert(
    model: Callable,
    proc: Process,
    x0: Tensor,
    steps: int = 50,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    *,
    spacing: Optional[str] = None,
    progress: bool = False,
) -> Tensor:
    """DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F): x0 -> x_T.

    Walks up the noise levels ``sample(sampler="ddim")`` walks down, from sigma = 0 (x0) to
    the top, so ``sample(..., noise=invert(x0), steps=steps, spacing=spacing)`` reconstructs x0
    up to the ODE's discretisation error. The first interval 0 -> sigma_1 has no prediction at
    its start (sigma = 0): as in diffusers' DDIMInverseScheduler, it takes the prediction at
    sigma_1 of x0 itself, x_1 = x0 + sigma_1 eps_hat(x0, sigma_1); then eta = 0 DDIM updates.
    """
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batch tensor [B, ...], got {getattr(x0, 'shape', type(x0).__name__)}")
    x0 = float_input(x0, "x0", model, X0_FIX)  # cast to the model's dtype, as in sample
    check_trained_process(model, proc)
    spacing = spacing or default_spacing(proc, "trailing")
    sig = sampling_sigmas(proc, steps, spacing)[:-1].flip(0)  # increasing, without the final 0
    if cond is not None:
        cond = check_labels(model, cond, x0.shape[0], x0.device)
    denoiser = Denoiser(model, proc, cond, guidance)
    bar = tqdm(total=len(sig), desc="invert", leave=False) if progress else None
    try:
        with eval_mode(model), torch.no_grad():
            s1 = float(sig[0])
            x = 2 * x0 - denoiser(x0, s1)  # x0 + s1 * eps_hat, eps_hat = (x0 - D(x0, s1)) / s1
            if bar is not None:
                bar.update(1)
            x = sample_ddim(denoiser, x, sig, callback=(lambda _: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    return x / math.sqrt(1.0 + float(sig[-1]) ** 2)
