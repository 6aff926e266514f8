"""Reflow: straighten a trained flow by training on its own (noise, sample) pairs.

Rectified flow (Liu et al. 2022, "Flow straight and fast", sec. 2.2-2.3). A flow v trained on
independent pairs (Z_0, Z_1) ~ data x N(0, I) moves noise to data along curved paths: its ODE
dZ_t/dt = v(Z_t, t), solved from Z_1 = noise at t = 1 to t = 0, crosses where the straight
interpolations of the independent pairs crossed. Its own pairs (ODE solution Z_0, noise Z_1)
are a deterministic coupling of the same two distributions with no such crossings, and the flow
matching the straight paths between them -- the 2-rectified flow -- is straighter, so fewer
steps integrate it (1-step samples become usable). Repeating gives the k-rectified flow.

    generate_pairs    noise Z_1 and the sample Z_0 = ODE(Z_1) of a trained flow
    ReflowLoss        the flow-matching loss with each sample's own noise, E_t ||v(x_t, t) - (Z_1 - Z_0)||^2,
                      x_t = (1 - t) Z_0 + t Z_1, for the trainer (``Trainer(data=(Z_0, labels), loss_fn=...)``)
    straightness      S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt along the flow's ODE (Liu et al., sec. 2.3)
    reflow            the whole step on a run folder: load the k-rectified flow, draw its pairs, train the
                      (k+1)-rectified flow from its weights (Liu et al. initialise from the previous flow)
                      into a new run folder, and measure both flows' straightness (``difflab reflow``)

In this library's time (:class:`~difflab.processes.FlowMatching`): x_t = (1 - t) x0 + t eps, t = 1
is noise, and the network's velocity is u = eps - x0 = dx_t/dt. The samplers run in the VE form
x = x_t / (1 - t) with sigma = t / (1 - t) on the denoised estimate D(x_t, t) ~ E[x0 | x_t]; the
velocity at a step follows from the state and D as u = (x_t - D) / t (from x_t = (1 - t) D + t eps_hat),
whatever the network's prediction type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..devices import count_flops, resolve_device, use_cpu_threads
from ..files import atomic_write, atomic_write_text
from ..processes import FlowMatching, Process, check_weighting
from ..samplers import sample as dl_sample
from ..validation import NOISE_FIX, check_finite, check_labels, float_input, is_int, is_real, positive_int
from .build import build_process
from .checkpoint import LoadedRun, latest_checkpoint, load, load_matching
from .config import apply_overrides
from .data import mix_seed
from .loss import TrainBatch
from .trainer import Trainer

__all__ = ["generate_pairs", "straightness", "ReflowLoss", "reflow", "PAIRS_FILE", "REFLOW_FILE"]

PAIRS_FILE = "pairs.safetensors"  # the pairs a reflow run trains on (noise, samples, labels), in its run folder
REFLOW_FILE = "reflow.json"  # what it was trained from, and both flows' straightness


def check_flow(proc: Process, what: str) -> FlowMatching:
    """``proc`` if it is a flow (FlowMatching), else a TypeError naming the process."""
    if not isinstance(proc, FlowMatching):
        raise TypeError(f"{what} needs a flow (a FlowMatching process, config diffusion.process: flow), "
                        f"got {proc!r}: reflow straightens the ODE paths of a flow-matching model")
    return proc


def _check_noise(noise: Tensor, model: Callable) -> Tensor:
    if not isinstance(noise, Tensor) or noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError(f"noise must be a float tensor [n, ...] of standard normal draws, got "
                         f"{getattr(noise, 'shape', type(noise).__name__)}; {NOISE_FIX}")
    noise = float_input(noise, "noise", model, NOISE_FIX)
    return check_finite(noise, "noise", NOISE_FIX)


def _chunks(n: int, batch_size: int) -> Sequence[slice]:
    return [slice(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]


@torch.no_grad()
def generate_pairs(
    model: Callable,
    proc: Process,
    n: int,
    shape: Sequence[int],
    *,
    sampler: str = "euler",
    steps: int = 100,
    cond=None,
    guidance: float = 1.0,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 500,
    device=None,
    **options,
) -> tuple[Tensor, Tensor]:
    """n pairs (Z_1, Z_0) of a trained flow: noise Z_1 ~ N(0, I) of shape [n, *shape] and the
    sample Z_0 its ODE gives, ``dl.sample(model, proc, ..., sampler, steps, noise=Z_1)``.

    The noise is drawn on the CPU from ``generator`` (float32; the same pairs on every device),
    the samples computed ``batch_size`` at a time on ``device`` (default: the model's) and
    returned on the CPU. ``cond``: None, one label or n labels of a class-conditional model; the
    pairs belong to those labels (train the next flow with the same labels, ``guidance`` as the
    pairs were drawn). ``options`` go to ``dl.sample`` (e.g. ``clip_x0``); the noise levels are
    the flow's own spacing, equal steps in t (Euler's method on dx/dt = v in t), unless ``spacing``,
    ``sigmas`` or ``timesteps`` say otherwise. Liu et al. solve the ODE accurately (RK45); Euler's
    default 100 steps is the cheap version.
    """
    check_flow(proc, "generate_pairs")
    n = positive_int("n (the number of pairs)", n)
    batch_size = positive_int("batch_size", batch_size)
    entries = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else ()
    if not entries or not all(is_int(s) and s >= 1 for s in entries):
        raise ValueError(f"shape must be one sample's shape (without the batch), e.g. (2,) or (1, 28, 28), "
                         f"got {shape!r}")
    cond = check_labels(model, cond, n)
    if not {"spacing", "sigmas", "timesteps"} & set(options):
        options["spacing"] = proc.default_spacing
    noise = torch.randn((n, *map(int, entries)), generator=generator, dtype=torch.float32)
    samples = torch.empty_like(noise)
    for part in _chunks(n, batch_size):
        x = dl_sample(model, proc, noise[part].shape, sampler, steps, cond=None if cond is None else cond[part],
                      guidance=guidance, noise=noise[part], device=device, **options)
        samples[part] = x.float().cpu()
    return noise, samples


@torch.no_grad()
def straightness(
    model: Callable,
    proc: Process,
    noise: Tensor,
    steps: int = 100,
    cond=None,
    guidance: float = 1.0,
    *,
    batch_size: int = 500,
    device=None,
    **options,
) -> float:
    """Liu et al. (2022)'s straightness of the flow's ODE paths from ``noise``,

        S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_t/dt ||^2 dt,

    0 exactly when every path is a straight line run at constant speed (then dZ_t/dt = Z_1 - Z_0).
    Estimated on the Euler solution with ``steps`` equal steps in t (the "uniform" spacing, from
    t_max to t_min, then to 0): with t_0 > t_1 > ... > t_N = 0, the velocity u_i = (x_i - D_i) / t_i
    at step i (state x_i, denoised estimate D_i) and the path's mean velocity
    Delta = (x_0 - x_N) / t_0 (from its first state to its sample),

        S_hat = (1 / t_0) sum_i (t_i - t_{i+1}) E || Delta - u_i ||^2,

    the time average of the squared deviation from the straight path -- the exact straightness of
    the Euler polyline (whose velocity is u_i on [t_{i+1}, t_i]), which tends to S(Z) as steps grow.
    The norm is the total over a sample's dimensions (Liu et al.'s ||.||^2), the mean over the noise
    draws. ``noise`` [n, ...] are standard normal draws as ``dl.sample(noise=...)`` takes them;
    ``cond``: None, one label or n labels; ``options`` go to ``dl.sample`` (e.g. ``clip_x0``).
    """
    check_flow(proc, "straightness")
    noise = _check_noise(noise, model)
    batch_size = positive_int("batch_size", batch_size)
    if not is_real(guidance):
        raise TypeError(f"guidance must be a number (1: no guidance), got {type(guidance).__name__}")
    for name in ("sampler", "spacing", "sigmas", "timesteps"):
        if name in options:
            raise ValueError(f"straightness runs Euler steps equally spaced in t; it takes no {name!r}")
    cond = check_labels(model, cond, noise.shape[0])
    total = 0.0
    for part in _chunks(noise.shape[0], batch_size):
        part_cond = None if cond is None else cond[part]
        total += float(_straightness_sum(model, proc, noise[part], steps, part_cond, guidance, device, options))
    return total / noise.shape[0]


def _straightness_sum(model, proc: FlowMatching, noise: Tensor, steps: int, cond: Optional[Tensor],
                      guidance: float, device, options: dict) -> Tensor:
    """sum over the batch of S_hat (see :func:`straightness`), float64."""
    times: list[float] = []
    velocities: list[Tensor] = []
    first: list[Tensor] = []

    def record(step: dict) -> None:  # dl.sample's callback: the flow's state x_t, its D, sigma
        t = float(proc.t_of(torch.tensor(float(step["sigma"]), dtype=torch.float64)))
        x_t = step["x"].double()
        if not first:
            first.append(x_t)
        times.append(t)
        velocities.append((x_t - step["denoised"].double()) / t)

    end = dl_sample(model, proc, noise.shape, "euler", steps, cond=cond, guidance=guidance, noise=noise,
                    device=device, spacing="uniform", callback=record, **options).double()
    times.append(0.0)
    t0 = times[0]
    delta = (first[0] - end) / t0
    out = torch.zeros((), dtype=torch.float64, device=end.device)
    for i, u in enumerate(velocities):
        out += (times[i] - times[i + 1]) * ((delta - u) ** 2).flatten(1).sum(1).sum()
    return out / t0


class ReflowLoss:
    """The flow-matching loss on fixed pairs: each sample Z_0 (the trainer's ``batch.x0``) with
    its own noise Z_1 = ``noise[batch.index]`` instead of a fresh draw,

        E_t w(t) || v(x_t, t) - (Z_1 - Z_0) ||^2,     x_t = (1 - t) Z_0 + t Z_1

    (Liu et al. 2022, eq. 1 on the coupling (Z_0, Z_1) of :func:`generate_pairs`), through
    ``proc.training_loss`` with the trainer's times t and labels. ``noise`` [N, ...] is indexed by
    the dataset index: train with ``Trainer(cfg, out, data=(samples, labels), loss_fn=ReflowLoss(proc,
    noise))``, the samples in the order ``generate_pairs`` returned them. The pairs are the coupling,
    so the process must pair as given (``coupling="independent"``): minibatch OT would re-pair them.
    """

    def __init__(self, proc: Process, noise: Tensor, weighting=None) -> None:
        check_flow(proc, "ReflowLoss")
        if proc.coupling != "independent":
            raise ValueError(f"ReflowLoss trains on the pairs as given, but the process re-pairs noise and data "
                             f"(coupling={proc.coupling!r}); build the flow with coupling='independent' "
                             "(config diffusion.process_kwargs.coupling: independent): the pairs are the coupling")
        if not isinstance(noise, Tensor) or noise.ndim < 2 or not noise.is_floating_point():
            raise ValueError(f"noise must be a float tensor [N, ...], the pairs' noise from generate_pairs, got "
                             f"{getattr(noise, 'shape', type(noise).__name__)}")
        check_weighting(weighting)
        self.proc, self.weighting = proc, weighting
        self.noise = check_finite(noise.detach(), "noise", NOISE_FIX)
        self._on: dict = {}  # noise per device, copied once

    def _noise_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._on:
            self._on[key] = self.noise.to(device)
        return self._on[key]

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        index = batch.index
        # (values read on the CPU only, and not under torch.compile: no host-device sync, no graph break)
        if index.device.type == "cpu" and not torch.compiler.is_compiling() and index.numel() \
                and int(index.max()) >= len(self.noise):
            raise ValueError(f"ReflowLoss holds {len(self.noise)} noise draws but the batch has dataset index "
                             f"{int(index.max())}: train on the pairs' samples (as many, in generate_pairs' order)")
        noise = self._noise_on(index.device)[index].to(batch.x0.device)
        if noise.shape != batch.x0.shape:
            raise ValueError(f"the pairs' noise has shape {tuple(noise.shape[1:])} per sample, the data "
                             f"{tuple(batch.x0.shape[1:])}: train on the pairs' samples as generate_pairs returned them")
        return self.proc.training_loss(model, batch.x0, batch.cond, t=batch.t, noise=noise,
                                       weighting=self.weighting)

    def __repr__(self) -> str:
        return f"ReflowLoss({self.proc!r}, {len(self.noise)} pairs, weighting={self.weighting!r})"


# ----------------------------------------------------------------------------- a run folder
def reflow(
    ckpt: Union[str, Path, LoadedRun],
    out: Union[str, Path],
    pairs: int,
    *,
    steps: int = 100,
    train_steps: Optional[int] = None,
    seed: int = 0,
    eval_n: int = 1000,
    device: Optional[str] = None,
    cpu_threads: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Train the next rectified flow of the flow run ``ckpt`` (run folder, checkpoint, export or
    a :class:`~difflab.training.LoadedRun`, which is moved to the device) into ``out``.

    1. ``pairs`` pairs (Z_1, Z_0) of the run's EMA model, its ODE solved by ``steps`` Euler steps
       (:func:`generate_pairs`, noise seeded by ``seed``; a class-conditional run's labels cycle
       through its classes, without guidance), saved in ``out/pairs.safetensors``;
    2. the run's config with ``steps = train_steps`` (default: the run's own), ``seed``, and the
       independent coupling (minibatch OT would re-pair the pairs), trained by the
       :class:`~difflab.training.Trainer` on the pairs with :class:`ReflowLoss`, starting from the
       run's EMA weights (model and EMA; Liu et al. initialise from the previous flow). ``out``
       becomes a run folder like ``difflab train``'s (``dl.load(out)``, ``difflab sample --ckpt out``);
    3. both flows' :func:`straightness` on the same ``eval_n`` noise draws with ``steps`` steps,
       written with the settings to ``out/reflow.json`` (before training, and again after it).

    ``device``, ``cpu_threads``: as the config fields (default: the run's config's). ``resume=True``
    continues an interrupted reflow in ``out`` on the pairs saved there, whose settings must be
    these, from its latest checkpoint (from the run's weights if none was written yet). ``say`` receives the progress lines. Returns reflow.json's content.
    """
    pairs = positive_int("pairs (the number of noise-sample pairs)", pairs)
    steps = positive_int("steps (the ODE steps of the pairs and the straightness)", steps)
    eval_n = positive_int("eval_n (the noise draws the straightness is measured on)", eval_n)
    if train_steps is not None:
        train_steps = positive_int("train_steps", train_steps)
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    run = ckpt if isinstance(ckpt, LoadedRun) else load(ckpt)
    _check_source(run, out)
    continued = _check_out(out, resume)
    overrides = [f"seed={int(seed)}"]
    overrides += [f"steps={train_steps}"] if train_steps is not None else []
    overrides += [f"device={device}"] if device is not None else []
    overrides += [f"cpu_threads={cpu_threads}"] if cpu_threads is not None else []
    if run.proc.coupling != "independent":
        say(f"note: {run.path} was trained with coupling {run.proc.coupling!r}; the reflow trains on its pairs as "
            "they are (coupling 'independent')")
        overrides.append("diffusion.process_kwargs.coupling=independent")
    cfg = apply_overrides(run.config, overrides).validate()
    dev = resolve_device(cfg.device, "device")
    run.to(dev)
    settings = {"source": str(Path(run.path).resolve()), "source_step": run.step, "pairs": pairs, "steps": steps,
                "sampler": "euler", "spacing": "uniform", "seed": int(seed)}
    labels = None
    if run.num_classes is not None:  # every class alike: label i mod K
        labels = torch.arange(pairs) % run.num_classes
    if resume:
        noise, samples, labels = _read_pairs(out / PAIRS_FILE, settings)
    else:
        if dev.type == "cpu":
            say(_sampling_threads(run, min(pairs, 500), cfg.cpu_threads))
        say(f"reflow: {pairs} pairs from {run.path} (step {run.step}), {steps} Euler steps each")
        noise, samples = generate_pairs(run.ema_model, run.proc, pairs, run.sample_shape, steps=steps, cond=labels,
                                        generator=torch.Generator().manual_seed(int(seed)), device=dev)
        _write_pairs(out / PAIRS_FILE, noise, samples, labels, settings)
    eval_noise = torch.randn((eval_n, *run.sample_shape), generator=torch.Generator().manual_seed(
        mix_seed(int(seed), 0x57A1)))
    eval_labels = None if run.num_classes is None else torch.arange(eval_n) % run.num_classes
    before = straightness(run.ema_model, run.proc, eval_noise, steps, eval_labels, device=dev)
    say(f"straightness of {run.path}: {before:.4g} ({eval_n} noise draws, {steps} Euler steps)")
    report = dict(settings, train_steps=cfg.steps, eval_n=eval_n,
                  straightness={"before": before, "after": None})
    atomic_write_text(out / REFLOW_FILE, json.dumps(report, indent=2) + "\n")

    proc = build_process(cfg)
    data = (samples.reshape(pairs, *run.image_shape), labels)  # the trainer flattens as the config says
    with Trainer(cfg, out, data=data, loss_fn=ReflowLoss(proc, noise, cfg.diffusion.weighting), resume=continued,
                 progress=progress) as trainer:
        if trainer.cpu_threads_note:
            say(trainer.cpu_threads_note)
        if not continued:  # the previous flow's weights: the model and its average start there
            for module in (trainer.model, trainer.ema.model):
                difference = load_matching(module, run.ema_model.state_dict())
                if difference is not None:
                    raise ValueError(f"the weights of {run.path} do not fit the network its config builds "
                                     f"({difference})")
        result = trainer.train()
        after = straightness(trainer.ema.model, trainer.proc, eval_noise, steps, eval_labels, device=trainer.device)
    report["straightness"]["after"] = after
    report["checkpoint"] = result["checkpoint"]
    atomic_write_text(out / REFLOW_FILE, json.dumps(report, indent=2) + "\n")
    say(f"straightness: {before:.4g} before, {after:.4g} after ({after / before:.3g}x)" if before > 0 else
        f"straightness: {before:.4g} before, {after:.4g} after")
    return report


def _check_source(run: LoadedRun, out: Path) -> None:
    """A flow run, and not the folder the reflow writes into."""
    process = run.config.diffusion.process
    if not isinstance(run.proc, FlowMatching):
        raise ValueError(f"{str(run.path)!r} is a {process!r} run ({run.proc!r}); reflow straightens a flow: "
                         "train one with diffusion.process: flow (configs/digits_flow.yaml)")
    if run.config.loss != "diffusion":
        raise ValueError(f"{str(run.path)!r} was trained with loss {run.config.loss!r}; reflow trains the plain "
                         "flow-matching loss (loss: diffusion) on its pairs")
    source = Path(run.path).resolve()
    target = out.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"out {str(out)!r} holds the run it would reflow ({str(run.path)!r}); write the new flow "
                         "into another folder")


