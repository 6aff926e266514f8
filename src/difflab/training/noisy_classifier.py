"""Training a noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, sec. 4).

For a trained diffusion run, the classifier learns to tell the classes of the run's own data apart
from the noisy states the run's process makes of it, at the noise levels its sampler visits:

    minimise E_{(x0, y), t, eps} [ -log softmax(classifier(x_t, t))_y ],   x_t = a(t) x0 + s(t) eps

with t drawn as the process draws its training times (uniform on the DDPM chain's 0 .. T-1) and
the classifier fed the network's time input (``proc.model_time``): exactly what guidance will
give it (:mod:`difflab.samplers.classifier_guidance`). AdamW with a linear warm-up to a constant
learning rate (no decay, so a run extended to more steps is the run that had them from the start),
as guided-diffusion trains its classifiers.

    train_noisy_classifier("runs/digits_uncond", "classifiers/digits_noisy", steps=3000)
    clf = load_noisy_classifier("classifiers/digits_noisy")
    x = dl.sample(model, proc, shape, cond=3, classifier=clf, classifier_scale=4.0)

The output folder holds ``noisy_classifier.safetensors`` -- the weights with, in its metadata,
everything needed to use them safely (architecture, ``data_shape``, ``num_classes``, the
process's ``network_signature()``, the run, the step, held-out accuracies) -- and, for resuming,
``resume.pt`` (weights, optimizer, step, settings). Each is written atomically, ``resume.pt``
first, so a crash leaves the last usable classifier whole and the run resumable; a run restarted
with the same settings continues where it stopped, and takes exactly the steps it would have
taken uninterrupted (the batches and draws of step s depend on (seed, s) only).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..files import atomic_write_bytes, atomic_write_text
from ..models import NoisyClassifier
from ..processes import Process
from ..validation import is_real, positive_int
from .build import build_process
from .checkpoint import load
from .config import config_from_text, config_to_text
from .data import GlobalBatches, check_data, load_data, mix_seed, step_generator

__all__ = ["train_noisy_classifier", "load_noisy_classifier", "noisy_accuracy", "WEIGHTS_FILE", "RESUME_FILE"]

WEIGHTS_FILE = "noisy_classifier.safetensors"
RESUME_FILE = "resume.pt"
INFO_FILE = "noisy_classifier.json"  # a readable copy of the weights' metadata (not read back)
_FORMAT = "difflab-noisy-classifier/1"
# the settings a resumed run must share with the saved one (steps and ckpt_every may change)
_SAME_ON_RESUME = ("run_signature", "data_shape", "data_size", "num_classes", "architecture", "batch_size", "lr",
                   "weight_decay", "warmup", "seed", "holdout")


def _json_signature(signature) -> Any:
    """A process signature as JSON (tuples as lists; floats round-trip exactly through repr)."""
    return [_json_signature(v) for v in signature] if isinstance(signature, (list, tuple)) else signature


def _tuple_signature(signature) -> Any:
    return tuple(_tuple_signature(v) for v in signature) if isinstance(signature, list) else signature


def _split(n: int, holdout: float) -> tuple[Tensor, Tensor]:
    """(training, held-out) indices: a fixed permutation (seed 0), the last ``holdout`` share held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    cut = n - int(round(holdout * n))
    return order[:cut], order[cut:]


@torch.no_grad()
def noisy_accuracy(classifier: Callable, proc: Process, x0: Tensor, y: Tensor, sigmas, seed: int = 0,
                   batch_size: int = 1000) -> dict[str, float]:
    """Accuracy of ``classifier`` on x_t = a x, x = x0 + sigma eps, at each VE level in ``sigmas``
    (the classifier convention: state a x, time input ``proc.timestep(sigma, B)``); keys are the
    levels formatted with 4 significant digits."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    device = next(iter(classifier.parameters())).device if hasattr(classifier, "parameters") else x0.device
    was_training = getattr(classifier, "training", False)
    if was_training:
        classifier.eval()
    for sigma in sigmas:
        sigma = float(sigma)
        a = float(proc.scale(sigma))
        correct = 0
        for i in range(0, len(x0), batch_size):
            xb = x0[i:i + batch_size]
            eps = torch.randn(xb.shape, generator=g)
            x_t = (a * (xb + sigma * eps)).to(device)
            pred = classifier(x_t, proc.timestep(sigma, len(xb), device)).argmax(1).cpu()
            correct += int((pred == y[i:i + batch_size]).sum())
        out[f"{sigma:.4g}"] = correct / len(x0)
    if was_training:
        classifier.train()
    return out


def _levels(proc: Process, n: int = 5) -> list[float]:
    """n VE noise levels spread over the process's sampling range, evenly in its time."""
    lo, hi = proc.t_min, proc.t_max
    ts = torch.tensor([lo + (hi - lo) * f for f in torch.linspace(0.02, 0.98, n).tolist()], dtype=torch.float64)
    if proc.discrete:
        ts = ts.round()
    return [float(proc.sigma_of(t)) for t in ts]


