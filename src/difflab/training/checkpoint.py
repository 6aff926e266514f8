"""Checkpoints: written atomically, read back for resuming and for sampling (``dl.load``).

A run folder holds ``config.yaml``, ``log.csv``, ``samples/`` and ``checkpoints/``::

    checkpoints/step_00001000/   config.yaml, model.safetensors, ema.safetensors,
                                 optimizer.pt (optimizer, LR scheduler, grad scaler),
                                 rng.pt (CPU and CUDA generator states of every process),
                                 state.json (step, data-stream position, shapes, versions),
                                 dcp/ (runs with sharding: fsdp: the sharded model, EMA and
                                       optimizer state, torch.distributed.checkpoint's files;
                                       optimizer.pt then holds the scheduler, scaler and the
                                       optimizer's settings only),
                                 checksums.sha256 (a SHA-256 of each file above: `sha256sum -c`)
    checkpoints/latest           the name of the newest complete checkpoint

``model.safetensors`` and ``ema.safetensors`` always hold the whole weights (a sharded run
gathers them to process 0), so sampling, export and an unsharded resume read them alike.

A checkpoint is written into a temporary folder, every file fsync'ed, then renamed into place,
and only then does ``latest`` (replaced atomically itself) point to it. A crash at any moment
leaves ``latest`` naming a complete checkpoint -- or, when the same step was being re-saved,
the old copy moved aside, which :func:`latest_checkpoint` finds; the older ones are pruned to
``keep_last``.

Loading checks each file in two stages, so the most precise message wins: first its format
and values (a file that does not parse, a config the weights do not fit, NaN or inf weights:
each named with what is wrong), then its SHA-256 against ``checksums.sha256`` (a file that
parses but changed since it was saved: flipped bits, an edit, an export written over it).
Checkpoints from before checksums get the first stage only. Each failure names the damaged
file and the run's other complete checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..accel import set_module_forms
from ..devices import resolve_device
from ..files import atomic_write, atomic_write_text, fsync_path, sha256_file
from ..processes import Process
from ..validation import is_real, model_attribute
from .build import build_model, build_process
from .config import TrainConfig, config_from_text, config_to_text, load_config
from .generate import Labels, generate
from .latent import autoencoder_folder, check_autoencoder, check_latent_shape
from .model_card import card_path, check_card_target, is_difflab_card, model_card
from .sharding import DCP_FOLDER, is_sharded, load_full_weights

__all__ = ["save_checkpoint", "new_checkpoint_folder", "latest_checkpoint", "resolve_checkpoint", "read_checkpoint", "load",
           "LoadedRun", "atomic_write", "atomic_write_text", "export_model", "EXPORT_DTYPES",
           "verify_checkpoint", "MANIFEST"]

LATEST = "latest"
PREFIX = "step_"


def _state_dict_cpu(weights: Union[nn.Module, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """A module's state dict (or a state dict) as CPU tensors of its own."""
    # clone: safetensors refuses tensors that share memory (tied weights) and needs contiguity
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


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


def new_checkpoint_folder(root: Union[str, Path], step: int) -> Path:
    """A fresh temporary folder for checkpoint ``step`` in ``root`` (``.tmp-step_<step>-<random>``),
    which :func:`save_checkpoint` (``folder=``) fills and renames into place; a sharded run's
    processes write their shards into its ``dcp/`` first. An interrupted one is pruned later."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{PREFIX}{step:08d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def save_checkpoint(
    root: Union[str, Path],
    step: int,
    *,
    config: TrainConfig,
    model: Union[nn.Module, Mapping[str, Tensor]],
    ema,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler=None,
    rng: Sequence[dict],
    state: dict,
    keep_last: int = 2,
    ema_weights: Optional[Mapping[str, Tensor]] = None,
    folder: Optional[Path] = None,
    sharded: bool = False,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically, point ``root/latest`` at it, prune old ones.

    ``model``: the network or its whole weights; ``ema_weights``: the EMA's whole weights
    (default: ``ema.model``'s). ``folder``: a folder of :func:`new_checkpoint_folder` to fill
    (default: a new one). ``sharded``: the optimizer's state lies in the folder's ``dcp/``
    already (``sharding.save_sharded``), so optimizer.pt keeps only its settings."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:08d}"
    final = root / name
    tmp = folder if folder is not None else new_checkpoint_folder(root, step)
    try:
        (tmp / "config.yaml").write_text(config_to_text(config))
        save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
        save_file(_state_dict_cpu(ema.model if ema_weights is None else ema_weights), str(tmp / "ema.safetensors"))
        optim = _plain_numbers(optimizer.state_dict(), "param_groups")
        saved = {"optimizer": optim,
                 "scheduler": _plain_numbers(scheduler.state_dict(), "base_lrs", "_last_lr"),
                 "scaler": scaler.state_dict() if scaler is not None else None}
        if sharded:  # AdamW's moments are in dcp/; its settings (lr, betas, ...) stay for the resume's checks
            saved["optimizer"] = {"param_groups": optim["param_groups"], "state": None}
        torch.save(saved, tmp / "optimizer.pt")
        torch.save(list(rng), tmp / "rng.pt")
        meta = dict(state, step=step, ema={"decay": ema.decay, "warmup": ema.warmup,
                                           "num_updates": ema.num_updates},
                    torch_version=torch.__version__, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        if sharded:
            meta["sharded_state"] = DCP_FOLDER
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
        _write_manifest(tmp)  # inside the temporary folder: renamed into place with the rest
        for f in _files(tmp):
            fsync_path(f)
        for d in [p for p in tmp.iterdir() if p.is_dir()] + [tmp]:
            fsync_path(d)
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


# ------------------------------------------------------------------ checksums
MANIFEST = "checksums.sha256"
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64})  ((?:[A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+)$")  # (dcp/ one level down)


def _files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder and of its sub-folders (``dcp/``), sorted."""
    return sorted(f for f in folder.rglob("*") if f.is_file())


