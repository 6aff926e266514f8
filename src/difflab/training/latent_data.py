"""A latent run's training data: its images encoded once by the autoencoder, cached in the run
folder, and the autoencoder copied there (``latent: {autoencoder: DIR}``, training/latent_config.py).

When a run starts, :func:`latent_training_data`

1. loads the autoencoder's EMA network from the config's ``latent.autoencoder`` -- or, when a run
   resumes, from the run's own copy ``RUN/autoencoder``, the one its latents came from -- and
   checks it (an autoencoder, its latent scale measured, images of its channel count and of a
   size its factor f divides, in [-1, 1]);
2. copies the autoencoder's run folder into ``RUN/autoencoder`` (its config and the checkpoint's
   config, state and weights with their recorded SHA-256s; built beside and renamed into place),
   so the run folder alone samples (``dl.load``) when the original moves or changes;
3. reads the latents from ``RUN/latents.safetensors`` when the cache was made from the same
   autoencoder weights (the SHA-256 of its ``ema.safetensors``), the same images (the SHA-256 of
   their float32 bytes), the same posterior rule and seed; otherwise encodes the images --
   ``s (z - shift)``, z one draw of q(z | x) per image from a CPU generator seeded by the run's
   seed (``latent.posterior: sample``) or its mean (``mean``) -- and writes the cache atomically.

The trainer then trains on the latents as on any data: the batches, draws, checkpoints and the
exact resume are the pixel-space run's (a resumed run reads the same latents back). Only the
process that writes checkpoints writes these files, and nothing is written into a folder that
holds another run (the trainer refuses that one a moment later).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..files import atomic_write, fsync_path, sha256_file
from ..models.autoencoder import AutoencoderKL
from ..validation import IMAGE_RANGE_TOL
from .checkpoint import MANIFEST, latest_checkpoint, load, resolve_checkpoint
from .config import TrainConfig, load_config
from .latent import AUTOENCODER_FOLDER, CODEC_BATCH, check_autoencoder, encode_images
from .run_config import render_run_config

__all__ = ["latent_training_data", "load_autoencoder", "copy_autoencoder_run", "LATENT_CACHE"]

LATENT_CACHE = "latents.safetensors"  # RUN/latents.safetensors: the encoded training data
_COPIED_FILES = ("config.yaml", "state.json", "model.safetensors", "ema.safetensors")  # what dl.load reads


def load_autoencoder(path, where: str, device=None) -> tuple[AutoencoderKL, Path]:
    """The EMA autoencoder of the run (or checkpoint) folder ``path`` and its checkpoint folder,
    checked (:func:`~difflab.training.latent.check_autoencoder`); ``where`` names the source in
    errors."""
    try:
        ck = resolve_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}; train an autoencoder there first (difflab train-autoencoder "
                                f"--config configs/mnist_vae.yaml --out {path})") from None
    model = load(ck, device or "cpu").ema_model
    return check_autoencoder(model, where), ck


def copy_autoencoder_run(checkpoint: Path, dest: Path) -> Path:
    """Write the autoencoder of ``checkpoint`` (a checkpoint folder of an autoencoder run) as the
    run folder ``dest``: ``config.yaml``, ``checkpoints/latest`` and ``checkpoints/<step>/`` with
    the files ``dl.load`` reads and their lines of ``checksums.sha256`` (the optimizer state stays
    behind). Built in a temporary folder beside ``dest`` and renamed into place; an older ``dest``
    is replaced only after the new one is complete. Returns ``dest``."""
    checkpoint, dest = Path(checkpoint), Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    step = tmp / "checkpoints" / checkpoint.name
    try:
        step.mkdir(parents=True)
        for name in _COPIED_FILES:
            shutil.copyfile(checkpoint / name, step / name)
        if (checkpoint / MANIFEST).is_file():  # the recorded sums of the copied files: still theirs
            lines = [line for line in (checkpoint / MANIFEST).read_text().splitlines()
                     if line.split("  ", 1)[-1] in _COPIED_FILES]
            (step / MANIFEST).write_text("".join(line + "\n" for line in lines))
        (tmp / "checkpoints" / "latest").write_text(checkpoint.name + "\n")
        (tmp / "config.yaml").write_text(render_run_config(load_config(checkpoint / "config.yaml")))
        for f in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            fsync_path(f)
        fsync_path(tmp)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(dest, old)
        os.rename(tmp, dest)
        fsync_path(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _data_sha256(x: Tensor) -> str:
    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _read_cache(path: Path, key: dict) -> Optional[Tensor]:
    """The cached latents when ``path`` holds latents made under ``key``, else None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("key", "null")) != key:
                return None
            return f.get_tensor("latents")
    except Exception:  # noqa: BLE001 - a damaged or foreign file: encoded anew and written over
        return None


