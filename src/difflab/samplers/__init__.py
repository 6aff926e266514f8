"""Samplers: functions from starting noise to data over a decreasing tensor of noise levels.

Each sampler is one function ``sample_NAME(denoiser, x, sigmas, *, generator, callback, ...)``
in its own module (``ddim.py`` holds DDIM), written in the VE parameterisation
x = x0 + sigma eps with a denoiser D(x, sigma) (see :mod:`.denoiser`), as in k-diffusion.
:func:`sample` is the public entry point: it builds the noise levels from a timestep
spacing, wraps the network as a denoiser with guidance, and converts to and from the VP
state x_t of the process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..devices import graphs_supported, resolve_device
from ..diffusion import GaussianDiffusion
from ..validation import check_labels, is_int, is_real, model_dtype
# local names of the code below, which is being rewritten; use the public names after
from ..validation import NOISE_FIX as _NOISE_FIX, X0_FIX as _X0_FIX, float_input as _float_input
from .base import eval_mode, model_device, randn
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .denoiser import Denoiser
from .dpm_solver import sample_dpmpp_2m, sample_dpmpp_3m
from .euler import sample_euler
from . import fast as fast_module
from .fast import FastModel, fast_model, loop_graphs
from .heun import sample_heun
from .optimize import optimize_sigmas
from .timesteps import SPACINGS, karras_sigmas, logsnr_sigmas, sampling_sigmas, sigmas_from_timesteps, timesteps

__all__ = [
    "sample",
    "invert",
    "SAMPLERS",
    "SamplerSpec",
    "register",
    "Denoiser",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "logsnr_sigmas",
    "optimize_sigmas",
    "timesteps",
    "sampling_sigmas",
    "karras_sigmas",
    "SPACINGS",
    "FastModel",
    "fast_model",
]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, default spacing and the options it takes."""

    fn: Callable
    default_spacing: str = "trailing"
    options: tuple[str, ...] = ()
    evals_per_step: int = 1  # model evaluations per step (the last step may use fewer)
    description: str = ""
    stochastic: Callable[[dict], bool] = lambda options: False  # draws noise during the run, given its options


SAMPLERS: dict[str, SamplerSpec] = {}


def _positive(value) -> bool:
    """A sampler option that switches noise on (eta, s_churn) when positive; anything else is
    left to the sampler's own check."""
    return is_real(value) and value > 0


def register(name: str, spec: SamplerSpec) -> None:
    """Make a sampler available to :func:`sample` and the CLI under ``name``."""
    SAMPLERS[name] = spec


register("ddpm", SamplerSpec(sample_ddpm, "trailing", ("variance",), 1, "DDPM ancestral (Ho et al. 2020)",
                            stochastic=lambda o: True))
register("ddim", SamplerSpec(sample_ddim, "trailing", ("eta",), 1, "DDIM with eta (Song et al. 2021)",
                            stochastic=lambda o: _positive(o.get("eta"))))
register("dpmpp_2m", SamplerSpec(sample_dpmpp_2m, "logsnr", (), 1, "DPM-Solver++(2M), data prediction (Lu et al. 2022)"))
register(
    "dpmpp_3m",
    SamplerSpec(sample_dpmpp_3m, "logsnr", ("lower_order_final", "variant"), 1, "DPM-Solver++ 3rd-order multistep"),
)
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
register("euler", SamplerSpec(sample_euler, "logsnr", _CHURN, 1, "Euler on the PF-ODE (Karras et al. 2022)",
                             stochastic=lambda o: _positive(o.get("s_churn"))))
