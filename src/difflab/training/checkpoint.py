"""Checkpoints: written atomically, read back for resuming and for sampling (``dl.load``).

A run folder holds ``config.yaml``, ``log.csv``, ``samples/`` and ``checkpoints/``::

    checkpoints/step_00001000/   config.yaml, model.safetensors, ema.safetensors,
                                 optimizer.pt (optimizer, LR scheduler, grad scaler),
                                 rng.pt (CPU and CUDA generator states of every process),
                                 state.json (step, data-stream position, shapes, versions)
    checkpoints/latest           the name of the newest complete checkpoint

A checkpoint is written into a temporary folder, every file fsync'ed, then renamed into place,
and only then does ``latest`` (replaced atomically itself) point to it. A crash at any moment
leaves ``latest`` naming a complete checkpoint -- or, when the same step was being re-saved,
the old copy moved aside, which :func:`latest_checkpoint` finds; the older ones are pruned to
``keep_last``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..devices import resolve_device
from ..files import atomic_write, atomic_write_text, fsync_path
from ..diffusion import GaussianDiffusion
from ..validation import is_real
from .build import build_model, build_process
from .config import TrainConfig, config_from_text, config_to_text, load_config
from .generate import Labels, generate

__all__ = ["save_checkpoint", "latest_checkpoint", "resolve_checkpoint", "read_checkpoint", "load",
           "LoadedRun", "atomic_write", "atomic_write_text", "export_model", "EXPORT_DTYPES"]

LATEST = "latest"
PREFIX = "step_"


def _state_dict_cpu(module: nn.Module) -> dict[str, Tensor]:
    # clone: safetensors refuses tensors that share memory (tied weights) and needs contiguity
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _plain_numbers(state: dict, *keys: str) -> dict:
    """``state`` with 0-dim tensors under ``keys`` (a learning rate kept on the GPU for a captured
    step, training/step_graph.py) as Python floats, so the checkpoint resumes in any mode."""
    def plain(v):
        if isinstance(v, torch.Tensor) and v.ndim == 0:
            return float(v)
        if isinstance(v, dict):
            return {k: v2 if k == "params" else plain(v2) for k, v2 in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) if k in keys else v for k, v in state.items()}


def save_checkpoint(
    root: Union[str, Path],
    step: int,
    *,
    config: TrainConfig,
    model: nn.Module,
    ema,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler=None,
    rng: Sequence[dict],
    state: dict,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically, point ``root/latest`` at it, prune old ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "config.yaml").write_text(config_to_text(config))
        save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
        save_file(_state_dict_cpu(ema.model), str(tmp / "ema.safetensors"))
        torch.save({"optimizer": _plain_numbers(optimizer.state_dict(), "param_groups"),
                    "scheduler": _plain_numbers(scheduler.state_dict(), "base_lrs", "_last_lr"),
                    "scaler": scaler.state_dict() if scaler is not None else None},
                   tmp / "optimizer.pt")
        torch.save(list(rng), tmp / "rng.pt")
        meta = dict(state, step=step, ema={"decay": ema.decay, "warmup": ema.warmup,
                                           "num_updates": ema.num_updates},
                    torch_version=torch.__version__, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():  # re-saving a step (e.g. after resuming): move the old one aside first
        old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(root)
    atomic_write_text(root / LATEST, name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep_last, keep=name)
    return final


def _prune(root: Path, keep_last: int, keep: str) -> None:
    done = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)),
                  key=lambda p: p.name)
    for p in done[:-keep_last]:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():  # leftovers of interrupted writes
        if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------- finding
def latest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (or of its ``checkpoints/``), else None.

    ``latest`` names it. Should that folder be missing -- a crash while re-saving the same step,
    between moving the old copy aside and renaming the new one into place -- the copy moved
    aside (``.old-<name>-*``) is it; failing that, the newest complete ``step_*`` folder."""
    run_dir = Path(run_dir)
    complete = lambda p: (p / "state.json").is_file()  # noqa: E731 -- written last, before the rename
    for root in (run_dir / "checkpoints", run_dir):
        pointer = root / LATEST
        if pointer.is_file():
            name = pointer.read_text().strip()
            if complete(root / name):
                return root / name
            aside = sorted((p for p in root.glob(f".old-{name}-*") if complete(p)), key=lambda p: p.stat().st_mtime)
            done = sorted(p for p in root.glob(f"{PREFIX}*") if complete(p))
            if aside or done:
                return (aside or done)[-1]
    return None


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A checkpoint folder from a run folder, a ``checkpoints/`` folder or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        return path
    ck = latest_checkpoint(path)
    if ck is None:
        raise FileNotFoundError(
            f"no checkpoint in {str(path)!r}: expected a run folder (with checkpoints/latest) "
            "or a checkpoint folder (with state.json and model.safetensors)"
        )
    return ck


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Everything in a checkpoint, on the CPU: config, model, ema, optimizer, rng, state."""
    ck = resolve_checkpoint(path)
    return {
        "path": ck,
        "config": load_config(ck / "config.yaml"),
        "model": _read_weights(ck / "model.safetensors"),
        "ema": _read_weights(ck / "ema.safetensors"),
        "optimizer": _read_torch(ck / "optimizer.pt"),
        "rng": _read_torch(ck / "rng.pt"),
        "state": _read_state(ck / "state.json"),
    }


# A hand-damaged checkpoint (truncated, overwritten or edited file) gets an error naming the
# file, not the parser's traceback.
def _damaged(file: Path, what: str) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r} is damaged ({what}); restore it, or load an older "
                      f"checkpoint of the run (another step_* folder in {str(file.parent.parent)!r})")


def _read_weights(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(file))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean a bad file
        raise _damaged(file, f"not a readable safetensors file: {err}") from None


def _read_torch(file: Path):
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is incomplete")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError, ...
        raise _damaged(file, f"cannot be read by torch.load: {type(err).__name__}") from None


def _check_state(state, file: Path) -> dict:
    """The fields of state.json that loading needs: step (int) and sample_shape (positive ints)."""
    if not isinstance(state, dict):
        raise _damaged(file, f"expected a JSON object, got {type(state).__name__}")
    for key in ("step", "sample_shape"):
        if key not in state:
            raise _damaged(file, f"no {key!r} field")
    if isinstance(state["step"], bool) or not isinstance(state["step"], int):
        raise _damaged(file, f"'step' must be an integer, got {state['step']!r}")
    for key in ("sample_shape", "image_shape"):
        shape = state.get(key)
        if key == "image_shape" and shape is None:
            continue
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise _damaged(file, f"{key!r} must be a list of positive integers, got {shape!r}")
    return state


def _read_state(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is incomplete")
    try:
        state = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise _damaged(file, f"not valid JSON: {err}") from None
    return _check_state(state, file)


# ------------------------------------------------------------------ dl.load
class LoadedRun:
    """A trained model ready to sample: ``.model``, ``.ema_model`` (both in eval mode),
    ``.proc``, ``.num_classes``, ``.config``, ``.step``; ``.sample(n, ...)``."""

    def __init__(self, config: TrainConfig, model: nn.Module, ema_model: nn.Module,
                 proc: GaussianDiffusion, state: dict, path: Path) -> None:
        self.config, self.model, self.ema_model, self.proc = config, model, ema_model, proc
        self.state, self.path = state, path
        self.step: int = state["step"]
        self.num_classes: Optional[int] = getattr(ema_model, "num_classes", None)
        self.sample_shape = tuple(state["sample_shape"])
        self.image_shape = tuple(state.get("image_shape") or state["sample_shape"])

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.path)!r}, model={self.config.model.name!r}, step={self.step}, "
                f"num_classes={self.num_classes}, shape={self.image_shape})")

    def sample(
        self,
        n: int,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = 1.0,
        labels: Labels = None,
        seed: Optional[int] = None,
        *,
        eta: float = 0.0,
        clip_x0: Optional[float] = ...,  # type: ignore[assignment]
        ema: bool = True,
        model: Optional[Callable] = None,
        device=None,
        progress: bool = False,
        **options,
    ) -> Tensor:
        """n samples [n, *image_shape] in about [-1, 1]. ``labels``: an int (all alike), n ints,
        or None (unconditional); ``guidance`` w != 1 needs labels. Same seed, same samples.
        ``clip_x0`` defaults to the run's ``sample.clip_x0`` (None: no clipping). ``device``:
        where to sample (None: where the model is). ``model``: the network to sample with instead
        of the EMA (or, ``ema=False``, the raw) weights, e.g. one of them accelerated
        (``dl.accel.accelerate(run.ema_model, ...)``)."""
        if model is None:
            model = self.ema_model if ema else self.model
        if labels is None and is_real(guidance) and guidance != 1.0:
            if self.num_classes is None:
                raise ValueError(f"guidance={guidance} needs a class-conditional model; this run's "
                                 f"{self.config.model.name!r} model is unconditional: use guidance=1")
            raise ValueError(f"guidance={guidance} needs labels= (the class to guide towards: an int, or n "
                             f"ints in 0 .. {self.num_classes - 1}); e.g. run.sample(n, guidance={guidance}, labels=3)")
        if device is not None:
            device = resolve_device(device, "device")
        if clip_x0 is ...:
            clip_x0 = self.config.sample.clip_x0
        return generate(model, self.proc, n, self.sample_shape, image_shape=self.image_shape,
                        sampler=sampler, steps=steps, guidance=guidance, labels=labels, seed=seed,
                        eta=eta, device=device, progress=progress, clip_x0=clip_x0, **options)

    def to(self, device) -> "LoadedRun":
        device = resolve_device(device, "device")
        self.model.to(device)
        self.ema_model.to(device)
        return self


def load(path: Union[str, Path], device: Any = "cpu") -> LoadedRun:
    """Load a run folder, a checkpoint folder or an exported ``.safetensors`` file
    (:func:`export_model`) for sampling: ``dl.load("runs/digits").sample(16, labels=3)``."""
    device = resolve_device(device, "device")
    if Path(path).is_file() and Path(path).suffix == ".safetensors":
        return _load_export(Path(path), device)
    ck = resolve_checkpoint(path)
    cfg = load_config(ck / "config.yaml")
    state = _read_state(ck / "state.json")
    model = _for_sampling(build_model(cfg), _read_weights(ck / "model.safetensors"), device, ck / "config.yaml")
    ema_model = _for_sampling(build_model(cfg), _read_weights(ck / "ema.safetensors"), device, ck / "config.yaml")
    return LoadedRun(cfg, model, ema_model, build_process(cfg), state, ck)


# --------------------------------------------------------------------- export
# One portable file per model: the weights of one network (the EMA by default) in a
# safetensors file whose metadata holds the run's config and shapes, so ``dl.load(file)``
# rebuilds it with no run folder. fp16 / bf16 halve the size (weights are cast back to float32
# on loading; fp16 rounds each weight by at most 2^-11 relative, bf16 by 2^-8).
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_EXPORT_FORMAT = "difflab-model/1"


def export_model(path: Union[str, Path], out: Union[str, Path], *, ema: bool = True,
                 dtype: str = "fp32") -> Path:
    """Write one network of a run (``ema=True``: the EMA weights, which sampling uses) to
    ``out``, a single ``.safetensors`` file with the config in its metadata; written atomically.
    ``dtype``: "fp32" (exact), "fp16" or "bf16" (half the size). Returns ``out``."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"out must name a .safetensors file, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"out {str(out)!r} is a folder; name a file, e.g. {str(out / 'model.safetensors')!r}")
    ck = resolve_checkpoint(path)
    weights = _read_weights(ck / ("ema.safetensors" if ema else "model.safetensors"))
    cast = EXPORT_DTYPES[dtype]
    weights = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    state = _read_state(ck / "state.json")
    meta = {
        "format": _EXPORT_FORMAT,
        "config": (ck / "config.yaml").read_text(),
        "state": json.dumps({k: state[k] for k in ("step", "sample_shape", "image_shape", "elapsed_s")
                            if k in state}),
        "weights": "ema" if ema else "model",
        "dtype": dtype,
        "source": str(ck),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: save_file(weights, str(tmp), metadata=meta))


