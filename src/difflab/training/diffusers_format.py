"""diffusers checkpoints in and out: a ``UNet2DModel`` folder <-> a difflab run folder.

    from_diffusers("ddpm-ema-cifar10/", "runs/cifar10")   # a DDPMPipeline folder, or a unet/ folder
    to_diffusers("runs/digits", "digits_ddpm/")           # DDPMPipeline.from_pretrained("digits_ddpm/")

diffusers' files are read and written directly (JSON and safetensors): converting needs no
diffusers. A diffusers pipeline folder holds ``model_index.json``, ``unet/config.json`` with
``unet/diffusion_pytorch_model.safetensors``, and ``scheduler/scheduler_config.json``.

The network. diffusers' ``UNet2DModel`` and difflab's :class:`~difflab.models.UNet` are the same
DDPM / ADM U-Net, so the conversion is a renaming of the state dict plus three exact rewrites:

- **time features**: diffusers' ``Timesteps`` gives [cos, sin] when ``flip_sin_to_cos`` (its
  default) and [sin, cos] otherwise, at frequencies w_i = exp(-ln(10000) i / (h - freq_shift)),
  h = half the width; difflab's :class:`~difflab.models.SinusoidalEmbedding` gives [sin, cos] at
  the same frequencies (the U-Net's ``freq_shift``). A flip is undone exactly by swapping the two
  halves of the input columns of the first time-MLP layer (W [cos, sin]^T = [W_sin, W_cos]
  [sin, cos]^T).
- **attention**: diffusers' separate to_q, to_k, to_v (older files: query, key, value, proj_attn)
  are difflab's fused ``qkv`` stacked [W_q; W_k; W_v]; heads split each the same way (h d + j).
- **class labels**: diffusers' ``num_class_embeds`` = K labels 0..K-1; difflab adds the null label
  K of classifier-free guidance (:class:`~difflab.models.LabelEmbedding`). A difflab model written
  out keeps its null row as diffusers' label K (``num_class_embeds`` = K + 1, recorded as
  ``_difflab_null_label`` in config.json, a private key diffusers ignores), so the round trip is
  exact. A diffusers model read in has no null label: its row K is zero (the network then sees the
  time embedding alone), and guidance of such a model is reported as untrained.

The original DDPM checkpoints (google/ddpm-cifar10-32 and its siblings, converted from the
TensorFlow code) set ``freq_shift: 1``, ``norm_eps: 1e-6`` and ``downsample_padding: 0`` (zeros
on the right and bottom of the strided convolution's input only): difflab's U-Net takes all three
as options of the same names, and both directions carry them.

What difflab's U-Net cannot compute is refused by name with the fix, before anything is written
(:data:`BLOCKS` lists the block types it maps): cross-attention, skip and k-diffusion blocks,
Fourier or learned time embeddings, a ``downsample_padding`` other than 0 or 1 (it changes the
downsampled size), ``mid_block_scale_factor`` != 1, a mid-block attention without its GroupNorm,
resampling that differs between levels.

The process. ``DDPMScheduler`` and ``DDIMScheduler`` configs map to ``diffusion``: beta_schedule
linear, scaled_linear, squaredcos_cap_v2 (difflab's cosine) and sigmoid (DDPM only), with
``num_train_timesteps`` = T and ``prediction_type`` epsilon / v_prediction / sample = eps / v / x0;
``clip_sample`` with ``clip_sample_range`` c is ``sample.clip_x0: c``. Options that choose how a
pipeline samples rather than what the network means are notes wherever the pipeline then samples
otherwise than the run does by default, each naming difflab's option that matches it or saying
that none does: ``variance_type`` fixed_large; the timestep grid (diffusers' default "leading",
with ``steps_offset``, against difflab's "trailing": ``spacing="leading"`` or explicit
``timesteps=``; DDIMScheduler's step from t to t - T // steps, off a "linspace" grid, has no
equivalent); DDIM with clipping (difflab's DDIM is diffusers' ``use_clipped_model_output=True``).
``variance_type`` learned_range (improved DDPM: the network outputs [prediction, v]) is the U-Net's
``learn_sigma`` under ``loss: hybrid``, both ways. A log-variance output (``learned``),
``trained_betas``, ``thresholding`` and zero-terminal-SNR rescaling are refused.

The run. :func:`from_diffusers` writes an ordinary run folder (``config.yaml`` and a step-0
checkpoint whose model and EMA weights are both the converted ones, with its checksums), built
in a temporary folder beside ``out`` and renamed into place: ``dl.load``, ``difflab sample``, the
editing commands and ``difflab eval`` read it like any run.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import schedules
from ..files import fsync_path
from ..models.unet import AttentionBlock, UNet
from ..samplers.registry import SAMPLERS
from ..samplers.timesteps import DISCRETE_SPACINGS
from .build import build_model, data_range
from .checkpoint import load, save_checkpoint
from .config import TrainConfig, apply_overrides
from .ema import EMA
from .run_config import render_run_config

__all__ = [
    "from_diffusers",
    "to_diffusers",
    "unet_from_diffusers_config",
    "diffusion_from_scheduler_config",
    "DiffusersUNet",
    "Converted",
    "BLOCKS",
    "UNET_DEFAULTS",
    "SCHEDULER_DEFAULTS",
    "WEIGHTS_NAME",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_BIN_NAME = "diffusion_pytorch_model.bin"
# The diffusers version whose file format the writer follows (the oldest the project tests against,
# pyproject's diffusers>=0.30); informational: diffusers reads the files whatever the number.
_WRITTEN_FORMAT = "0.30.0"

# UNet2DModel's constructor defaults (diffusers 0.42; tests/training/test_diffusers_format.py checks
# them against the installed diffusers): a config.json that leaves a field out means its default.
UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

_SCHEDULER_COMMON = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "clip_sample": True, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
SCHEDULER_DEFAULTS = {  # (diffusers 0.42, checked by the tests like UNET_DEFAULTS)
    "DDPMScheduler": {**_SCHEDULER_COMMON, "variance_type": "fixed_small"},
    "DDIMScheduler": {**_SCHEDULER_COMMON, "set_alpha_to_one": True},
}

# The block types difflab's U-Net computes: name -> (has self-attention, its resampler: "conv" for a
# strided / nearest-upsampling convolution, "resnet" for a residual block that resamples, or None
# where the block's downsample_type / upsample_type decides). diffusers strips a "UNetRes" prefix.
BLOCKS = {
    "down": {"DownBlock2D": (False, "conv"), "AttnDownBlock2D": (True, None),
             "ResnetDownsampleBlock2D": (False, "resnet")},
    "up": {"UpBlock2D": (False, "conv"), "AttnUpBlock2D": (True, None), "ResnetUpsampleBlock2D": (False, "resnet")},
}
# What the blocks difflab lacks are, for the refusal's message.
_OTHER_BLOCKS = {
    "CrossAttn": "cross-attention to text embeddings (a latent text-to-image U-Net)",
    "SimpleCrossAttn": "cross-attention to text embeddings",
    "Skip": "NCSN++'s skip path with FIR resampling (score SDE models)",
    "K": "k-upscaler blocks",
    "Encoder": "a VAE encoder block, without a time embedding",
    "Decoder": "a VAE decoder block, without a time embedding",
}
_RESAMPLERS = {"conv": "conv", "resnet": "resblock"}  # diffusers' kind -> difflab's UNet(resample=...)
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# diffusers' beta_schedule -> difflab's schedule and the scheduler fields that are its arguments
_SCHEDULES = {"linear": ("linear", ("beta_start", "beta_end")),
              "scaled_linear": ("scaled_linear", ("beta_start", "beta_end")),
              "squaredcos_cap_v2": ("cosine", ()),
              "sigmoid": ("sigmoid", ("beta_start", "beta_end"))}

# difflab's names inside a residual block and an attention block -> diffusers'
_RES_LEAVES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
               "conv2": "conv2", "skip": "conv_shortcut"}
_ATTN_LEAVES = {"norm": "group_norm", "proj": "to_out.0"}
_QKV = ("to_q", "to_k", "to_v")
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14


def _refuse(what: str, why: str) -> ValueError:
    return ValueError(f"cannot convert: {what}: {why}")


# ----------------------------------------------------------------------- reading diffusers files
def read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{what} {str(path)!r} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} holds a {type(data).__name__}, not a JSON object of settings")
    return data


def _locate(src: Path, scheduler: Optional[Path]) -> tuple[Path, Path]:
    """The unet folder and the scheduler config file of a diffusers folder ``src``: a pipeline folder
    (model_index.json, unet/, scheduler/) or a UNet2DModel folder (config.json), whose scheduler is
    its own scheduler_config.json or the pipeline's ../scheduler/ -- or ``scheduler`` (a file, or a
    folder holding scheduler_config.json)."""
    if not src.exists():
        raise FileNotFoundError(f"diffusers folder {str(src)!r} does not exist")
    if not src.is_dir():
        raise ValueError(f"{str(src)!r} is a file; --from-diffusers takes a diffusers folder (a pipeline folder "
                         "with model_index.json, or a UNet2DModel folder with config.json)")
    if (src / "model_index.json").is_file():
        index = read_json_object(src / "model_index.json", "pipeline index")
        entry = index.get("unet")
        if not (isinstance(entry, list) and len(entry) == 2):
            parts = sorted(k for k in index if not k.startswith("_"))
            raise ValueError(f"pipeline folder {str(src)!r} has no unet (its model_index.json lists "
                             f"{', '.join(parts) or 'nothing'}); difflab converts pixel-space UNet2DModel pipelines "
                             "(DDPMPipeline, DDIMPipeline)")
        unet = src / "unet"
        found = src / "scheduler" / "scheduler_config.json"
    elif (src / "config.json").is_file():
        unet = src
        found = next((p for p in (src / "scheduler_config.json", src.parent / "scheduler" / "scheduler_config.json")
                      if p.is_file()), src / "scheduler_config.json")
    else:
        raise ValueError(f"{str(src)!r} is not a diffusers UNet2DModel folder: it holds neither model_index.json "
                         "(a pipeline) nor config.json (a model); give the folder diffusers' save_pretrained wrote")
    if scheduler is not None:
        found = scheduler / "scheduler_config.json" if scheduler.is_dir() else scheduler
        if not found.is_file():
            raise FileNotFoundError(f"--scheduler {str(scheduler)!r}: no scheduler config there (a "
                                    "scheduler_config.json, or a folder holding one)")
    elif not found.is_file():
        raise ValueError(f"{str(src)!r} has no scheduler config ({str(found)!r} is missing), so the noise schedule "
                         "the network was trained under is unknown; give it with --scheduler FILE (a DDPMScheduler "
                         "or DDIMScheduler scheduler_config.json)")
    return unet, found


def _read_weights(unet: Path) -> dict[str, Tensor]:
    """The state dict of a UNet2DModel folder: diffusion_pytorch_model.safetensors (or .bin, read
    with torch.load(weights_only=True): tensors only, no code)."""
    safe, binary = unet / WEIGHTS_NAME, unet / _BIN_NAME
    if safe.is_file():
        try:
            return load_file(str(safe))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a bad file either way
            raise ValueError(f"{str(safe)!r} is not a readable safetensors file ({err})") from None
    if binary.is_file():
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError
            raise ValueError(f"{str(binary)!r} cannot be read by torch.load(weights_only=True) "
                             f"({type(err).__name__}: {err})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{str(binary)!r} holds no state dict of tensors")
        return state
    others = sorted(p.name for p in unet.glob("diffusion_pytorch_model*"))
    hint = (f" (it holds {', '.join(others)}: sharded or variant weights; save the model unsharded, without a "
            "variant, with diffusers' save_pretrained)") if others else ""
    raise FileNotFoundError(f"no weights in {str(unet)!r}: expected {WEIGHTS_NAME} or {_BIN_NAME}{hint}")


# ---------------------------------------------------------------------------------- the network
@dataclass
class DiffusersUNet:
    """A UNet2DModel config read as difflab's: ``kwargs`` of :class:`~difflab.models.UNet`, whether
    its time features are flipped ([cos, sin]), its number of label rows and whether the last one
    is difflab's null label, the sample shape [C, H, W], and notes on what was read as diffusers
    reads it (defaults, ignored keys)."""

    kwargs: dict
    flip_sin_to_cos: bool
    class_rows: Optional[int]
    null_label_stored: bool
    sample_shape: list
    notes: list = field(default_factory=list)


def _block(kind: str, i: int, name) -> tuple[bool, Optional[str]]:
    """(attends, resampler) of down/up block type ``name``, or a refusal naming it."""
    option = f"{kind}_block_types[{i}] = {name!r}"
    if not isinstance(name, str):
        raise _refuse(option, "a block type is a name such as 'DownBlock2D'")
    base = name[7:] if name.startswith("UNetRes") else name
    if base in BLOCKS[kind]:
        return BLOCKS[kind][base]
    what = next((w for prefix, w in _OTHER_BLOCKS.items() if base.startswith(prefix) or prefix in base), None)
    known = ", ".join(BLOCKS[kind])
    raise _refuse(option, f"difflab's U-Net has no such block{f' ({what})' if what else ''}; it converts the "
                          f"{kind} blocks {known}")


def _int(option: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _refuse(f"{option} = {value!r}", f"expected an integer >= {low}")
    return value


def unet_from_diffusers_config(config: dict) -> DiffusersUNet:
    """difflab's reading of a UNet2DModel ``config.json`` (a dict): the :class:`DiffusersUNet`, or
    ValueError naming the first option difflab's U-Net cannot compute, with the fix."""
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise _refuse(f"config.json's model is {name!r}", "difflab converts diffusers' UNet2DModel (pixel-space DDPM "
                      "/ DDIM U-Nets); a UNet2DConditionModel is a text-conditioned latent model")
    c = dict(UNET_DEFAULTS)
    c.update({k: v for k, v in config.items() if not k.startswith("_") and k in UNET_DEFAULTS})
    notes = []
    ignored = sorted(k for k in config if not k.startswith("_") and k not in UNET_DEFAULTS)
    if ignored:  # diffusers ignores them too (with a warning): they build nothing
        notes.append(f"config.json keys that UNet2DModel does not take were ignored, as diffusers ignores them: "
                     f"{', '.join(ignored)}")

    def exact(option: str, want, why: str) -> None:
        if c[option] != want:
            raise _refuse(f"{option} = {c[option]!r}", why)

    exact("time_embedding_type", "positional", "difflab's U-Net embeds the time with sinusoidal features "
          "('positional'), not Fourier features or a learned table")
    freq_shift = c["freq_shift"]
    if isinstance(freq_shift, bool) or not isinstance(freq_shift, (int, float)) or not math.isfinite(freq_shift):
        raise _refuse(f"freq_shift = {freq_shift!r}", "expected a number (0, or 1 as in the original DDPM code)")
    exact("center_input_sample", False, "difflab's U-Net takes x_t as it is (no 2 x - 1 inside the network)")
    if c["act_fn"] not in ("silu", "swish"):
        raise _refuse(f"act_fn = {c['act_fn']!r}", "difflab's U-Net uses SiLU (diffusers' 'silu' or 'swish')")
    exact("mid_block_type", "UNetMidBlock2D", "difflab's U-Net has the middle block UNetMidBlock2D (residual "
          "block, attention, residual block)")
    exact("mid_block_scale_factor", 1, "difflab's residual blocks add their skip unscaled (output_scale_factor 1)")
    exact("class_embed_type", None, "difflab's U-Net embeds class labels with a table (class_embed_type null and "
          "num_class_embeds = K), not timestep-like or identity embeddings")
    norm_eps = c["norm_eps"]
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not 0 < norm_eps < 1:
        raise _refuse(f"norm_eps = {norm_eps!r}", "expected the GroupNorms' small positive eps (1e-5, or 1e-6 as "
                      "in the original DDPM code)")
    groups = _int("norm_num_groups", c["norm_num_groups"])
    widths = c["block_out_channels"]
    if not isinstance(widths, (list, tuple)) or not widths:
        raise _refuse(f"block_out_channels = {widths!r}", "expected a list of channel counts, one per level")
    widths = [_int("block_out_channels", w) for w in widths]
    levels = len(widths)
    down, up = c["down_block_types"], c["up_block_types"]
    if not (isinstance(down, (list, tuple)) and isinstance(up, (list, tuple)) and len(down) == len(up) == levels):
        raise _refuse(f"down_block_types / up_block_types = {down!r} / {up!r}",
                      f"expected one block type per level on each path ({levels} levels in block_out_channels)")
    down_kinds = [_block("down", i, b) for i, b in enumerate(down)]
    up_kinds = [_block("up", i, b) for i, b in enumerate(up)]

    attends = []
    for level in range(levels):
        d_att, u_att = down_kinds[level][0], up_kinds[levels - 1 - level][0]
        if d_att != u_att:
            raise _refuse(f"down_block_types[{level}] = {down[level]!r} with up_block_types[{levels - 1 - level}] = "
                          f"{up[levels - 1 - level]!r}", "difflab's U-Net attends at a level on both paths or on "
                          "neither; make both blocks of the level Attn* blocks, or neither")
        if d_att:
            attends.append(level)

    def resampler(kind: str, block: tuple) -> str:
        """How a block that resamples does it: its own way, or (Attn blocks) the model's option's."""
        r = block[1]
        if r is None:
            option = "downsample_type" if kind == "down" else "upsample_type"
            r = c[option]
            if r not in _RESAMPLERS:
                raise _refuse(f"{option} = {r!r}", "difflab resamples with a convolution ('conv') or a residual "
                              "block ('resnet')")
        return r

    # the down blocks of every level but the last resample, and the up blocks of every level but the first
    kinds = {("down", i): resampler("down", down_kinds[i]) for i in range(levels - 1)}
    kinds.update({("up", i): resampler("up", up_kinds[i]) for i in range(levels - 1)})
    used = sorted(set(kinds.values()))
    if len(used) > 1:
        where = ", ".join(f"{k}_block_types[{i}] {r}" for (k, i), r in kinds.items())
        raise _refuse("blocks that resample differently", f"difflab's U-Net resamples every level alike (resample "
                      f"= conv or resblock), and these blocks mix them: {where}")
    resample = _RESAMPLERS[used[0]] if used else "conv"
    # diffusers' Downsample2D(padding=p): zeros right and bottom for p = 0 (TF "SAME"), p on every side
    # otherwise; only the strided convolution reads it (a residual block downsamples by average pooling)
    padding = c["downsample_padding"] if resample == "conv" and levels > 1 else 1
    if isinstance(padding, bool) or not isinstance(padding, int) or padding not in (0, 1):
        raise _refuse(f"downsample_padding = {padding!r}", "the strided convolution then gives (H + 2 p - 3) // 2 "
                      "+ 1 rows, not H / 2, which no U-Net's skip connections fit; difflab takes 1 (zeros on every "
                      "side) and 0 (zeros right and bottom only, the original DDPM code)")

    channels = widths[0]
    if freq_shift >= channels // 2:
        raise _refuse(f"freq_shift = {freq_shift!r}", f"the time frequencies exp(-ln(10000) i / (h - freq_shift)) "
                      f"need h - freq_shift > 0, and h = block_out_channels[0] / 2 = {channels // 2}")
    if any(w % channels for w in widths):
        raise _refuse(f"block_out_channels = {list(widths)}", f"difflab's levels have channels x channel_mult "
                      f"channels, integer multiples of the first level's {channels}")
    mult = [w // channels for w in widths]
    blocks = _int("layers_per_block", c["layers_per_block"])
    scale_shift = c["resnet_time_scale_shift"]
    if scale_shift not in ("default", "scale_shift"):
        raise _refuse(f"resnet_time_scale_shift = {scale_shift!r}", "difflab's residual blocks add the time "
                      "embedding ('default') or scale and shift the norm with it ('scale_shift')")
    mid_attention = c["add_attention"]
    if not isinstance(mid_attention, bool):
        raise _refuse(f"add_attention = {mid_attention!r}", "expected true or false")
    if mid_attention:
        attn_groups = c["attn_norm_num_groups"]
        if attn_groups is None and scale_shift == "default":
            attn_groups = groups  # (UNetMidBlock2D's rule)
        if attn_groups is None:
            raise _refuse("attn_norm_num_groups = null with resnet_time_scale_shift = 'scale_shift'", "diffusers' "
                          "middle attention then has no GroupNorm, and difflab's attention always normalises "
                          "its input")
        if attn_groups != groups:
            raise _refuse(f"attn_norm_num_groups = {attn_groups!r}", f"difflab's attention normalises with the "
                          f"U-Net's norm_num_groups = {groups} groups")
    attended = sorted({widths[lv] for lv in attends} | ({widths[-1]} if mid_attention else set()))
    head_dim = c["attention_head_dim"]
    heads: dict = {}
    if head_dim is not None and attended:
        head_dim = _int("attention_head_dim", head_dim)
        bad = [w for w in attended if w % head_dim]
        if bad:
            raise _refuse(f"attention_head_dim = {head_dim}", f"attention over {bad[0]} channels then has "
                          f"{bad[0]} // {head_dim} heads of {head_dim}, narrower than its input; difflab's "
                          "attention splits all its channels into heads: use a divisor of every attended width")
        heads = {"head_dim": head_dim}
    elif attended:
        heads = {"num_heads": 1}  # attention_head_dim null: one head as wide as the block
    size = c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2:
        h, w = (_int("sample_size", s) for s in size)
    elif size is None:
        raise _refuse("sample_size = null", "the converted run records the size of its samples; set sample_size "
                      "in config.json to the training resolution")
    else:
        h = w = _int("sample_size", size)
    in_ch, out_ch = _int("in_channels", c["in_channels"]), _int("out_channels", c["out_channels"])
    dropout = c["dropout"]
    kwargs = {"in_channels": in_ch, "out_channels": out_ch, "channels": channels, "channel_mult": mult,
              "num_res_blocks": blocks, "attention_levels": attends, "image_size": h if h == w else None,
              "dropout": float(dropout) if isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
              else dropout, **heads, "use_scale_shift_norm": scale_shift == "scale_shift", "resample": resample,
              "mid_attention": mid_attention, "norm_groups": groups}
    # the original DDPM code's options, given where they differ from difflab's defaults (config.yaml says
    # what is unusual about the network)
    for option, value, default in (("freq_shift", freq_shift, 0), ("norm_eps", float(norm_eps), 1e-5),
                                   ("downsample_padding", padding, 1)):
        if value != default:
            kwargs[option] = value
    if c["time_embedding_dim"] is not None:
        kwargs["emb_dim"] = _int("time_embedding_dim", c["time_embedding_dim"])
    rows = c["num_class_embeds"]
    null_stored = False
    if rows is not None:
        rows = _int("num_class_embeds", rows)
        null_stored = config.get("_difflab_null_label") == rows - 1 and rows >= 2
        kwargs["num_classes"] = rows - 1 if null_stored else rows
        if not null_stored:
            notes.append(f"the model has {rows} class labels and no 'no label' class: difflab's null label {rows} "
                         "gets a zero embedding (the time embedding alone), an input the model was never trained "
                         "on, so its classifier-free guidance (guidance != 1) is not meaningful")
    flip = c["flip_sin_to_cos"]
    if not isinstance(flip, bool):
        raise _refuse(f"flip_sin_to_cos = {flip!r}", "expected true or false")
    return DiffusersUNet(kwargs, flip, rows, null_stored, [in_ch, h, w], notes)


def _prefixes(kwargs: dict) -> dict[str, tuple[str, str]]:
    """difflab module name -> (diffusers module name, kind): "res" (a residual block), "attn" (an
    attention block) or "same" (a layer whose parameter names agree), walking both U-Nets in the
    order their forward passes visit the blocks."""
    levels, blocks = len(kwargs["channel_mult"]), kwargs["num_res_blocks"]
    attends, conv = set(kwargs["attention_levels"]), kwargs["resample"] == "conv"
    table = {"conv_in": ("conv_in", "same"), "time_embed.1": ("time_embedding.linear_1", "same"),
             "time_embed.3": ("time_embedding.linear_2", "same"), "label_embed": ("class_embedding", "same"),
             "mid_res1": ("mid_block.resnets.0", "res"), "mid_attn": ("mid_block.attentions.0", "attn"),
             "mid_res2": ("mid_block.resnets.1", "res"), "norm_out": ("conv_norm_out", "same"),
             "conv_out": ("conv_out", "same")}

    def resampler(ours: str, theirs: str) -> None:
        if conv:
            table[f"{ours}.conv"] = (f"{theirs}.conv", "same")
        else:
            table[ours] = (theirs, "res")

    j = 0
    for level in range(levels):
        for k in range(blocks):
            table[f"down.{j}.res"] = (f"down_blocks.{level}.resnets.{k}", "res")
            if level in attends:
                table[f"down.{j}.attn"] = (f"down_blocks.{level}.attentions.{k}", "attn")
            j += 1
        if level != levels - 1:
            resampler(f"down.{j}", f"down_blocks.{level}.downsamplers.0")
            j += 1
    j = 0
    for i, level in enumerate(reversed(range(levels))):
        for k in range(blocks + 1):
            table[f"up.{j}.res"] = (f"up_blocks.{i}.resnets.{k}", "res")
            if level in attends:
                table[f"up.{j}.attn"] = (f"up_blocks.{i}.attentions.{k}", "attn")
            j += 1
        if level != 0:
            resampler(f"up.{j}", f"up_blocks.{i}.upsamplers.0")
            j += 1
    return table


def _their_keys(key: str, table: dict) -> tuple[str, ...]:
    """The diffusers parameter(s) of difflab parameter ``key`` (three for a fused qkv)."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        found = table.get(".".join(parts[:n]))
        if found is not None:
            theirs, kind = found
            rest = parts[n:]
            break
    else:
        raise KeyError(key)
    leaf, param = ".".join(rest[:-1]), rest[-1]
    if kind == "res":
        leaf = _RES_LEAVES[leaf]
    elif kind == "attn":
        if leaf == "qkv":
            return tuple(f"{theirs}.{q}.{param}" for q in _QKV)
        leaf = _ATTN_LEAVES[leaf]
    return (f"{theirs}.{leaf}.{param}" if leaf else f"{theirs}.{param}",)


def _meta_unet(kwargs: dict) -> UNet:
    """difflab's U-Net of ``kwargs`` without memory (its parameter names and shapes); ValueError
    naming the config when UNet refuses the kwargs."""
    try:
        with torch.device("meta"):
            return UNet(**kwargs)
    except (TypeError, ValueError) as err:
        raise _refuse("difflab's U-Net refuses the architecture", str(err)) from None


def _swap_halves(w: Tensor) -> Tensor:
    """[A, B] -> [B, A] along the columns: W [cos, sin]^T = [W_sin, W_cos] [sin, cos]^T."""
    half = w.shape[1] // 2
    return torch.cat([w[:, half:], w[:, :half]], dim=1)


def _with_current_attention_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Attention weights saved by diffusers < 0.14 (query, key, value, proj_attn) under today's names."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)", k)
        out[f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}" if m else k] = v
    return out


def _state_from_diffusers(unet: DiffusersUNet, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """difflab's state dict of the diffusers ``state``: every parameter renamed, qkv stacked, the
    time features unflipped and the null label row added; ValueError naming the first parameter
    that is missing, has another shape or is left over (weights that do not fit config.json)."""
    state = _with_current_attention_names(state)
    net = _meta_unet(unet.kwargs)
    table = _prefixes(unet.kwargs)
    out, used = {}, set()
    for key, param in net.state_dict().items():
        names = _their_keys(key, table)
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"{source}: weight {missing[0]!r} is missing: the weights do not fit the model "
                             "config.json describes")
        used.update(names)
        value = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
        if key == "time_embed.1.weight" and unet.flip_sin_to_cos:
            value = _swap_halves(value)
        if key == "label_embed.weight" and not unet.null_label_stored:
            value = torch.cat([value, value.new_zeros(1, value.shape[1])])
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{source}: weight {names[0]!r} has shape {tuple(state[names[0]].shape)}, which does "
                             f"not fit the model config.json describes (difflab's {key} is {tuple(param.shape)})")
        out[key] = value
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"{source}: weights the model of config.json has no place for, e.g. {extra[0]!r} "
                         f"({len(extra)} in all): the weights and config.json disagree")
    for key, value in out.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: weight {key!r} holds NaN or inf values")
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in out.items()}


def _state_to_diffusers(kwargs: dict, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers' state dict of difflab's ``state`` (time features written unflipped, the null label
    kept as the last class row): the inverse of :func:`_state_from_diffusers`."""
    table = _prefixes(kwargs)
    out = {}
    for key, value in state.items():
        names = _their_keys(key, table)
        parts = value.chunk(len(names)) if len(names) > 1 else (value,)
        for n, v in zip(names, parts):
            out[n] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
    return out


# ---------------------------------------------------------------------------------- the process
def diffusion_from_scheduler_config(config: dict) -> tuple[dict, dict, list]:
    """difflab's ``diffusion`` and ``sample`` config sections for a DDPMScheduler / DDIMScheduler
    config (a dict), and notes on the sampling options a run's config does not hold; ValueError
    naming the first option difflab cannot take."""
    name = config.get("_class_name")
    if name not in SCHEDULER_DEFAULTS:
        raise _refuse(f"the scheduler is {name!r}", "difflab reads the schedule from a DDPMScheduler or "
                      "DDIMScheduler config; give one with the model's beta_schedule, beta_start, beta_end, "
                      "num_train_timesteps and prediction_type (--scheduler FILE)")
    c = dict(SCHEDULER_DEFAULTS[name])
    c.update({k: v for k, v in config.items() if not k.startswith("_") and k in c})
    notes = []
    ignored = sorted(k for k in config if not k.startswith("_") and k not in c)
    if ignored:
        notes.append(f"scheduler config keys that {name} does not take were ignored, as diffusers ignores them: "
                     f"{', '.join(ignored)}")
    if c["trained_betas"] is not None:
        raise _refuse("trained_betas", "a run's config names its schedule (linear, scaled_linear, cosine, "
                      "sigmoid, ...); an explicit list of betas has no name")
    if c["rescale_betas_zero_snr"]:
        raise _refuse("rescale_betas_zero_snr = true", "difflab's schedules keep their last noise level; "
                      "zero-terminal-SNR rescaling is not one of them")
    if c["thresholding"]:
        raise _refuse("thresholding = true", "the run's config holds a fixed clip range (sample.clip_x0), not "
                      "dynamic thresholding; set thresholding false and sample with dl.sample(..., "
                      "dynamic_threshold=p)")
    schedule = c["beta_schedule"]
    if schedule not in _SCHEDULES or (schedule == "sigmoid" and name == "DDIMScheduler"):
        known = ", ".join(s for s in _SCHEDULES if not (s == "sigmoid" and name == "DDIMScheduler"))
        raise _refuse(f"beta_schedule = {schedule!r}", f"difflab maps {name}'s schedules {known}")
    ours, args = _SCHEDULES[schedule]
    T = _int("num_train_timesteps", c["num_train_timesteps"], low=2)
    kwargs = {a: float(c[a]) for a in args}
    try:
        schedules.get(ours, T, **kwargs)
    except (TypeError, ValueError) as err:
        raise _refuse(f"beta_schedule {schedule!r} with {kwargs}", str(err)) from None
    prediction = c["prediction_type"]
    if prediction not in _PREDICTIONS:
        raise _refuse(f"prediction_type = {prediction!r}", f"difflab's networks predict "
                      f"{', '.join(f'{k} ({v})' for k, v in _PREDICTIONS.items())}")
    variance = c.get("variance_type", "fixed_small")
    if variance == "learned":
        raise _refuse(f"variance_type = {variance!r}", "the network outputs its log-variance itself; difflab's "
                      "networks learn improved DDPM's interpolation between beta~ and beta (learned_range)")
    if variance == "learned_range":
        notes.append("variance_type 'learned_range': the network learns its variance (model.kwargs.learn_sigma, "
                     "loss: hybrid), which difflab's DDPM sampler reads by default, on respaced steps too")
    if variance in ("fixed_large", "fixed_large_log"):
        notes.append(f"variance_type {variance!r}: DDPM sampling with beta_t: pass variance='beta' to "
                     "dl.sample(..., sampler='ddpm') (a run's config has no field for it; difflab's default is "
                     "beta tilde, diffusers' fixed_small)")
    elif variance not in ("fixed_small", "fixed_small_log", "learned_range"):
        raise _refuse(f"variance_type = {variance!r}", "expected one of fixed_small, fixed_small_log, fixed_large, "
                      "fixed_large_log")
    clip = None
    if c["clip_sample"]:
        clip = float(c["clip_sample_range"])
        if not (math.isfinite(clip) and clip > 0):
            raise _refuse(f"clip_sample_range = {c['clip_sample_range']!r}", "expected a number > 0")
    else:
        notes.append("clip_sample false: a run's config cannot say 'never clip' (sample.clip_x0 null means the "
                     "images' range [-1, 1]); sample with --no-clip (dl.sample(..., clip_x0=None)) for diffusers' "
                     "unclipped x0 estimates")
    if name == "DDIMScheduler" and not c["set_alpha_to_one"]:
        notes.append("set_alpha_to_one false: diffusers' DDIM ends its last step at abar_0, difflab's at x0 (sigma 0)")
    diffusion = {"process": "ddpm", "schedule": ours, "T": T, "schedule_kwargs": kwargs,
                 "prediction": _PREDICTIONS[prediction]}
    sample = {"every": -1, "sampler": "ddpm" if name == "DDPMScheduler" else "ddim",
              "steps": T if name == "DDPMScheduler" else min(50, T), "clip_x0": clip}
    notes += _grid_notes(name, c["timestep_spacing"], _int("steps_offset", c["steps_offset"], low=0), T,
                         sample["sampler"], sample["steps"])
    if name == "DDIMScheduler" and clip is not None:
        notes.append("clip_sample true with DDIM: difflab's DDIM re-derives eps from the clipped x0 estimate, as "
                     "DDIMPipeline does with use_clipped_model_output=True; the pipeline's default keeps the "
                     "network's eps, for which difflab has no option (to compare, call the pipeline with "
                     "use_clipped_model_output=True, or sample both unclipped: --no-clip and clip_sample false)")
    return diffusion, sample, notes


_WHERE = "to dl.sample or run.sample (difflab sample has no flag for it)"
# diffusers' timestep grids (set_timesteps, 0.42), k counting the steps; difflab's spacings of the same names
_GRIDS = {"leading": "t = k (T // steps) + steps_offset, k = steps-1 .. 0",
          "trailing": "t = round(T - k T / steps) - 1, k = 0 .. steps-1",
          "linspace": "t = round(linspace(0, T - 1, steps))"}


def _grid_notes(name: str, spacing, offset: int, T: int, sampler: str, steps: int) -> list:
    """Notes on the timesteps the folder's pipeline visits where they are not those of difflab's
    ``sampler`` by default (its registered spacing: "trailing" for ddpm and ddim; ``steps``: the
    run's default count). diffusers' grids are difflab's spacings of the same names, its "leading"
    with ``steps_offset`` added (the other two ignore it). DDPMScheduler steps from each timestep
    to the next of its grid, as difflab's samplers do; DDIMScheduler from t to t - T // steps,
    which is the next only on a leading grid and on a trailing one where steps divides T
    (elsewhere no option of difflab takes its step)."""
    if spacing not in DISCRETE_SPACINGS:
        raise _refuse(f"timestep_spacing = {spacing!r}", f"{name} spaces timesteps "
                      f"{', '.join(DISCRETE_SPACINGS)} (its pipeline cannot sample this folder either)")
    ours = SAMPLERS[sampler].default_spacing
    notes = []
    if offset and spacing != "leading":
        notes.append(f"steps_offset {offset} changes nothing: diffusers adds it to 'leading' timesteps only")
    if name == "DDIMScheduler" and spacing == "trailing":
        at_default = "so" if T % steps == 0 else "not"
        notes.append(f"timestep_spacing 'trailing': difflab's DDIM grid too, but diffusers' DDIM steps from t to "
                     f"t - T // steps, the grid's next timestep only where steps divides T ({at_default} at the run's "
                     f"default steps = {steps}); difflab's DDIM steps to the next timestep always, and has no option "
                     "for diffusers' step")
    elif name == "DDIMScheduler" and spacing == "linspace":
        notes.append(f"timestep_spacing 'linspace': the pipeline's DDIM evaluates the network at {_GRIDS[spacing]}, "
                     "as dl.sample(..., spacing='linspace') does, but steps from t to t - T // steps, off that grid; "
                     "difflab's DDIM steps to the grid's next timestep, and has no option for diffusers' step")
    elif spacing != ours:
        grid = _GRIDS[spacing].replace(" + steps_offset", f" + {offset}" if offset else "")
        head = (f"timestep_spacing {spacing!r}{f' with steps_offset {offset}' if offset else ''}: the pipeline "
                f"samples on {grid}; difflab's {sampler} on {ours!r} timesteps unless told")
        if offset:
            notes.append(f"{head}, and spacing='leading' has no offset: pass timesteps=dl.samplers.timesteps({T}, "
                         f"steps, 'leading', steps_offset={offset}) {_WHERE}")
        else:
            same = " (the same grid at steps = T, the run's default)" if steps == T else ""
            notes.append(f"{head}{same}: pass spacing={spacing!r} {_WHERE}")
    return notes


def _scheduler_config(cfg: TrainConfig) -> dict:
    """The DDPMScheduler config of a run's process (the ddpm chain on a named schedule)."""
    d = cfg.diffusion
    if d.process != "ddpm":
        raise _refuse(f"diffusion.process = {d.process!r}", "diffusers' DDPMScheduler holds the discrete DDPM "
                      "chain (process 'ddpm') only")
    theirs = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
              "squaredcos_cap_v2": "squaredcos_cap_v2", "sigmoid": "sigmoid"}
    name = d.schedule.lower()
    if name not in theirs:
        raise _refuse(f"diffusion.schedule = {d.schedule!r}", f"diffusers' DDPMScheduler has the schedules "
                      f"{', '.join(sorted(set(theirs)))} only")
    function = {"linear": schedules.linear, "scaled_linear": schedules.scaled_linear, "cosine": schedules.cosine,
                "squaredcos_cap_v2": schedules.cosine, "sigmoid": schedules.sigmoid}[name]
    defaults = {k: p.default for k, p in inspect.signature(function).parameters.items() if k != "T"}
    given = {**defaults, **d.schedule_kwargs}
    if theirs[name] == "squaredcos_cap_v2":
        if given.get("s") != 0.008 or given.get("max_beta") != 0.999:
            raise _refuse(f"diffusion.schedule_kwargs = {d.schedule_kwargs!r}", "diffusers' squaredcos_cap_v2 is the "
                          "cosine schedule with s = 0.008 and max_beta = 0.999 only")
    if theirs[name] == "sigmoid" and given.get("scale") != 6.0:
        raise _refuse(f"diffusion.schedule_kwargs = {d.schedule_kwargs!r}", "diffusers' sigmoid schedule spans "
                      "sigmoid(-6 .. 6): scale 6 only")
    clip = data_range(cfg)
    ours = {v: k for k, v in _PREDICTIONS.items()}
    prediction = d.resolved_prediction
    if prediction not in ours:
        raise _refuse(f"diffusion.prediction = {prediction!r}", f"diffusers' schedulers take "
                      f"{', '.join(ours)} predictions")
    out = {"_class_name": "DDPMScheduler", "_diffusers_version": _WRITTEN_FORMAT,
           **SCHEDULER_DEFAULTS["DDPMScheduler"], "num_train_timesteps": d.T, "beta_schedule": theirs[name],
           "prediction_type": ours[prediction], "clip_sample": clip is not None,
           "clip_sample_range": float(clip) if clip is not None else 1.0,
           # difflab's DDPM steps on trailing timesteps: so does the pipeline at any step count, not only at T
           "timestep_spacing": "trailing"}
    for key in ("beta_start", "beta_end"):
        if key in given:
            out[key] = float(given[key])
    return out