def _write_manifest(folder: Path) -> None:
    """``checksums.sha256``: a SHA-256 of every other file of the checkpoint, in the format of
    ``sha256sum`` (``cd step_N && sha256sum -c checksums.sha256`` checks it by hand)."""
    files = [f for f in _files(folder) if f.relative_to(folder).as_posix() != MANIFEST]
    (folder / MANIFEST).write_text("".join(f"{sha256_file(f)}  {f.relative_to(folder).as_posix()}\n" for f in files))


def _read_manifest(ck: Path) -> Optional[dict[str, str]]:
    """{file name: SHA-256} of a checkpoint, or None for a checkpoint written before difflab
    recorded checksums (those still load: their files are checked by format and values only)."""
    file = ck / MANIFEST
    if not file.is_file():
        return None
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _damaged(file, f"unreadable: {err}") from None
    sums = {}
    for line in lines:
        m = _MANIFEST_LINE.match(line)
        if m is None:
            raise _damaged(file, f"not a list of '<sha256>  <file>' lines: {line[:60]!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def verify_checkpoint(path: Union[str, Path], files: Optional[Sequence[str]] = None) -> Path:
    """Check the checkpoint's files (``files``: those names; default: every file in its
    ``checksums.sha256``) against the SHA-256 recorded when it was saved; ValueError naming the
    first damaged file and the run's other complete checkpoints. A checkpoint without the
    manifest (written before difflab recorded one) passes. Returns the checkpoint folder."""
    ck = resolve_checkpoint(path)
    sums = _read_manifest(ck)
    if sums is None:
        return ck
    for name in (files if files is not None else sorted(sums)):
        file = ck / name
        if name not in sums:
            raise _damaged(ck / MANIFEST, f"it records no checksum for {name}")
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is incomplete"
                                    f"{_others(ck)}")
        if sha256_file(file) != sums[name]:
            raise _damaged(file, f"its SHA-256 differs from the one recorded in {MANIFEST} when it was "
                                 "saved: it changed since (bit rot, a partial copy, an edit, or a file "
                                 "written over it)")
    return ck


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
    for root in (run_dir / "checkpoints", run_dir):
        pointer = root / LATEST
        if pointer.is_file():
            name = _pointer_name(pointer)
            if name is not None and _complete(root / name):
                return root / name
            aside = [] if name is None else sorted(
                (p for p in root.glob(f".old-{name}-*") if _complete(p)), key=lambda p: p.stat().st_mtime)
            done = _complete_checkpoints(root)
            if name is None:  # a damaged pointer (binary junk, an edit): say which, and what is used
                _note_once(f"note: {str(pointer)!r} is damaged (not the name of a checkpoint folder); " + (
                    f"using the newest complete checkpoint, {str(done[-1])!r} (the next checkpoint saved "
                    "rewrites the pointer)" if done else "and no complete checkpoint is left"))
            if aside or done:
                return (aside or done)[-1]
    return None


def _complete(p: Path) -> bool:
    return (p / "state.json").is_file()  # written last, before the rename


def _complete_checkpoints(root: Path) -> list[Path]:
    """The complete ``step_*`` folders of a checkpoints folder, oldest first."""
    return sorted(p for p in root.glob(f"{PREFIX}*") if _complete(p))