def train_noisy_classifier(
    run: Union[str, Path],
    out: Union[str, Path],
    *,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: int = 100,
    width: int = 128,
    depth: int = 2,
    mult: tuple = (1, 2),
    scale_input: bool = True,
    seed: int = 0,
    holdout: float = 0.1,
    ckpt_every: int = 500,
    data=None,
    device=None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Train (or resume) the noisy classifier of the diffusion run ``run`` (a run folder, a
    checkpoint folder or an exported file) into the folder ``out``; returns its metadata.

    The data, its labels, its layout (``data.flatten``: flat [B, D] for an MLP run) and the
    process come from the run's config, so the classifier reads what the run's sampler will give
    it. ``holdout``: the share of the data held out to report accuracy at five noise levels
    (``held_out_accuracy``); ``ckpt_every``: steps between saves (and the last step). ``data``:
    ``(images, labels)`` to train on instead of the config's data set, as the run's trainer was
    given them (``Trainer(data=...)``: a training split), checked as the trainer checks them.
    ``scale_input=False``: the network reads x_t unscaled (:class:`~difflab.models.NoisyClassifier`;
    an ablation: its gradient does not decay at high noise)."""
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
    ckpt_every = positive_int("ckpt_every", ckpt_every)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not is_real(value) or not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
    if not is_real(holdout) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a share in [0, 1) of the data held out for testing, got {holdout!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer number of steps >= 0, got {warmup!r}")
    say = log or (lambda _msg: None)
    device = resolve_device(device, "device") if device is not None else torch.device("cpu")
    loaded = load(run)
    cfg, proc = loaded.config, loaded.proc
    x, y = load_data(cfg.data) if data is None else check_data(data, name="data")
    if y is None:
        raise ValueError(f"run {str(run)!r} trains on data {cfg.data.name!r}, which has no class labels: a "
                         "classifier needs labelled data (digits, mnist, toy2d)" if data is None else
                         "data has no labels (None): a classifier needs (images, labels)")
    if cfg.data.flatten:
        x = x.flatten(1)
    data_shape = tuple(x.shape[1:])
    if data_shape != tuple(loaded.sample_shape):
        raise ValueError(f"the run's data now has shape {data_shape} but the run samples {tuple(loaded.sample_shape)}: "
                         "its data changed since it was trained; restore it")
    num_classes = int(y.max()) + 1
    model_classes = loaded.num_classes
    if model_classes is not None and model_classes != num_classes:
        num_classes = model_classes  # the model's labels define the classes (a subset of data may lack the last)
    if num_classes < 2:
        raise ValueError(f"the run's data has {num_classes} class: a classifier needs at least 2")
    train_idx, test_idx = _split(len(x), float(holdout))
    architecture = dict(width=width, depth=depth, mult=list(mult), scale_input=scale_input)
    settings = {"run_signature": _json_signature(proc.network_signature()), "data_shape": list(data_shape),
                "data_size": len(x),
                "num_classes": num_classes, "architecture": architecture, "batch_size": batch_size, "lr": float(lr),
                "weight_decay": float(weight_decay), "warmup": warmup, "seed": seed, "holdout": float(holdout)}
    torch.manual_seed(mix_seed(seed, 0xC1A55))
    net = NoisyClassifier(data_shape, num_classes, width=width, depth=depth, mult=mult, proc=proc,
                          scale_input=scale_input).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; name a folder for the classifier")
    start = _resume(out, settings, net, opt, sched)
    if start:
        say(f"resuming {out} at step {start}")
    if start >= steps:
        say(f"{out} is trained to step {start} >= {steps} already; nothing to do (raise steps to train on)")
        return _read_info(out / WEIGHTS_FILE)
    out.mkdir(parents=True, exist_ok=True)
    batches = GlobalBatches(len(train_idx), batch_size, seed)
    g = torch.Generator()
    x_train, y_train = x[train_idx], y[train_idx]
    bar = None
    if progress:
        bar = tqdm(total=steps, initial=start, desc="noisy classifier", unit="step")
    t0, losses = time.perf_counter(), []
    net.train()
    for step in range(start, steps):
        idx = batches.indices(step)
        x0, labels = x_train[idx].to(device), y_train[idx].to(device)
        step_generator(g, seed, step)
        t = proc.training_times(len(idx), g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        x_t = proc.q_sample(x0, t, noise)
        loss = F.cross_entropy(net(x_t, proc.model_time(t)), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the classifier's loss became {loss.item()} at step {step}; lower lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
        done = step + 1
        if done % ckpt_every == 0 or done == steps:
            recent = losses[-min(len(losses), 100):]
            info = _save(out, net, opt, sched, done, settings, cfg, run, proc, x[test_idx], y[test_idx],
                         sum(recent) / len(recent), time.perf_counter() - t0)
            say(f"step {done}: loss {info['train_loss']:.4f}, held-out accuracy by noise level "
                f"{info['held_out_accuracy']}")
    if bar is not None:
        bar.close()
    return info


def _save(out: Path, net: NoisyClassifier, opt, sched, step: int, settings: dict, cfg, run, proc: Process,
          x_test: Tensor, y_test: Tensor, train_loss: float, seconds: float) -> dict:
    """resume.pt, then the weights with their metadata, then the readable copy: each atomically."""
    buffer = io.BytesIO()
    torch.save({"format": _FORMAT, "step": step, "settings": settings,
                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    atomic_write_bytes(out / RESUME_FILE, buffer.getvalue())
    accuracy = noisy_accuracy(net, proc, x_test, y_test, _levels(proc)) if len(x_test) else {}
    info = {"format": _FORMAT, "config": net.config, "data_shape": list(net.data_shape),
            "num_classes": net.num_classes, "process_signature": settings["run_signature"],
            "process": repr(proc), "run": str(run), "data": cfg.data.name, "flatten": cfg.data.flatten,
            "run_config": config_to_text(cfg), "step": step, "train_loss": train_loss, "held_out_accuracy": accuracy,
            "held_out_images": len(x_test), "seconds_this_session": round(seconds, 1), "settings": settings}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors(state, metadata={"difflab": json.dumps(info)}))
    readable = dict(info, process_signature=f"(in {WEIGHTS_FILE}'s metadata)", run_config=f"(in {WEIGHTS_FILE}'s "
                    "metadata)")
    atomic_write_text(out / INFO_FILE, json.dumps(readable, indent=2) + "\n")
    return info


def _resume(out: Path, settings: dict, net, opt, sched) -> int:
    """The step to start from: 0 for a new folder, the saved step for a folder of the same settings;
    anything else is refused (it would be overwritten)."""
    file = out / RESUME_FILE
    if not file.is_file():
        if (out / WEIGHTS_FILE).is_file():
            raise ValueError(f"{str(out)!r} holds a classifier but no {RESUME_FILE} to resume it from; choose another "
                             "--out folder, or delete this one to train anew")
        return 0
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError, ...
        raise ValueError(f"{str(file)!r} is damaged ({type(err).__name__}); delete the folder {str(out)!r} to train "
                         "anew") from None
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{str(file)!r} is not a noisy classifier's resume file; choose another --out folder")
    differ = [k for k in _SAME_ON_RESUME if saved["settings"].get(k) != settings[k]]
    if differ:
        what = ", ".join(f"{k} (saved {_short(saved['settings'].get(k))}, now {_short(settings[k])})" for k in differ)
        raise ValueError(f"{str(out)!r} holds a classifier trained with other settings: {what}. Resume it with the "
                         "same run and settings, or choose another --out folder")
    net.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    return int(saved["step"])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:40] + "..."


def _read_info(file: Path) -> dict:
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors' own error type: a damaged header or data
        raise ValueError(f"{str(file)!r} is damaged: not a readable safetensors file ({err}); train the classifier "
                         "again (`difflab train-classifier --noisy`)") from None
    try:
        info = json.loads(meta["difflab"])
    except (KeyError, ValueError):
        raise ValueError(f"{str(file)!r} is not a noisy classifier of difflab (no difflab metadata); make one with "
                         "`difflab train-classifier --noisy --ckpt RUN --out DIR`") from None
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise ValueError(f"{str(file)!r} is not a noisy classifier of difflab (format {info.get('format')!r})")
    return info


def load_noisy_classifier(path: Union[str, Path], device=None) -> NoisyClassifier:
    """The classifier saved by :func:`train_noisy_classifier` in the folder ``path`` (or its
    ``noisy_classifier.safetensors``), in eval mode, with ``data_shape``, ``num_classes``,
    ``process_signature`` (what guidance checks it against) and ``meta`` (its metadata)."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        hint = (" (it holds an evaluation classifier, classifier.safetensors: for guidance train a noise-aware one)"
                if (path / "classifier.safetensors").is_file() else "")
        raise FileNotFoundError(f"no noisy classifier at {str(path)!r}{hint}; make one with "
                                "`difflab train-classifier --noisy --ckpt RUN --out DIR`")
    info = _read_info(file)
    try:
        proc = build_process(config_from_text(info["run_config"], f"{str(file)!r}'s run config"))
        net = NoisyClassifier(**info["config"], proc=proc)
        with safe_open(str(file), framework="pt") as f:
            net.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(file)!r} is damaged: its weights do not fit the architecture its metadata "
                         f"describes ({str(err).splitlines()[0]}); train the classifier again") from None
    if net.process_signature != _tuple_signature(info["process_signature"]):
        raise ValueError(f"{str(file)!r}: the process its run config builds is not the one it was trained under "
                         "(difflab's processes changed since, or the file was edited); train the classifier again")
    net.meta = info
    if device is not None:
        net.to(resolve_device(device, "device"))
    return net.eval()