def _check_out(out: Path, resume: bool) -> bool:
    """Before any work: a fresh reflow needs a folder without pairs or a run in it; a resumed one
    its pairs (and it continues from its checkpoint where one was written). Returns whether one was."""
    has_run = latest_checkpoint(out) is not None
    has_pairs = (out / PAIRS_FILE).is_file()
    if not resume and (has_run or has_pairs):
        held = f"the pairs of a reflow ({PAIRS_FILE})" if has_pairs else "a run (checkpoints/latest)"
        raise FileExistsError(f"{str(out)!r} already holds {held}; pass --resume (resume=True) to continue it, "
                              "or choose another output folder")
    if resume and not has_pairs:
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: no {PAIRS_FILE} (the pairs a reflow trains "
                                "on); start without --resume")
    return has_run


def _sampling_threads(run, batch: int, requested: int) -> str:
    """CPU threads for drawing the pairs, by the rule of the trainer (one for a small network)."""
    x = torch.zeros((batch, *run.sample_shape))
    t = run.proc.timestep(run.proc.sigma_max, batch)
    cond = None if run.num_classes is None else torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        flops = count_flops(lambda: run.ema_model(x, t) if cond is None else run.ema_model(x, t, cond))
    return use_cpu_threads(flops, requested)


def _write_pairs(path: Path, noise: Tensor, samples: Tensor, labels: Optional[Tensor], settings: dict) -> None:
    tensors = {"noise": noise.contiguous(), "samples": samples.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    metadata = {key: json.dumps(value) for key, value in settings.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _read_pairs(path: Path, settings: dict) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The saved pairs, if they are the ones these settings draw (else a ValueError naming the differences)."""
    with safe_open(str(path), "pt") as f:
        saved = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
    differ = [f"{key} (saved: {saved.get(key)!r}, now: {value!r})" for key, value in settings.items()
              if saved.get(key) != value]
    if differ:
        raise ValueError(f"cannot resume the reflow in {str(path.parent)!r}: its pairs were drawn with other settings: "
                         f"{', '.join(differ)}; resume with those, or reflow into another folder")
    tensors = load_file(str(path))
    return tensors["noise"], tensors["samples"], tensors.get("labels")
