"""The run's configuration: nested dataclasses that describe a training run completely.

A config is written beside every checkpoint (``config.yaml``), so a checkpoint can be loaded,
sampled from and resumed without the file it came from. Read one with :func:`load_config`
(YAML or JSON), change fields with :func:`apply_overrides` (``"optim.lr=1e-4"``), and check it
with :meth:`TrainConfig.validate`, whose errors name the field, the value and what is allowed.

    model:     {name: unet_mnist, kwargs: {num_classes: 10}}
    diffusion: {process: ddpm, schedule: linear, T: 1000, prediction: eps}
    data:      {name: mnist, kwargs: {root: ../shared/data/mnist, split: t10k}}
    optim:     {lr: 2.0e-4, warmup_steps: 500, grad_clip: 1.0}
    ema:       {decay: 0.999, warmup: 10}
    sample:    {every: 1000, sampler: ddim, steps: 50, guidance: 3.0}
    batch_size: 128        # global: images per optimizer step, over all processes
    steps: 10000
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .. import models, schedules
from ..accel import GROUP_NORM_MODES, check_group_norm_mode
from ..processes import PREDICTION_TYPES, PROCESSES, Process, check_weighting
from ..files import atomic_write_text
from ..samplers import SAMPLERS
from ..samplers.timesteps import DISCRETE_SPACINGS
from .autoencoder_config import AutoencoderConfig, fail_field as _fail
from .latent_config import LatentConfig
from .data import dataset_names
from .distill import TEACHER_SOLVERS
from .loss import loss_names
from .sharding import SHARDING_MODES

__all__ = [
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "OptimConfig",
    "EMAConfig",
    "SampleConfig",
    "ConsistencyConfig",
    "VLBConfig",
    "DistillConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_diff",
    "default_prediction",
    "RESUMABLE_FIELDS",
]

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; configs mean the number (as YAML 1.2 does). A key
    given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice ("
                        f"{f'lines {seen[key]} and {line}' if seen[key] != line else f'both on line {line}'}); a config "
                        "names each field once: delete one", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _parse_error(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where (line and column of the text)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{context + ': ' if context else ''}{problem}{where}".split())


PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "model", "step")
_COMPILE_OPTION_TYPES = {  # torch.compile's keywords, the types a config may give them
    "mode": (str, "a torch.compile mode, e.g. default, reduce-overhead, max-autotune"),
    "backend": (str, "a torch.compile backend name, e.g. inductor, aot_eager"),
    "fullgraph": (bool, "true or false"),
    "dynamic": ((bool, type(None)), "true, false or null"),
    "options": (dict, "a mapping of Inductor options"),
}
COMPILE_OPTIONS = tuple(_COMPILE_OPTION_TYPES)
# Fields that hold a free mapping (keys are not config fields): kept whole, overridable per key.
MAPPING_FIELDS = ("kwargs", "schedule_kwargs", "process_kwargs", "compile_options")
LR_DECAYS = ("constant", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda")


def _number(name: str, value: Any, *, integer: bool = False, low=None, high=None,
            low_open: bool = False, high_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        _fail(name, value, f"must be {kind}")
    if value != value:  # NaN
        _fail(name, value, f"must be {kind}, not NaN")
    bounds = []  # both bounds in the message, whichever is broken
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        _fail(name, value, f"must be {kind} {' and '.join(bounds)}")


def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        _fail(name, value, f"choose one of {', '.join(map(str, choices))}")


def _kind(name: str, value: Any, types, what: str) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(name, value, f"must be {what}")
    if not isinstance(value, types):
        _fail(name, value, f"must be {what}")


@dataclass
class ModelConfig:
    """A network from the registry: ``dl.models.build(name, **kwargs)``; ``num_classes`` in
    kwargs makes it class-conditional."""

    name: str = "mlp"
    kwargs: dict = field(default_factory=dict)

    def validate(self, prefix: str = "model") -> None:
        _kind(f"{prefix}.name", self.name, str, "a model name (a string)")
        _choice(f"{prefix}.name", self.name, models.names())
        _kind(f"{prefix}.kwargs", self.kwargs, dict, "a mapping of keyword arguments")
        nc = self.kwargs.get("num_classes")
        if nc is not None:
            _number(f"{prefix}.kwargs.num_classes", nc, integer=True, low=1)


def default_prediction(process: str) -> str:
    """What a process's network predicts unless the config says otherwise: the default of its
    constructor's ``prediction`` (eps for ddpm, vp and ve; x0 for edm; velocity for flow)."""
    return inspect.signature(PROCESSES[process]).parameters["prediction"].default


# The fields of DiffusionConfig that describe the DDPM chain's noise schedule, and their defaults:
# another process has no schedule, so a value other than the default would be silently unused.
_SCHEDULE_FIELDS = {"schedule": "linear", "T": 1000, "schedule_kwargs": {}}
# Constructor arguments that come from other config fields, not from process_kwargs.
_FROM_OTHER_FIELDS = {"prediction": "diffusion.prediction", "clip_x0": "sample.clip_x0"}