def _load_export(path: Path, device: Any) -> LoadedRun:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - re-raised with what the file should be
        raise ValueError(f"{str(path)!r} is not a safetensors file ({err}); dl.load takes a run folder, "
                         "a checkpoint folder or a file written by difflab export") from None
    if meta.get("format") != _EXPORT_FORMAT:
        raise ValueError(f"{str(path)!r} holds no difflab model (no 'format: {_EXPORT_FORMAT}' in its "
                         "metadata); export one with `difflab export --ckpt RUN --out FILE`")
    if "config" not in meta or "state" not in meta:
        raise ValueError(f"exported model {str(path)!r} is damaged: its metadata lacks "
                         f"{'config' if 'config' not in meta else 'state'}; export it again with `difflab export`")
    cfg = config_from_text(meta["config"])
    try:
        state = json.loads(meta["state"])
    except ValueError as err:
        raise ValueError(f"exported model {str(path)!r} is damaged: its 'state' metadata is not valid JSON "
                         f"({err}); export it again with `difflab export`") from None
    try:
        weights = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    except Exception as err:  # noqa: BLE001 - a bad tensor section after a good header
        raise ValueError(f"exported model {str(path)!r} is damaged ({err}); export it again with "
                         "`difflab export`") from None
    model = _for_sampling(build_model(cfg), weights, device, path)
    # one network: .model and .ema_model are the same module (the exported weights)
    return LoadedRun(cfg, model, model, build_process(cfg), _check_state(state, path), path)


def _for_sampling(model: nn.Module, weights: dict[str, Tensor], device: Any, config_file: Path) -> nn.Module:
    """``model`` with ``weights`` loaded, on ``device``, in eval mode without gradients. Weights
    that don't fit the network the config builds (a hand-edited config.yaml, weights from another
    run) raise ValueError naming ``config_file``."""
    difference = load_matching(model, weights)
    if difference is not None:
        raise ValueError(
            f"the weights do not match the model that {str(config_file)!r} describes (model "
            f"{type(model).__name__}): the checkpoint is damaged or its config was edited after training. "
            f"Restore the config the run was trained with. First difference: {difference}"
        )
    return model.to(device).eval().requires_grad_(False)


def load_matching(model: nn.Module, weights: dict[str, Tensor]) -> Optional[str]:
    """``model.load_state_dict(weights)``; None, or (weights that don't fit the network) torch's
    first difference, for an error that names the file and the fix instead of its traceback."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        detail = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        return detail[0] if detail else str(err)
    return None