def _pointer_name(pointer: Path) -> Optional[str]:
    """The checkpoint name ``latest`` holds, or None when it holds anything else."""
    try:
        name = pointer.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if re.fullmatch(rf"{PREFIX}[0-9]+", name) else None


_noted: set = set()


def _note_once(msg: str) -> None:
    """Print a note to stderr once per process (the finder runs several times per command)."""
    if msg not in _noted:
        _noted.add(msg)
        print(msg, file=sys.stderr)


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


def read_checkpoint(path: Union[str, Path], verify: bool = True, weights: bool = True) -> dict:
    """Everything in a checkpoint, on the CPU: config, model, ema, optimizer, rng, state. Each
    file is checked as it is parsed, then (``verify``) against its recorded SHA-256.
    ``weights=False`` leaves the whole weights unread (model and ema None: a sharded resume
    reads its shards from ``dcp/`` instead)."""
    ck = resolve_checkpoint(path)
    out = {
        "path": ck,
        "config": load_config(ck / "config.yaml"),
        "model": _read_weights(ck / "model.safetensors") if weights else None,
        "ema": _read_weights(ck / "ema.safetensors") if weights else None,
        "optimizer": _read_torch(ck / "optimizer.pt"),
        "rng": _read_torch(ck / "rng.pt"),
        "state": _read_state(ck / "state.json"),
    }
    if verify:
        verify_checkpoint(ck)
    return out


# A hand-damaged checkpoint (truncated, overwritten or edited file) gets an error naming the
# file, not the parser's traceback, and the run's other complete checkpoints.
def _damaged(file: Path, what: str) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r} is damaged ({what}); restore it{_others(file.parent)}")


def _others(ck: Path) -> str:
    """The run's complete checkpoints other than ``ck``, as the end of an error message."""
    if not ck.name.startswith((PREFIX, ".old-")):  # not a checkpoint folder (an exported file's)
        return ""
    others = [p.name for p in _complete_checkpoints(ck.parent) if p.resolve() != ck.resolve()]
    if not others:
        return f"; the run has no other complete checkpoint in {str(ck.parent)!r}"
    return (f", or use another complete checkpoint of the run in {str(ck.parent)!r}: {', '.join(others)} "
            f"(--ckpt that folder; to resume from it, move {ck.name} out of {str(ck.parent)!r})")