@dataclass
class DiffusionConfig:
    """The process (``difflab.processes.PROCESSES``), what its network predicts and the loss weighting.

    ``process``: "ddpm" (the discrete chain ``GaussianDiffusion(schedules.get(schedule, T,
    **schedule_kwargs))``; ``schedule``, ``T`` and ``schedule_kwargs`` apply to it only), "vp" or
    "ve" (the score SDEs), "edm" (its network wrapped in ``models.EDMPrecond``) or "flow" (flow
    matching). ``process_kwargs``: the keyword arguments of the process's constructor, e.g.
    ``{sigma_data: 0.5}`` for edm, ``{coupling: ot, time_sampling: logit_normal}`` for flow.
    ``prediction``: what the network outputs; null = the process's own (eps for ddpm, vp and ve,
    x0 for edm, velocity for flow). ``weighting``: null (the process's own loss: L_simple, or EDM's
    lambda(sigma)), 'uniform', 'min_snr' or 'min_snr_<gamma>'."""

    process: str = "ddpm"
    process_kwargs: dict = field(default_factory=dict)
    schedule: str = "linear"
    T: int = 1000
    schedule_kwargs: dict = field(default_factory=dict)
    prediction: Optional[str] = None
    weighting: Optional[str] = None

    @property
    def resolved_prediction(self) -> str:
        """``prediction``, or where it is null the process's default (:func:`default_prediction`)."""
        return self.prediction if self.prediction is not None else default_prediction(self.process)

    def validate(self, prefix: str = "diffusion") -> None:
        _kind(f"{prefix}.process", self.process, str, "a process name (a string)")
        _choice(f"{prefix}.process", self.process, tuple(PROCESSES))
        _kind(f"{prefix}.process_kwargs", self.process_kwargs, dict, "a mapping of keyword arguments")
        _kind(f"{prefix}.schedule", self.schedule, str, "a schedule name (a string)")
        _choice(f"{prefix}.schedule", self.schedule, schedules.names())
        _number(f"{prefix}.T", self.T, integer=True, low=2)
        _kind(f"{prefix}.schedule_kwargs", self.schedule_kwargs, dict, "a mapping of keyword arguments")
        if self.prediction is not None:
            allowed = PROCESSES[self.process].predictions
            if self.prediction not in allowed:
                _fail(f"{prefix}.prediction", self.prediction,
                      f"process {self.process!r} trains one of {', '.join(allowed)} (null: its default, "
                      f"{default_prediction(self.process)})")
        if self.weighting is not None:
            _kind(f"{prefix}.weighting", self.weighting, str, "null, 'uniform', 'min_snr' or 'min_snr_<gamma>'")
            if not (self.weighting == "uniform" or self.weighting.startswith("min_snr")):
                _fail(f"{prefix}.weighting", self.weighting, "use null, 'uniform', 'min_snr' or 'min_snr_<gamma>'")
            try:
                check_weighting(self.weighting)
            except ValueError as err:
                raise ValueError(f"config field '{prefix}.weighting': {err}") from None
        if self.process == "ddpm":
            if self.process_kwargs:
                _fail(f"{prefix}.process_kwargs", self.process_kwargs,
                      "process 'ddpm' takes its options as diffusion.schedule, T and schedule_kwargs: leave "
                      "process_kwargs empty")
        else:
            for name, default in _SCHEDULE_FIELDS.items():
                if getattr(self, name) != default:
                    _fail(f"{prefix}.{name}", getattr(self, name),
                          f"the noise schedule applies to process 'ddpm' only, and this config's process is "
                          f"{self.process!r}: remove the field (default {default!r}) and give the process's "
                          f"options in {prefix}.process_kwargs")
            self.build_process(prefix=prefix)  # its constructor checks its options

    def build_process(self, clip_x0: Optional[float] = None, prefix: str = "diffusion") -> Process:
        """The process this section describes, clipping its samplers' x0 estimates to ``clip_x0``
        (the data's range; ``training.build.build_process`` gives the run's). A constructor that
        rejects ``process_kwargs`` raises ValueError naming the field, with its message."""
        if self.process == "ddpm":
            try:
                schedule = schedules.get(self.schedule, self.T, **self.schedule_kwargs)
            except TypeError as err:
                raise TypeError(f"config field {prefix}.schedule_kwargs: {err}") from None
            return PROCESSES["ddpm"](schedule, prediction=self.resolved_prediction, clip_x0=clip_x0)
        kwargs = self.process_kwargs
        for key, field_name in _FROM_OTHER_FIELDS.items():
            if key in kwargs:
                _fail(f"{prefix}.process_kwargs", kwargs, f"{key} is set by the config field {field_name}: "
                      "move it there")
        cls = PROCESSES[self.process]
        try:
            return cls(**kwargs, prediction=self.resolved_prediction, clip_x0=clip_x0)
        except (TypeError, ValueError) as err:
            options = [k for k in inspect.signature(cls).parameters if k not in _FROM_OTHER_FIELDS]
            raise ValueError(f"config field '{prefix}.process_kwargs': process {self.process!r} ({cls.__name__}) "
                             f"cannot be built from {kwargs!r}: {err} (its options: {', '.join(options)})") from None