# ------------------------------------------------------------------------------------- folders
def _fresh(out: Path) -> Path:
    """A temporary folder beside ``out`` (which must not exist), renamed into place when complete."""
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"--out {str(out)!r} exists; name a new folder (nothing is written over)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _into_place(tmp: Path, out: Path) -> Path:
    """fsync every file and folder of ``tmp``, then rename it to ``out`` (atomic: all or nothing)."""
    for f in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(f)
    fsync_path(tmp)
    if out.exists():
        raise FileExistsError(f"--out {str(out)!r} appeared while converting; nothing was written over it")
    os.rename(tmp, out)
    fsync_path(out.parent)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class Converted:
    """What a conversion wrote and what it noted (options a run or a pipeline holds differently)."""

    out: Path
    notes: list
    parameters: int
    scheduler: str


def from_diffusers(src: Union[str, Path], out: Union[str, Path], *, scheduler: Union[str, Path, None] = None,
                   data: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> Converted:
    """Write the diffusers UNet2DModel folder ``src`` (a pipeline folder or a unet folder, with its
    DDPMScheduler / DDIMScheduler config, or ``scheduler``) as the difflab run folder ``out``.

    The run's config: ``model: unet`` with the converted kwargs, the scheduler's ``diffusion``,
    ``data: folder`` (images of the model's size, under ``data`` if given, for ``difflab eval``'s
    reference), then ``overrides`` ("field=value", as ``difflab train --set``). Its one checkpoint,
    step 0, holds the converted weights as both model and EMA weights. Nothing is written unless
    everything converts; ``out`` must not exist."""
    src, out = Path(src), Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"--out {str(out)!r} exists; name a new folder (nothing is written over)")
    unet_dir, sched_file = _locate(src, Path(scheduler) if scheduler is not None else None)
    unet = unet_from_diffusers_config(read_json_object(unet_dir / "config.json", "UNet2DModel config"))
    sched = read_json_object(sched_file, "scheduler config")
    diffusion, sample, sched_notes = diffusion_from_scheduler_config(sched)
    state = _state_from_diffusers(unet, _read_weights(unet_dir), f"diffusers weights in {str(unet_dir)!r}")
    C, H, W = unet.sample_shape
    notes = unet.notes + sched_notes
    data_kwargs = {}
    if data is not None:  # images of the model's size and channels, as load_folder reads them
        data_kwargs = {"path": str(data), **({"image_size": H} if H == W else {}),
                       **({"channels": C} if C in (1, 3, 4) else {})}
    elif not any(o.split("=", 1)[0].strip().startswith("data.") for o in overrides):
        notes.append("the run names no data (data: folder without a path): difflab eval then needs --ref; "
                     "give --data FOLDER (or --set data.name=...) to name the images the model makes")
    kwargs, loss = unet.kwargs, "diffusion"
    if sched.get("variance_type") == "learned_range":  # [prediction, v]: the U-Net's learn_sigma, same weights
        if kwargs["out_channels"] != 2 * C:
            raise _refuse(f"variance_type 'learned_range' with out_channels = {kwargs['out_channels']}",
                          f"a network that learns its variance outputs twice its {C} input channels (the "
                          "prediction, then the variance interpolation)")
        kwargs, loss = {**kwargs, "out_channels": C, "learn_sigma": True}, "hybrid"
    cfg = TrainConfig.from_dict({"model": {"name": "unet", "kwargs": kwargs}, "diffusion": diffusion, "loss": loss,
                                 "data": {"name": "folder", "kwargs": data_kwargs}, "sample": sample})
    cfg = apply_overrides(cfg, overrides)
    net = build_model(cfg)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # (an override of model.kwargs: another network than the folder's)
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"the converted weights do not fit the network of the run's config (a --set of "
                         f"model.kwargs changed it?): {first}") from None
    tmp = _fresh(out)
    try:
        (tmp / "config.yaml").write_text(render_run_config(cfg))
        ema = EMA(net, cfg.ema.decay, cfg.ema.warmup)  # (the EMA of a model never trained: its own weights)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                      eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        converted = {"format": "diffusers", "source": str(src.resolve()), "model": "UNet2DModel",
                     "scheduler": sched.get("_class_name"), "notes": notes}
        save_checkpoint(tmp / "checkpoints", 0, config=cfg, model=net, ema=ema, optimizer=optimizer, scheduler=lr,
                        rng=[{"cpu": torch.get_rng_state()}],
                        state={"world_size": 1, "data_stream": None, "sample_shape": [C, H, W],
                               "image_shape": [C, H, W], "num_classes": unet.kwargs.get("num_classes"),
                               "elapsed_s": 0.0, "converted_from": converted})
        _into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Converted(out, notes, sum(p.numel() for p in net.parameters()), str(sched.get("_class_name")))