def _read_weights(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is incomplete")
    try:
        weights = load_file(str(file))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean a bad file
        raise _damaged(file, f"not a readable safetensors file: {err}") from None
    bad = _non_finite(weights)
    if bad:  # a checkpoint is written only after the NaN check: its weights are finite
        raise _damaged(file, bad)
    return weights


def _non_finite(weights: dict[str, Tensor]) -> Optional[str]:
    """What is not finite in ``weights`` (corrupted bytes that still parse), or None."""
    for k, v in weights.items():
        if v.is_floating_point():
            n = int((~torch.isfinite(v)).sum())
            if n:
                return f"{n} of the {v.numel()} values of weight {k!r} are NaN or inf"
    return None


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
    ``.proc``, ``.num_classes`` (or a text model's ``.tokenizer``), ``.config``, ``.step``;
    ``.sample(n, ...)``; a latent run's ``.autoencoder`` (from ``RUN/autoencoder``; else None),
    which ``.sample`` decodes with.

    The networks know the process they were trained under: ``model.trained_process`` is
    ``.proc``, and ``dl.sample`` refuses to sample them under a process that means something
    else (another kind, prediction or schedule: ``proc.signature()``), which would give noise."""

    def __init__(self, config: TrainConfig, model: nn.Module, ema_model: nn.Module,
                 proc: Process, state: dict, path: Path) -> None:
        model.trained_process = ema_model.trained_process = proc
        self.config, self.model, self.ema_model, self.proc = config, model, ema_model, proc
        self.state, self.path = state, path
        self.step: int = state["step"]
        self.num_classes: Optional[int] = getattr(ema_model, "num_classes", None)
        self.tokenizer = model_attribute(ema_model, "tokenizer")  # a text model's: prompts -> token ids
        self.sample_shape = tuple(state["sample_shape"])
        self.image_shape = tuple(state.get("image_shape") or state["sample_shape"])
        self.autoencoder: Optional[nn.Module] = None  # a latent run's, which decodes its samples (load sets it)

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.path)!r}, model={self.config.model.name!r}, step={self.step}, "
                f"num_classes={self.num_classes}, shape={self.image_shape})")

    def sampling_defaults(self) -> tuple[str, int]:
        """The sampler and steps this run samples with unless told: a few-step student's own (its
        config's ``sample.sampler`` and ``steps``: consistency and 1, or a progressive student's DDIM
        steps), else DDIM with 50 steps."""
        cfg = self.config
        if cfg.distill.method is not None or cfg.consistency_model:
            return cfg.sample.sampler, cfg.sample.steps
        return "ddim", 50

    def sample(
        self,
        n: int,
        sampler: Optional[str] = None,
        steps: Optional[int] = None,
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
        prompts: Union[None, str, Sequence[str]] = None,
        negative_prompts: Union[None, str, Sequence[str]] = None,
        **options,
    ) -> Tensor:
        """n samples [n, *image_shape] in about [-1, 1] (``sampler``, ``steps``: default
        :meth:`sampling_defaults`). ``labels``: an int (all alike), n ints,
        or None (unconditional); a text model's ``prompts``: one string (all alike) or n, "" the
        empty caption, and ``negative_prompts`` (one or n) what guidance moves away from in place of
        the empty caption; ``guidance`` w != 1 needs labels (or prompts). Same seed, same samples.
        ``clip_x0`` defaults to the run's process's: the config's ``sample.clip_x0``, else the
        data's range (None: no clipping). ``device``:
        where to sample (None: where the model is). ``model``: the network to sample with instead
        of the EMA (or, ``ema=False``, the raw) weights, e.g. one of them accelerated
        (``dl.accel.accelerate(run.ema_model, ...)``)."""
        if model is None:
            model = self.ema_model if ema else self.model
        default_sampler, default_steps = self.sampling_defaults()
        sampler = default_sampler if sampler is None else sampler
        steps = default_steps if steps is None else steps
        if labels is None and prompts is None and is_real(guidance) and guidance != 1.0:
            if self.tokenizer is not None:
                raise ValueError(f"guidance={guidance} needs prompts= (what to guide towards); e.g. "
                                 f"run.sample(n, guidance={guidance}, prompts='a bold 7 on the left')")
            if self.num_classes is None:
                raise ValueError(f"guidance={guidance} needs a class-conditional model; this run's "
                                 f"{self.config.model.name!r} model is unconditional: use guidance=1")
            raise ValueError(f"guidance={guidance} needs labels= (the class to guide towards: an int, or n "
                             f"ints in 0 .. {self.num_classes - 1}); e.g. run.sample(n, guidance={guidance}, labels=3)")
        if device is not None:
            device = resolve_device(device, "device")
        if self.config.latent.autoencoder is not None and self.autoencoder is None:
            raise ValueError(f"{str(self.path)!r} is a latent diffusion model and has no autoencoder to decode its "
                             "samples (an exported file carries the model alone): set run.autoencoder = "
                             "dl.load(AUTOENCODER_RUN).ema_model (the run's RUN/autoencoder), or load the run folder")
        return generate(model, self.proc, n, self.sample_shape, image_shape=self.image_shape,
                        sampler=sampler, steps=steps, guidance=guidance, labels=labels, seed=seed,
                        eta=eta, device=device, progress=progress, clip_x0=clip_x0, prompts=prompts,
                        negative_prompts=negative_prompts, autoencoder=self.autoencoder, **options)

    def to(self, device) -> "LoadedRun":
        device = resolve_device(device, "device")
        self.model.to(device)
        self.ema_model.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
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
    verify_checkpoint(ck, _SAMPLING_FILES)  # after the format checks, whose messages say more
    run = LoadedRun(cfg, model, ema_model, build_process(cfg), state, ck)
    if cfg.latent.autoencoder is not None:  # latent diffusion: decoded by the run's own copy (training/latent.py)
        where = autoencoder_folder(ck, cfg.latent.autoencoder)
        run.autoencoder = check_autoencoder(load(where, device).ema_model, repr(str(where)))
        check_latent_shape(run.autoencoder, run.image_shape, run.sample_shape, repr(str(where)))
    return run


_SAMPLING_FILES = ("config.yaml", "state.json", "model.safetensors", "ema.safetensors")


# --------------------------------------------------------------------- export
# One portable file per model: the weights of one network (the EMA by default) in a
# safetensors file whose metadata holds the run's config and shapes, so ``dl.load(file)``
# rebuilds it with no run folder. fp16 / bf16 halve the size (weights are cast back to float32
# on loading; fp16 rounds each weight by at most 2^-11 relative, bf16 by 2^-8).
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_EXPORT_FORMAT = "difflab-model/1"


def export_model(path: Union[str, Path], out: Union[str, Path], *, ema: bool = True,
                 dtype: str = "fp32", force: bool = False, card: bool = True,
                 metrics: Union[str, Path, None] = None) -> Path:
    """Write one network of a run (``ema=True``: the EMA weights, which sampling uses) to
    ``out``, a single ``.safetensors`` file with the config in its metadata; written atomically.
    ``dtype``: "fp32" (exact), "fp16" or "bf16" (half the size). Returns ``out``.
    Never inside a run's ``checkpoints/`` folder (it would replace or sit among a checkpoint's
    files); an existing ``out`` is replaced only with ``force=True``.

    ``card``: also write the model card ``FILE.md`` beside ``FILE.safetensors``
    (:func:`~difflab.training.model_card.model_card`: the model, its training, the metrics of
    ``difflab eval`` -- ``metrics``, else found where eval writes them -- and the file's
    SHA-256), atomically. A file of that name that is not an unedited card of difflab's is
    the user's: the export is refused before anything is written (``card=False`` exports
    without one). The card of the weights being replaced is removed before they are, so a card
    never describes other weights than the file beside it."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"out must name a .safetensors file, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"out {str(out)!r} is a folder; name a file, e.g. {str(out / 'model.safetensors')!r}")
    inside = _checkpoints_folder_of(out)
    if inside is not None:
        raise ValueError(f"out {str(out)!r} lies inside the checkpoints folder {str(inside)!r}, whose files "
                         "the run's checkpoints own (an export there replaces or shadows them); write it "
                         f"elsewhere, e.g. {str(inside.parent / out.name)!r}")
    if out.exists() and not force:
        raise FileExistsError(f"out {str(out)!r} exists; pass --force (force=True) to replace it, or choose "
                              "another file name")
    if not card and metrics is not None:
        raise ValueError("metrics go into the model card, and card=False (--no-card) writes none: drop one of them")
    card_file = card_path(out)
    if card:
        check_card_target(card_file)  # before anything is written
    ck = resolve_checkpoint(path)
    weights = _read_weights(ck / ("ema.safetensors" if ema else "model.safetensors"))
    verify_checkpoint(ck, ["config.yaml", "state.json", "ema.safetensors" if ema else "model.safetensors"])
    cast = EXPORT_DTYPES[dtype]
    weights = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    bad = _non_finite(weights)
    if bad:  # finite in float32, beyond the range of the narrower type (fp16: |w| > 65504)
        raise ValueError(f"cannot export as {dtype}: {bad} after the cast (weights beyond {dtype}'s range); "
                         "export as bf16 or fp32")
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
    text = None

    def write(tmp: Path) -> None:
        nonlocal text
        save_file(weights, str(tmp), metadata=meta)
        if card:  # rendered from the file as written (its SHA-256) before it replaces anything
            text = model_card(ck, tmp, name=out.name, metrics=metrics, search=(Path("eval") / Path(path).name,))
        if is_difflab_card(card_file):  # it describes the weights about to be replaced
            card_file.unlink()

    atomic_write(out, write)
    if text is not None:
        atomic_write_text(card_file, text)
    return out