@dataclass
class DataConfig:
    """An in-memory dataset: ``dl.data.load(name, **kwargs)`` (images in [-1, 1], labels or None),
    or ``name: toy2d`` with kwargs ``{dataset: swiss_roll, n: 10000}``.

    ``flatten`` feeds images to flat-input networks (an MLP) as vectors [N, C*H*W]; sample grids
    are shaped back. ``on_device`` keeps the whole tensor on the training device and indexes it
    there (no loader, no host-device copies per step) -- right for MNIST-sized data.
    """

    name: str = "digits"
    kwargs: dict = field(default_factory=dict)
    flatten: bool = False
    on_device: bool = True

    def validate(self, prefix: str = "data") -> None:
        _kind(f"{prefix}.name", self.name, str, "a dataset name (a string)")
        _choice(f"{prefix}.name", self.name, dataset_names())
        _kind(f"{prefix}.kwargs", self.kwargs, dict, "a mapping of keyword arguments")
        _kind(f"{prefix}.flatten", self.flatten, bool, "true or false")
        _kind(f"{prefix}.on_device", self.on_device, bool, "true or false")


@dataclass
class OptimConfig:
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up over ``warmup_steps``, then
    ``decay``: constant, cosine or linear to 0 at the last step; gradients clipped to a global
    L2 norm of ``grad_clip`` (0 = no clipping). ``fused``: 'auto' uses the fused CUDA kernel on
    a GPU and the foreach implementation elsewhere."""

    lr: float = 2e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay: str = "constant"
    grad_clip: float = 1.0
    fused: Union[str, bool] = "auto"

    def validate(self, prefix: str = "optim") -> None:
        _number(f"{prefix}.lr", self.lr, low=0, low_open=True)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            _fail(f"{prefix}.betas", self.betas, "must be a pair [beta1, beta2]")
        for i, b in enumerate(self.betas):
            _number(f"{prefix}.betas[{i}]", b, low=0, high=1, high_open=True)
        _number(f"{prefix}.eps", self.eps, low=0, low_open=True)
        _number(f"{prefix}.weight_decay", self.weight_decay, low=0)
        _number(f"{prefix}.warmup_steps", self.warmup_steps, integer=True, low=0)
        _choice(f"{prefix}.decay", self.decay, LR_DECAYS)
        _number(f"{prefix}.grad_clip", self.grad_clip, low=0)
        if not (self.fused == "auto" or isinstance(self.fused, bool)):  # (1 == True: a bool, not a number)
            _fail(f"{prefix}.fused", self.fused, "choose one of auto, true, false")


@dataclass
class EMAConfig:
    """EMA of the weights (``difflab.training.EMA``): decay d, warm-up (1 + k) / (warmup + k).
    ``decay: 0`` turns averaging off: samples use the trained weights and no copy is kept."""

    decay: float = 0.999
    warmup: int = 10

    def validate(self, prefix: str = "ema") -> None:
        _number(f"{prefix}.decay", self.decay, low=0, high=1, high_open=True)
        _number(f"{prefix}.warmup", self.warmup, integer=True, low=0)


@dataclass
class SampleConfig:
    """Sample grids written during training (EMA weights, fixed seed): every ``every`` steps
    (0 = only at the end, -1 = never). Conditional models: a row of ``per_class`` samples per
    class at guidance ``guidance``; text models: a row of ``per_class`` samples for each of the
    first ``n // per_class`` distinct training captions; unconditional: ``n`` samples. ``clip_x0`` clamps each
    step's estimate of x0 to [-c, c] (1 for images in [-1, 1], as in DDPM's sampler); it is also
    the default of ``dl.load(...).sample``."""

    every: int = 0
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 1.0
    per_class: int = 8
    n: int = 64
    seed: int = 0
    clip_x0: Optional[float] = None

    def validate(self, prefix: str = "sample") -> None:
        _number(f"{prefix}.every", self.every, integer=True, low=-1)
        _kind(f"{prefix}.sampler", self.sampler, str, "a sampler name")
        _choice(f"{prefix}.sampler", self.sampler, sorted(SAMPLERS))
        _number(f"{prefix}.steps", self.steps, integer=True, low=1)
        _number(f"{prefix}.guidance", self.guidance, low=0)
        _number(f"{prefix}.per_class", self.per_class, integer=True, low=1)
        _number(f"{prefix}.n", self.n, integer=True, low=1)
        _number(f"{prefix}.seed", self.seed, integer=True, low=0)
        if self.clip_x0 is not None:
            _number(f"{prefix}.clip_x0", self.clip_x0, low=0, low_open=True)


DISTILL_METHODS = ("progressive", "consistency", "guided")
VLB_LOSSES = ("hybrid", "vlb")  # the losses of a network that learns its variance (training/hybrid.py)
TIMESTEP_SAMPLERS = ("uniform", "loss_aware")  # how those losses draw t


@dataclass
class ConsistencyConfig:
    """A consistency model's settings, used when the run trains one: ``loss: consistency``
    (consistency training from scratch, Song & Dhariwal 2023) or ``difflab distill --method
    consistency|guided``. The network is then wrapped in ``models.ConsistencyModel`` (f(x, sigma_min)
    = x; ``boundary`` the boundary region's width sigma_b: Song et al.'s 0.5 from scratch, a student
    takes sigma_min; ``net_prediction`` what the wrapped network outputs, null = diffusion.prediction).

    Discretisation curriculum (improved consistency training, sec. 3.4): N(k) = min(s0 2^floor(k / K'), s1)
    intervals at step k of K, K' = floor(K / (log2 floor(s1 / s0) + 1)); s0 = s1 keeps N fixed.
    ``huber_c``: the pseudo-Huber loss's c (null: 0.00054 sqrt(d), d the data's dimension; 0: the
    squared L2 distance). Distillation only: ``solver``, the teacher's ODE step (euler = DDIM,
    dpm_solver = DPM-Solver++(2S), or heun: training.distill.teacher_step); ``guidance``: [w_min,
    w_max], the range guided distillation draws the scale from."""

    boundary: float = 0.5
    s0: int = 10
    s1: int = 1280
    huber_c: Optional[float] = None
    solver: str = "dpm_solver"
    guidance: list = field(default_factory=lambda: [1.0, 3.0])
    net_prediction: Optional[str] = None

    def validate(self, prefix: str = "consistency") -> None:
        _number(f"{prefix}.boundary", self.boundary, low=0, low_open=True)
        _number(f"{prefix}.s0", self.s0, integer=True, low=1)
        _number(f"{prefix}.s1", self.s1, integer=True, low=1)
        if self.s1 < self.s0:
            _fail(f"{prefix}.s1", self.s1, f"the discretisation grows from s0 = {self.s0} to s1: s1 >= s0")
        if self.huber_c is not None:
            _number(f"{prefix}.huber_c", self.huber_c, low=0)
        _choice(f"{prefix}.solver", self.solver, TEACHER_SOLVERS)
        if not isinstance(self.guidance, (list, tuple)) or len(self.guidance) != 2:
            _fail(f"{prefix}.guidance", self.guidance, "a pair [w_min, w_max] of guidance scales, e.g. [1.0, 3.0]")
        for i, w in enumerate(self.guidance):
            _number(f"{prefix}.guidance[{i}]", w, low=0)
        if self.guidance[1] < self.guidance[0]:
            _fail(f"{prefix}.guidance", self.guidance, "[w_min, w_max] with w_min <= w_max")
        if self.net_prediction is not None:
            _choice(f"{prefix}.net_prediction", self.net_prediction, PREDICTION_TYPES)


@dataclass
class VLBConfig:
    """The variational-bound losses of improved DDPM (Nichol & Dhariwal 2021), used by ``loss: hybrid``
    (L_simple + ``weight`` L_vlb: the paper's lambda = 0.001) and ``loss: vlb`` (L_vlb alone);
    both need a network that learns its variance (``model.kwargs.learn_sigma: true``).
    ``timestep_sampler``: uniform, or loss_aware (p_t ~ sqrt(E[L_t^2]) over the last ``history``
    values of each term, mixed with ``uniform_prob`` of the uniform); null: uniform for hybrid,
    loss_aware for vlb, as in the paper. ``bins``: the levels of the data in [-1, 1] for the
    decoder term L_0 (256 for 8-bit images; 17 for scikit-learn's digits, as ``difflab eval``)."""

    weight: float = 0.001
    timestep_sampler: Optional[str] = None
    history: int = 10
    uniform_prob: float = 0.001
    bins: int = 256

    def validate(self, prefix: str = "vlb") -> None:
        _number(f"{prefix}.weight", self.weight, low=0, low_open=True)
        if self.timestep_sampler is not None:
            _choice(f"{prefix}.timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        _number(f"{prefix}.history", self.history, integer=True, low=1)
        _number(f"{prefix}.uniform_prob", self.uniform_prob, low=0, high=1)
        _number(f"{prefix}.bins", self.bins, integer=True, low=2)

    def sampler_for(self, loss: str) -> str:
        """The timestep sampler of ``loss``: the one named, else the paper's (uniform for hybrid,
        loss_aware for vlb)."""
        return self.timestep_sampler or ("loss_aware" if loss == "vlb" else "uniform")


@dataclass
class DistillConfig:
    """What a distilled student was made from (``difflab distill`` writes it; null in other runs):
    ``method`` (progressive, consistency or guided), the ``teacher`` run and its ``teacher_step``,
    and for a progressive student ``sigmas``: the noise levels (decreasing, ending at 0) it was
    distilled to sample on, which ``dl.sample`` then uses and holds it to. ``reparam_steps``: the
    first steps train the student's x0 estimate to its teacher's (``training.distill.TeacherDenoiserLoss``;
    set where the student's network predicts v and the teacher's eps)."""

    method: Optional[str] = None
    teacher: Optional[str] = None
    teacher_step: Optional[int] = None
    sigmas: Optional[list] = None
    reparam_steps: int = 0

    def validate(self, prefix: str = "distill") -> None:
        if self.method is not None:
            _choice(f"{prefix}.method", self.method, DISTILL_METHODS)
        if self.teacher is not None:
            _kind(f"{prefix}.teacher", self.teacher, str, "the teacher's run folder (a string)")
        if self.teacher_step is not None:
            _number(f"{prefix}.teacher_step", self.teacher_step, integer=True, low=0)
        _number(f"{prefix}.reparam_steps", self.reparam_steps, integer=True, low=0)
        if self.sigmas is not None:
            if self.method != "progressive":
                _fail(f"{prefix}.sigmas", self.sigmas, "the noise levels of a progressive student: set method: "
                      "progressive, or remove the field")
            if not isinstance(self.sigmas, (list, tuple)) or len(self.sigmas) < 2:
                _fail(f"{prefix}.sigmas", self.sigmas, "a list of at least 2 noise levels ending at 0")
            for i, v in enumerate(self.sigmas):
                _number(f"{prefix}.sigmas[{i}]", v, low=0)
            if any(b >= a for a, b in zip(self.sigmas, self.sigmas[1:])) or self.sigmas[-1] != 0:
                _fail(f"{prefix}.sigmas", self.sigmas, "strictly decreasing noise levels ending at 0")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``batch_size`` is global: the images per
    optimizer step summed over ``grad_accum`` micro-batches and all processes, so a run on K
    GPUs takes the same steps as one process. ``cond_drop_prob`` is the label dropout of
    classifier-free guidance (only used when the model is class-conditional). ``loss`` names
    what is minimised (``training.loss.loss_names()``: "diffusion", "superres", ...).

    Performance options (defaults suit a laptop CPU; see configs/mnist_cond.yaml for a GPU):
    ``precision`` bf16/fp16 autocast, ``compile`` 'model' (torch.compile the network) or 'step'
    (compile the whole loss computation) -- both CUDA-only: a CPU run notes them and runs fp32,
    eagerly, so a GPU config also runs (small) on a laptop; ``compile_options`` are
    torch.compile's keywords (mode, backend, fullgraph, dynamic, options), and a CPU run that
    sets them compiles too (a deliberate choice, e.g. backend "aot_eager" to check for graph
    breaks); ``activation_memory_budget`` (with compile: the fraction, in (0, 1], of the
    activations a compiled forward keeps for the backward, the rest recomputed there -- torch's
    min-cut partitioner, ``torch._functorch.config.activation_memory_budget``; null = torch's
    default, 1: keep whatever is not cheaper to recompute) -- ``cuda_graph`` (CUDA, one process
    -- a torchrun run notes it and steps eagerly --, not fp16: the whole step -- forward,
    backward, clipping, AdamW, EMA -- captured once and replayed, training/step_graph.py),
    ``group_norm`` (how
    the U-Net's GroupNorms compute channels_last activations, a module swap of
    ``difflab.accel.set_group_norm``: null or "never" = torch's kernel, "compile" = on the NHWC
    view under torch.compile, "always", or "triton" = difflab's Triton kernels for the sample
    grids and "compile" for the training steps), and ``channels_last`` memory
    format, ``optim.fused``, ``data.on_device``; ``cpu_threads`` (CPU runs: torch's intra-op
    threads; 0 = chosen by the work, ``difflab.devices.choose_cpu_threads``: one thread for a
    step under 2 GFLOP, where threads that wait for each other cost more than they compute,
    else torch's default; ``difflab train`` prints the choice, ``--threads`` sets it).

    ``max_time``: a wall-clock budget in seconds for the whole run, resumes included (null = none,
    the default). When it is spent the trainer writes a checkpoint and stops early, as after the
    last step; it is checked every ``log_every`` steps, so a run may overshoot by one log window.
    The learning-rate schedule still runs to ``steps``: the budget is a safety net (a shared
    machine, a job limit), not a way to size a run. Resume with a larger ``max_time`` to go on.

    Memory for networks that outgrow one GPU (training/sharding.py, docs/sharding.md):
    ``sharding``: "none" (each process holds the whole model; DDP under torchrun) or "fsdp"
    (fully sharded data parallel, torch's FSDP2 ``fully_shard``: under torchrun each of K
    processes keeps 1/K of every parameter, gradient and AdamW moment, and of the EMA copy; a
    block's parameters are all-gathered for its forward and backward). Same training as one
    process with the same global batch, up to summation order. Checkpoints of an fsdp run keep the
    sharded state in their ``dcp/`` folder (torch.distributed.checkpoint) beside the whole weights
    (``model.safetensors``, ``ema.safetensors``: ``dl.load`` as ever) and resume on any number of
    processes. A one-process run has nothing to shard: it trains unsharded (noted) and writes the
    same checkpoints. Not with ``cuda_graph`` (FSDP's all-gathers run from host hooks and
    allocate per block: no step to capture) nor ``precision: fp16`` (the loss scaler's skipped
    steps need a verdict on every process's shards: use bf16, which needs no scaling).
    ``activation_checkpointing``: recompute each block's activations in the backward instead of
    keeping them (less activation memory for about one more forward per step; the same
    gradients; with or without sharding); not with ``cuda_graph`` (the recomputation restores the
    generator states on the host, which a replayed step would not).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    vlb: VLBConfig = field(default_factory=VLBConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # loss: autoencoder's terms
    latent: LatentConfig = field(default_factory=LatentConfig)  # latent diffusion: the autoencoder's run
    loss: str = "diffusion"
    batch_size: int = 128
    grad_accum: int = 1
    steps: int = 1000
    cond_drop_prob: float = 0.1
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 2
    channels_last: bool = False
    compile: str = "none"
    compile_options: dict = field(default_factory=dict)
    activation_memory_budget: Optional[float] = None
    cuda_graph: bool = False
    group_norm: Optional[str] = None
    cpu_threads: int = 0
    tensorboard: Union[str, bool] = "auto"
    max_time: Optional[float] = None
    sharding: str = "none"
    activation_checkpointing: bool = False

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field, its value and what is allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        _kind("loss", self.loss, str, "a loss name (a string)")
        _choice("loss", self.loss, loss_names())
        _number("batch_size", self.batch_size, integer=True, low=1)
        _number("grad_accum", self.grad_accum, integer=True, low=1)
        if self.batch_size % self.grad_accum:
            _fail("batch_size", self.batch_size,
                  f"must be divisible by grad_accum = {self.grad_accum} (it is the global batch)")
        _number("steps", self.steps, integer=True, low=1)
        _number("cond_drop_prob", self.cond_drop_prob, low=0, high=1, high_open=True)
        _choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or not (self.device in DEVICES or self.device.startswith("cuda:")):
            _fail("device", self.device, "choose one of auto, cpu, cuda, cuda:<index>")
        _number("seed", self.seed, integer=True, low=0)
        _number("log_every", self.log_every, integer=True, low=1)
        _number("ckpt_every", self.ckpt_every, integer=True, low=1)
        _number("keep_last", self.keep_last, integer=True, low=1)
        _kind("channels_last", self.channels_last, bool, "true or false")
        _choice("compile", self.compile, COMPILE_MODES)
        if self.group_norm is not None:
            _choice("group_norm", self.group_norm, GROUP_NORM_MODES)
            try:
                check_group_norm_mode(self.group_norm)
            except ValueError as e:
                _fail("group_norm", self.group_norm, str(e))
        _kind("compile_options", self.compile_options, dict, "a mapping of torch.compile keywords")
        unknown = sorted(set(self.compile_options) - set(COMPILE_OPTIONS))
        if unknown:
            _fail("compile_options", self.compile_options,
                  f"unknown key(s) {', '.join(map(str, unknown))}; choose from {', '.join(COMPILE_OPTIONS)}")
        for key, (types, what) in _COMPILE_OPTION_TYPES.items():
            if key in self.compile_options:
                _kind(f"compile_options.{key}", self.compile_options[key], types, what)
        if self.compile_options.get("mode") is not None and self.compile_options.get("options"):
            _fail("compile_options", self.compile_options, "torch.compile takes mode or options, not both: "
                  "keep mode, or move its settings into options")
        if self.activation_memory_budget is not None:
            _number("activation_memory_budget", self.activation_memory_budget, low=0, high=1, low_open=True)
        _kind("cuda_graph", self.cuda_graph, bool, "true or false")
        if self.cuda_graph and self.precision == "fp16":
            _fail("cuda_graph", self.cuda_graph, "cannot capture fp16 training: its loss scaling reads a "
                  "found-inf flag on the host every step; use precision bf16 (no scaling) or cuda_graph: false")
        if self.cuda_graph and self.compile_options.get("mode") in ("reduce-overhead", "max-autotune"):
            _fail("cuda_graph", self.cuda_graph,
                  f"compile_options.mode {self.compile_options['mode']!r} replays CUDA graphs itself; "
                  "with cuda_graph: true use mode default or max-autotune-no-cudagraphs")
        if self.cuda_graph and self.diffusion.process_kwargs.get("coupling") == "ot":
            _fail("cuda_graph", self.cuda_graph, "cannot capture a step with diffusion.process_kwargs.coupling "
                  "'ot': the optimal-transport pairing is solved on the CPU every step; use cuda_graph: false "
                  "or coupling 'independent'")
        if self.diffusion.process == "edm" and self.model.name == "superres":
            _fail("diffusion.process", self.diffusion.process, "EDM's preconditioning (models.EDMPrecond) does not "
                  "pass a super-resolution model its low-resolution images; train model 'superres' under another "
                  "process (ddpm, vp, ve or flow)")
        if self.distill.reparam_steps and self.distill.reparam_steps >= self.steps:
            _fail("distill.reparam_steps", self.distill.reparam_steps,
                  f"the student's first {self.distill.reparam_steps} steps learn its teacher's denoiser, and the run has "
                  f"only steps = {self.steps}: train longer (--steps), or lower distill.reparam_steps (--set)")
        if self.consistency_model:
            if self.diffusion.resolved_prediction != "x0":
                _fail("diffusion.prediction", self.diffusion.prediction,
                      "a consistency model's process predicts x0 (f itself; its network keeps its own type: "
                      "consistency.net_prediction): set diffusion.prediction: x0")
            if self.cuda_graph or self.compile == "step":
                _fail("cuda_graph" if self.cuda_graph else "compile", self.cuda_graph or self.compile,
                      "a consistency model's loss reads its noise levels and curriculum on the host every step, "
                      "which a captured step would freeze: use cuda_graph: false and compile: none or model")
        if self.loss in VLB_LOSSES:
            if self.diffusion.process != "ddpm":
                _fail("loss", self.loss, "the variational bound trains the variance of the discrete DDPM chain: set "
                      "diffusion.process: ddpm")
            if self.data.name == "toy2d":
                _fail("loss", self.loss, "the variational bound's decoder is a discretized Gaussian over the 256 "
                      "levels of image data in [-1, 1]; data set 'toy2d' is continuous: use loss: diffusion")
            if self.model.kwargs.get("learn_sigma") is not True:
                _fail("loss", self.loss, f"loss {self.loss!r} trains a network that learns its variance: set "
                      "model.kwargs.learn_sigma: true")
            if self.diffusion.weighting not in (None, "uniform"):
                _fail("diffusion.weighting", self.diffusion.weighting, f"loss {self.loss!r} weights its terms itself "
                      "(L_simple + lambda L_vlb); drop diffusion.weighting")
            sampler = self.vlb.sampler_for(self.loss)
            if sampler == "loss_aware" and (self.cuda_graph or self.compile == "step"):
                _fail("vlb.timestep_sampler", sampler, "the loss-aware sampler reads its terms on the host every "
                      "step, which a captured step would freeze: use cuda_graph: false and compile: none or model, "
                      "or vlb.timestep_sampler: uniform")
        elif self.model.kwargs.get("learn_sigma"):
            _fail("model.kwargs.learn_sigma", True, f"loss {self.loss!r} trains no variance, so the network's "
                  "variance output would stay untrained: use loss: hybrid (improved DDPM) or drop learn_sigma")
        self._check_memory_options()
        _number("cpu_threads", self.cpu_threads, integer=True, low=0)
        if self.max_time is not None:
            _number("max_time", self.max_time, low=0, low_open=True)
        if not (self.tensorboard == "auto" or isinstance(self.tensorboard, bool)):
            _fail("tensorboard", self.tensorboard, "choose one of auto, true, false")
        self._check_sample_steps()
        return self

    def _check_memory_options(self) -> None:
        """``sharding`` and ``activation_checkpointing``, and the options they cannot run with."""
        _kind("sharding", self.sharding, str, f"one of {', '.join(SHARDING_MODES)}")
        _choice("sharding", self.sharding, SHARDING_MODES)
        _kind("activation_checkpointing", self.activation_checkpointing, bool, "true or false")
        if self.sharding == "fsdp" and self.cuda_graph:
            _fail("cuda_graph", self.cuda_graph, "cannot capture a sharded step (sharding: fsdp): FSDP all-gathers "
                  "each block's parameters from host-side hooks into buffers it allocates and frees per block; "
                  "use cuda_graph: false (compile: model still speeds up the blocks)")
        if self.sharding == "fsdp" and self.precision == "fp16":
            _fail("precision", self.precision, "fp16's loss scaling skips a step when any gradient is inf, and "
                  "with sharding: fsdp each process sees only its shards of them; use precision bf16 (no "
                  "scaling) or sharding: none")
        if self.activation_checkpointing and self.cuda_graph:
            _fail("activation_checkpointing", self.activation_checkpointing,
                  "cannot be captured with cuda_graph: the recomputation saves and restores the generator "
                  "states on the host (so dropout repeats its masks), which a replayed step would not; use "
                  "cuda_graph: false, or compile's activation_memory_budget to recompute inside a compiled step")

    def _check_sample_steps(self) -> None:
        """``sample.steps`` against ``diffusion.T``: a sampler whose default spacing lies on the
        training grid (leading/trailing/linspace, see samplers/timesteps.py) visits ``steps``
        distinct timesteps of 0 .. T-1, so it needs steps <= T; karras/logsnr spacings take any
        number of steps. Checked here, so a bad value stops the run before training, not after;
        a run that never samples (``sample.every: -1``) does not use the field. A continuous-time
        process has no grid: its samplers take their process's own spacing (``default_spacing``)."""
        if self.sample.every < 0 or self.diffusion.process != "ddpm":
            return
        spacing = SAMPLERS[self.sample.sampler].default_spacing
        if spacing in DISCRETE_SPACINGS and self.sample.steps > self.diffusion.T:
            _fail("sample.steps", self.sample.steps,
                  f"sampler {self.sample.sampler!r} ({spacing} spacing on the training grid) takes "
                  f"1 .. diffusion.T = {self.diffusion.T} steps; lower sample.steps, raise diffusion.T, "
                  "or use a sampler with continuous noise levels (dpmpp_2m, euler, heun)")

    @property
    def num_classes(self) -> Optional[int]:
        return self.model.kwargs.get("num_classes")

    @property
    def consistency_model(self) -> bool:
        """Whether the run trains a consistency model (its network wrapped in models.ConsistencyModel):
        consistency training (``loss: consistency``) or consistency / guided distillation."""
        return self.loss == "consistency" or self.distill.method in ("consistency", "guided")

    # ------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict, *, validate: bool = True) -> "TrainConfig":
        """Build from nested mappings; unknown keys are errors that list the known ones."""
        cfg = _from_dict(cls, d, "")
        return cfg.validate() if validate else cfg

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)


def _from_dict(cls, d: Any, prefix: str):
    where = prefix.rstrip(".") or "the config"
    if not isinstance(d, dict):
        raise ValueError(f"config field {where!r}: expected a mapping of fields, got {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(
            f"config: unknown field {prefix + unknown[0]!r}; the fields of {where} are: "
            f"{', '.join(known)}"
        )
    kwargs = {}
    for name, value in d.items():
        default = cls.__dataclass_fields__[name].default_factory  # type: ignore[attr-defined]
        sub = default() if default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _from_dict(type(sub), value if value is not None else {}, f"{prefix}{name}.")
        elif name in MAPPING_FIELDS:
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"config field {prefix + name!r}: expected a mapping, got {value!r}")
            kwargs[name] = dict(value or {})
        elif name == "betas" and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------- files
def load_config(path: Union[str, Path]) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or JSON (.json) config file and validate it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))[:5]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ValueError(
            f"config file {str(path)!r} is a directory{hint}; give a YAML or JSON config file, "
            "e.g. configs/digits.yaml (to continue a run in a folder: --resume --out FOLDER)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    return config_from_text(text, f"config file {str(path)!r}", json_text=path.suffix == ".json")


def save_config(cfg: TrainConfig, path: Union[str, Path]) -> None:
    """Write ``cfg`` as YAML (or JSON when the name ends in .json)."""
    path = Path(path)
    d = cfg.to_dict()
    text = json.dumps(d, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    atomic_write_text(path, text)


def config_to_text(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_text(text: str, source: Optional[str] = None, *, json_text: bool = False) -> TrainConfig:
    """The inverse of :func:`config_to_text` (validated). ``source`` names where the text comes
    from (e.g. "config file 'a.yaml'"): a YAML error, a key given twice, an empty text or one
    that is no mapping of fields raise ValueError naming it, and the config's own errors are
    prefixed with it."""
    where = source or "config text"
    if json_text:
        try:
            d = json.loads(text, object_pairs_hook=_unique_keys)
        except ValueError as err:  # JSONDecodeError, or a key given twice
            raise ValueError(f"cannot parse {where}: {err}") from None
    else:
        try:
            d = _yaml(text)
        except yaml.YAMLError as err:
            raise ValueError(f"cannot parse {where}: {_parse_error(err)}") from None
    if d is None or d == {}:
        raise ValueError(f"{where} is empty; a config needs at least model, data and diffusion "
                         "(see configs/digits.yaml)")
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds a {type(d).__name__}, not a mapping of config fields "
                         "(model:, data:, steps: ...; see configs/digits.yaml)")
    if source is None:
        return TrainConfig.from_dict(d)
    try:
        return TrainConfig.from_dict(d)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key {twice[0]!r} is given twice in one object; a config names each field once")
    return dict(pairs)


def field_overrides(**values) -> list[str]:
    """``"field=value"`` overrides (for :func:`apply_overrides`) of the given values that are not None."""
    return [f"{name}={value}" for name, value in values.items() if value is not None]


def apply_overrides(cfg: TrainConfig, overrides) -> TrainConfig:
    """Return a copy with ``"a.b=value"`` assignments applied (values parsed as YAML)."""
    d = cfg.to_dict()
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like field.path=value, e.g. optim.lr=1e-4")
        key, text = item.split("=", 1)
        try:
            value = _yaml(text)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: its value {text!r} is not valid YAML ({_parse_error(err)}); "
                             "quote the value for the shell, e.g. --set 'optim.betas=[0.9, 0.99]'") from None
        node, parts = d, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"override {item!r}: no config field {'.'.join(parts[:i + 1])!r}")
            if node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {'.'.join(parts[:-1])!r} is not a group of fields")
        is_kwargs = len(parts) >= 2 and parts[-2] in MAPPING_FIELDS
        if parts[-1] not in node and not is_kwargs:
            raise ValueError(f"override {item!r}: no config field {key!r}")
        node[parts[-1]] = value
    return TrainConfig.from_dict(d)


# ------------------------------------------------------------------- resuming
# Fields a resumed run may change: when and how it logs, samples and saves, how long it runs,
# and speed/memory options that leave the maths alone (grad_accum splits the same global batch,
# e.g. to resume on fewer GPUs). Everything else must match the checkpoint.
RESUMABLE_FIELDS = (
    "steps", "max_time", "log_every", "ckpt_every", "keep_last", "sample", "compile", "compile_options", "cuda_graph", "group_norm",
    "tensorboard", "cpu_threads", "device", "channels_last", "data.on_device", "grad_accum",
    "activation_memory_budget",  # what the backward recomputes, not what it computes
    "activation_checkpointing", "sharding",  # alike; and how the state is laid out over processes
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in MAPPING_FIELDS:
            out.update(_flatten(v, key + "."))
        elif isinstance(v, dict) and k in MAPPING_FIELDS:
            for kk, vv in v.items():
                out[f"{key}.{kk}"] = vv
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _meaning(cfg: TrainConfig) -> dict:
    """``cfg.to_dict()`` with ``diffusion.prediction`` resolved (null = the process's default), so a
    config that names the default (as every config saved before the field could be null does)
    equals one that leaves it out."""
    d = cfg.to_dict()
    if isinstance(d["diffusion"].get("process"), str) and d["diffusion"]["process"] in PROCESSES:
        d["diffusion"]["prediction"] = cfg.diffusion.resolved_prediction
    return d


def config_diff(saved: TrainConfig, new: TrainConfig, ignore=RESUMABLE_FIELDS) -> list[tuple[str, Any, Any]]:
    """The fields (dotted names) where ``new`` differs from ``saved`` in what they mean: (name,
    saved, new); a null ``diffusion.prediction`` counts as the process's default."""
    a, b = _flatten(_meaning(saved)), _flatten(_meaning(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in ignore):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append((key, a.get(key, "<unset>"), b.get(key, "<unset>")))
    return out