def _unet_config(net: UNet, image_shape: Sequence[int]) -> dict:
    """The UNet2DModel config.json of difflab U-Net ``net``, every field given (so diffusers' defaults,
    which change between versions, decide nothing); ValueError for what UNet2DModel cannot hold."""
    c = net.config
    defaults = {k: p.default for k, p in inspect.signature(UNet).parameters.items()}
    k = {**defaults, **c}
    if net.context_dim is not None:
        raise _refuse(f"model.kwargs.context_dim = {net.context_dim}", "text cross-attention has no place in "
                      "diffusers' UNet2DModel (its UNet2DConditionModel is another layout, not converted)")
    if net.guidance_embed is not None:
        raise _refuse("model.kwargs.guidance_embed = true", "the guidance scale as a network input (a guided "
                      "student) has no place in diffusers' UNet2DModel")
    resample = k["resample"]
    if resample not in ("conv", "resblock"):
        raise _refuse(f"model.kwargs.resample = {resample!r}", "diffusers' UNet2DModel resamples with a "
                      "convolution or a residual block, not parameter-free interpolation")
    levels = net.num_levels
    nrb = k["num_res_blocks"]
    nrb = set(nrb) if isinstance(nrb, (list, tuple)) else {nrb}
    if len(nrb) != 1:
        raise _refuse(f"model.kwargs.num_res_blocks = {k['num_res_blocks']!r}", "diffusers' UNet2DModel has the "
                      "same number of residual blocks at every level (layers_per_block)")
    eps = {m.eps for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    if eps != {k["norm_eps"]}:  # (a GroupNorm replaced or changed after construction)
        raise _refuse(f"GroupNorm eps {sorted(eps)}", f"diffusers' UNet2DModel has one norm_eps for every "
                      f"GroupNorm, and the model's config says {k['norm_eps']!r}")
    channels = net.conv_in.out_channels
    widths = [channels * m for m in k["channel_mult"]]
    attention = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    per_head = {a.qkv.in_features // a.num_heads for a in attention}
    if all(a.num_heads == 1 for a in attention):
        head_dim = None  # diffusers: one head as wide as the block
    elif len(per_head) == 1:
        head_dim = per_head.pop()
    else:
        raise _refuse("attention heads of different widths", "diffusers' UNet2DModel gives every attention block "
                      "width // attention_head_dim heads of one attention_head_dim; this model's heads are "
                      f"{sorted(per_head)} channels wide")
    attends = set(net.attention_levels)
    resnet = resample == "resblock"
    down = ["AttnDownBlock2D" if lv in attends else ("ResnetDownsampleBlock2D" if resnet else "DownBlock2D")
            for lv in range(levels)]
    up = ["AttnUpBlock2D" if lv in attends else ("ResnetUpsampleBlock2D" if resnet else "UpBlock2D")
          for lv in reversed(range(levels))]
    _, H, W = image_shape
    groups, emb = net.norm_out.num_groups, net.time_embed[1].out_features
    out = {
        "_class_name": "UNet2DModel", "_diffusers_version": _WRITTEN_FORMAT,
        "sample_size": H if H == W else [H, W], "in_channels": net.in_channels, "out_channels": net.out_channels,
        "center_input_sample": False, "time_embedding_type": "positional",
        "time_embedding_dim": None if emb == 4 * channels else emb, "freq_shift": k["freq_shift"],
        "flip_sin_to_cos": False,
        "down_block_types": down, "mid_block_type": "UNetMidBlock2D", "up_block_types": up,
        "block_out_channels": widths, "layers_per_block": nrb.pop(), "mid_block_scale_factor": 1,
        "downsample_padding": k["downsample_padding"] if not resnet else 1,
        "downsample_type": "resnet" if resnet else "conv",
        "upsample_type": "resnet" if resnet else "conv", "dropout": float(k["dropout"]), "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": groups, "attn_norm_num_groups": groups,
        "norm_eps": float(k["norm_eps"]),
        "resnet_time_scale_shift": "scale_shift" if k["use_scale_shift_norm"] else "default",
        "add_attention": net.mid_attn is not None, "class_embed_type": None,
        "num_class_embeds": None if net.num_classes is None else net.num_classes + 1,
        "num_train_timesteps": None,
    }
    if net.num_classes is not None:
        out["_difflab_null_label"] = net.num_classes  # diffusers' label K is difflab's "no label"
    return out


def to_diffusers(run: Union[str, Path], out: Union[str, Path], *, ema: bool = True) -> Converted:
    """Write the run (or checkpoint) ``run`` as a diffusers DDPMPipeline folder ``out``: model_index.json,
    unet/ (config.json, diffusion_pytorch_model.safetensors: the EMA weights, or the raw ones with
    ``ema=False``) and scheduler/scheduler_config.json (DDPMScheduler). The network must be difflab's
    U-Net under the DDPM chain; ValueError names what diffusers cannot hold. ``out`` must not exist."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"--out {str(out)!r} exists; name a new folder (nothing is written over)")
    loaded = load(run)
    cfg = loaded.config
    net = loaded.ema_model if ema else loaded.model
    if type(net) is not UNet:
        raise _refuse(f"model {cfg.model.name!r} ({type(net).__name__})", "diffusers' UNet2DModel holds difflab's "
                      "U-Net (model unet, unet_cifar10, unet_mnist, unet_tiny) under the DDPM process only")
    if cfg.distill.sigmas is not None:
        raise _refuse("a progressively distilled student", f"it samples on its own {len(cfg.distill.sigmas) - 1} "
                      "noise levels (distill.sigmas), which a DDPMScheduler cannot hold")
    scheduler = _scheduler_config(cfg)
    if net.learn_sigma:  # [prediction, v]: diffusers' learned_range variance
        scheduler["variance_type"] = "learned_range"
    unet = _unet_config(net, loaded.image_shape)
    state = _state_to_diffusers(unet_from_diffusers_config(unet).kwargs, net.state_dict())
    tmp = _fresh(out)
    try:
        _write_json(tmp / "model_index.json", {"_class_name": "DDPMPipeline", "_diffusers_version": _WRITTEN_FORMAT,
                                               "scheduler": ["diffusers", "DDPMScheduler"],
                                               "unet": ["diffusers", "UNet2DModel"]})
        _write_json(tmp / "unet" / "config.json", unet)
        save_file(state, str(tmp / "unet" / WEIGHTS_NAME), metadata={"format": "pt"})
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        _into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Converted(out, [], sum(v.numel() for v in state.values()), "DDPMScheduler")