def _checkpoints_folder_of(out: Path) -> Optional[Path]:
    """The run's ``checkpoints/`` folder that ``out`` lies in (in it, or in one of its
    checkpoints), else None."""
    for folder in out.resolve().parents:
        if folder.name == "checkpoints" and ((folder / LATEST).is_file() or _complete_checkpoints(folder)):
            return folder
        if _complete(folder) and folder.name.startswith((PREFIX, ".old-", ".tmp-")):
            return folder.parent
    return None


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
    cfg = config_from_text(meta["config"], f"the 'config' metadata of exported model {str(path)!r}")
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
    bad = _non_finite(weights)
    if bad:  # export refuses non-finite weights: these are corrupted bytes that still parse
        raise ValueError(f"exported model {str(path)!r} is damaged ({bad}); export it again with "
                         "`difflab export`")
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
    set_module_forms(model)  # computed in the forms the trainer trained and sampled its grids with
    return model.to(device).eval().requires_grad_(False)


def load_matching(model: nn.Module, weights: dict[str, Tensor]) -> Optional[str]:
    """``model.load_state_dict(weights)``; None, or (weights that don't fit the network) torch's
    first difference, for an error that names the file and the fix instead of its traceback.
    A sharded network (``sharding.shard``) takes whole weights too, each process its shards
    (every process must call it then)."""
    if is_sharded(model):
        return load_full_weights(model, weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        detail = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        return detail[0] if detail else str(err)
    return None