register("heun", SamplerSpec(sample_heun, "logsnr", _CHURN, 2, "Heun on the PF-ODE, 2*steps-1 calls (Karras et al. 2022)",
                            stochastic=lambda o: _positive(o.get("s_churn"))))


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
    spacing = spacing or spec.default_spacing
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return sampling_sigmas(proc, steps, spacing)


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
    proc: GaussianDiffusion,
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
    spacing: Optional[str] = None,
    timesteps: Optional[Tensor] = None,
    sigmas: Optional[Tensor] = None,
    clip_x0: Optional[float] = None,
    dynamic_threshold: Optional[float] = None,
    callback: Optional[Callable[[dict], None]] = None,
    null_cond: Optional[int] = None,
    precision: Optional[str] = None,
    channels_last: bool = False,
    compile=False,
    cuda_graph: Union[bool, str] = False,
    group_norm: Optional[str] = None,
    **options,
) -> Tensor:
    """Draw x0 ~ p_model by running ``sampler`` from x_T = ``noise`` for ``steps`` steps.

    ``spacing`` picks the timesteps (see :mod:`.timesteps`; default per sampler);
    ``timesteps`` (decreasing ints) or ``sigmas`` (decreasing VE noise levels) give them
    explicitly, and then ``steps`` is ignored. Sampler options go through ``**options``
    (e.g. ``variance="beta"`` for DDPM). ``callback`` receives a dict per step with the
    VP state ``x``, the estimate ``denoised``, the noise level ``sigma`` and the index ``i``.
    Returns x0 (unclamped).

    dtypes: ``noise`` must be a float tensor; it is cast to the dtype of the model's parameters
    (a model without parameters, e.g. an analytic one, runs in the noise's dtype), and noise drawn
    here is in that dtype (float32 for a function). Integer noise is refused. A model stored in
    bf16 or fp16 with ``precision`` set (``model.to(torch.bfloat16)``, ``precision="bf16"``:
    half the weights' memory, and no weight casts in each forward) computes under autocast while
    the sampler's state stays float32. ``device``: "auto",
    "cpu", "cuda", "cuda:<i>" or a torch.device that exists here (default: the model's device).

    Speed (same function, see :mod:`.fast`): ``precision="bf16"`` autocasts the network,
    ``channels_last=True`` runs it (and the sampler's state) in NHWC order, ``compile=True``
    torch.compiles it, ``cuda_graph=True`` replays each step's network call as one CUDA graph
    (``cuda_graph="loop"``: the whole run as one graph, captured once per run signature; not
    with a ``callback``, nor a ``generator`` for a sampler that draws noise as it runs),
    ``group_norm="triton"`` computes the U-Net's GroupNorms by difflab's Triton kernels
    ("compile": on the NHWC view under torch.compile). The compiled network and graphs are kept
    on the model for later calls.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    spec = SAMPLERS[sampler]
    if not isinstance(proc, GaussianDiffusion):
        raise TypeError(f"proc must be a dl.GaussianDiffusion, got {type(proc).__name__}")
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
            f"{', '.join(spec.options) or 'none'}"
        )
    if not callable(model):
        raise TypeError(f"model must be a callable model(x_t, t[, cond]), got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    state_dtype = _state_dtype(model, precision)
    if noise is not None:  # a float tensor in the model's dtype (see the docstring)
        noise = _float_input(noise, "noise", model, _NOISE_FIX, state_dtype)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    if device is not None:
        device = resolve_device(device, "device")
    else:
        device = model_device(model, noise)
    loop = _check_cuda_graph(cuda_graph, device, callback, generator, spec, options, sampler, compile)
    if group_norm == "triton" and not channels_last:
        raise ValueError("group_norm='triton' computes GroupNorm on channels_last activations; pass "
                         "channels_last=True with it (or choose group_norm=None)")
    net = fast_model(model, precision, channels_last, compile, bool(cuda_graph) and not loop, group_norm)
    sig = _sigmas(proc, spec, steps, spacing, sigmas, timesteps)
    if cond is not None:
        cond = check_labels(model, cond, shape[0], device)
    if noise is None:
        noise = randn(shape, generator, device, state_dtype or torch.float32)
    nhwc = channels_last and len(shape) == 4

    def run(x_T: Tensor, cond_: Optional[Tensor], generator_=None, callback_=None) -> Tensor:
        denoiser = Denoiser(net, proc, cond_, guidance, null_cond, clip_x0, dynamic_threshold)
        x = x_T * math.sqrt(1.0 + float(sig[0]) ** 2)  # VP x_T -> VE x = x_T / sqrt(abar_T)
        if nhwc:  # the whole state in NHWC: the network's output comes back in that order
            x = x.contiguous(memory_format=torch.channels_last)
        return spec.fn(denoiser, x, sig, generator=generator_, callback=callback_, **options)

    if loop:  # the whole run as one CUDA graph, captured once per run signature (kept on the model)
        x_T = noise.to(device)
        key = (sampler, tuple(sig.tolist()), tuple(sorted(options.items())), shape, noise.dtype, str(x_T.device),
               proc.prediction, proc.T, tuple(proc.alphas_cumprod.tolist()),  # what a noise level means
               repr(guidance), null_cond, repr(clip_x0), repr(dynamic_threshold),
               None if cond is None else (tuple(cond.shape), cond.dtype),
               precision, channels_last, repr(compile), group_norm)
        loops = loop_graphs(model)
        loops.check_weights(model)  # runs captured with weights since moved (or recast) are dropped
        with eval_mode(model):
            graph = loops.get(key)
            if graph is None:
                graph = loops[key] = fast_module.CapturedCall(run, (x_T, cond), warmup=1)
            x = graph(x_T, cond)
        if progress:
            from tqdm.auto import tqdm

            with tqdm(total=len(sig) - 1, desc=sampler, leave=False) as bar:
                bar.update(len(sig) - 1)
        return x.contiguous() if nhwc else x

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sig) - 1, desc=sampler, leave=False)

    def report(step: dict) -> None:
        if bar is not None:
            bar.update(1)
        if callback is not None:
            vp = dict(step, x=step["x"] / math.sqrt(1.0 + step["sigma"] ** 2))
            callback(vp)

    try:
        with eval_mode(model):
            x = run(noise.to(device), cond, generator, report)
    finally:
        if bar is not None:
            bar.close()
    return x.contiguous() if nhwc else x


def _state_dtype(model: Callable, precision: Optional[str]) -> Optional[torch.dtype]:
    """The dtype of the sampler's state x: the model's, except float32 for a half-precision model
    under autocast (``precision`` set), whose updates would otherwise round to 8 or 11 bits each
    step. None for a model without parameters (it runs in the noise's dtype)."""
    dtype = model_dtype(model)
    if dtype in (torch.float16, torch.bfloat16) and precision in ("bf16", "fp16"):
        return torch.float32
    return dtype


def _check_cuda_graph(cuda_graph, device, callback, generator, spec: SamplerSpec, options: dict,
                      sampler: str, compile=False) -> bool:
    """Whether the run is captured whole (``cuda_graph="loop"``); refuses what cannot be."""
    if cuda_graph not in (False, True, "loop"):
        raise ValueError(f"cuda_graph must be False, True (each network call captured) or 'loop' (the whole "
                         f"run captured), got {cuda_graph!r}")
    if cuda_graph and not graphs_supported(device):
        raise ValueError(f"cuda_graph={cuda_graph!r} needs a CUDA device, got device {device}; use cuda_graph=False")
    if cuda_graph != "loop":
        return False
    if callback is not None:
        raise ValueError("cuda_graph='loop' replays the whole run without running Python, so it cannot call a "
                         "callback at each step; use cuda_graph=True with a callback")
    fast_module.check_compile_under_capture(compile)
    if generator is not None and spec.stochastic(options):
        raise ValueError(f"cuda_graph='loop': sampler {sampler!r} with these options draws noise as it runs, and a "
                         "captured run draws it from the device's default generator, not from a torch.Generator; "
                         "seed with torch.manual_seed instead, or use cuda_graph=True")
    return True


def invert(
    model: Callable,
    proc: GaussianDiffusion,
    x0: Tensor,
    steps: int = 50,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    *,
    spacing: str = "trailing",
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
    x0 = _float_input(x0, "x0", model, _X0_FIX)  # cast to the model's dtype, as in sample
    sig = sampling_sigmas(proc, steps, spacing)[:-1].flip(0)  # increasing, without the final 0
    if cond is not None:
        cond = check_labels(model, cond, x0.shape[0], x0.device)
    denoiser = Denoiser(model, proc, cond, guidance)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sig), desc="invert", leave=False)
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
