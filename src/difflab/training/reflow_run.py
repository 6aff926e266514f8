"""A reflow run: the next rectified flow of a flow run, trained into a run folder (``difflab reflow``).

Load the k-rectified flow, draw its (noise, sample) pairs (:func:`~difflab.training.reflow.generate_pairs`),
train the (k+1)-rectified flow on them with :class:`~difflab.training.reflow.ReflowLoss` from the
k-rectified flow's weights (Liu et al. 2022 initialise from the previous flow), and measure both
flows' :func:`~difflab.training.reflow.straightness`. The folder holds the pairs, so the run resumes
on them, and ``reflow.json`` with both straightness values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..devices import count_flops, resolve_device, use_cpu_threads
from ..files import atomic_write, atomic_write_text
from ..processes import FlowMatching
from ..validation import is_int, positive_int
from .build import build_process
from .checkpoint import LoadedRun, latest_checkpoint, load, load_matching
from .config import apply_overrides, field_overrides
from .data import mix_seed
from .reflow import ReflowLoss, generate_pairs, straightness
from .trainer import Trainer

__all__ = ["reflow", "PAIRS_FILE", "REFLOW_FILE"]

PAIRS_FILE = "pairs.safetensors"  # the pairs a reflow run trains on (noise, samples, labels), in its run folder
REFLOW_FILE = "reflow.json"  # what it was trained from, and both flows' straightness


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
    overrides = field_overrides(seed=int(seed), steps=train_steps, device=device, cpu_threads=cpu_threads)
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