def _check_images(x: Tensor, ae: AutoencoderKL, data: str, where: str) -> None:
    f = ae.downsample_factor
    if x.ndim != 4 or x.shape[1] != ae.in_channels or x.shape[2] % f or x.shape[3] % f:
        raise ValueError(
            f"{data} has samples of shape {tuple(x.shape[1:])}, and the autoencoder {where} encodes images "
            f"[{ae.in_channels}, H, W] with H and W divisible by its f = {f}; use data of that shape, or another "
            "autoencoder")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if max(-lo, hi) > 1 + IMAGE_RANGE_TOL:
        raise ValueError(f"{data} lies in [{lo:.4g}, {hi:.4g}]; the autoencoder {where} encodes images scaled to "
                         "[-1, 1]: scale the data to [-1, 1]")


def _check_clip(cfg: TrainConfig, latents: Tensor, where: str) -> Tensor:
    """Latents reaching beyond a ``sample.clip_x0`` the config sets would be sampled clamped to it;
    refused with the latents' range (the trainer's own check of the data speaks of images)."""
    clip = cfg.sample.clip_x0
    if clip is None or latents.numel() == 0:
        return latents
    lo, hi = (float(v) for v in torch.aminmax(latents))
    if max(-lo, hi) > clip * (1 + IMAGE_RANGE_TOL):
        raise ValueError(
            f"config field 'sample.clip_x0' = {clip:g} clamps the x0 estimates of this latent run, and the latents of "
            f"the autoencoder {where} lie in [{lo:.4g}, {hi:.4g}]: remove sample.clip_x0 (latent diffusion does not "
            f"clip its latents by default; the decoded images are clamped to [-1, 1]), or set it >= {max(-lo, hi):.4g}")
    return latents


def latent_training_data(cfg: TrainConfig, out: Path, x: Tensor, *, resume: bool, write: bool, data: str,
                         device=None, say: Callable[[str], None] = print) -> tuple[AutoencoderKL, Tensor]:
    """(the autoencoder, the latents of the images ``x`` [N, C, H, W]) for the latent run ``cfg``
    training into ``out`` (see the module's docstring). ``write``: this process writes the run's
    files (process 0); ``data`` names the images in errors; ``device``: where the autoencoder
    encodes and later decodes the sample grids. The latents come back on the CPU."""
    named = cfg.latent.autoencoder
    where = f"{named!r} (config field 'latent.autoencoder')"
    if cfg.loss == "autoencoder":
        raise ValueError("config field 'latent.autoencoder': an autoencoder run (loss: autoencoder) trains on "
                         "pixels; latent.autoencoder is for diffusion runs: remove it")
    if cfg.data.flatten:
        raise ValueError("config field 'data.flatten': latent diffusion trains on the autoencoder's latents "
                         "[c, h, w], which the decoder takes as they are: use data.flatten: false and a "
                         "convolutional network (e.g. unet) of the latents' channels")
    out = Path(out)
    copy = out / AUTOENCODER_FOLDER
    own = resume and latest_checkpoint(copy) is not None
    ae, ck = load_autoencoder(copy if own else named, f"{str(copy)!r} (the run's copy)" if own else where, device)
    ae_sha = sha256_file(ck / "ema.safetensors")
    if own and Path(named).exists():
        try:
            original = sha256_file(resolve_checkpoint(named) / "ema.safetensors")
        except (FileNotFoundError, OSError):
            original = ae_sha
        if original != ae_sha:
            say(f"note: the autoencoder {named!r} changed since this run began; the resumed run goes on with the "
                f"one it was trained on, its copy {str(copy)!r} (a run on the new one is a new run)")
    _check_images(x, ae, data, where)
    writable = write and (resume or latest_checkpoint(out) is None)  # (not into another run's folder)
    if writable and not own:
        copy_autoencoder_run(ck, copy)
    key = {"autoencoder_sha256": ae_sha, "data_sha256": _data_sha256(x), "shape": list(x.shape),
           "posterior": cfg.latent.posterior, "seed": cfg.seed, "batch": CODEC_BATCH}
    cache = out / LATENT_CACHE
    latents = _read_cache(cache, key) if cache.is_file() else None
    if latents is not None:
        return ae, _check_clip(cfg, latents, where)
    if cache.is_file():
        say(f"note: {str(cache)!r} holds the latents of another autoencoder or other data: encoding anew")
    say(f"encoding {len(x)} images with the autoencoder ({cfg.latent.posterior} of q(z | x)) into {str(cache)!r}")
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.latent.posterior == "sample" else None
    latents = encode_images(ae, x, sample=cfg.latent.posterior == "sample", generator=generator).float().cpu()
    if writable:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: save_file({"latents": latents.contiguous()}, str(tmp),
                                                  metadata={"key": json.dumps(key)}))
    return ae, _check_clip(cfg, latents, where)
