"""A diffusers ``AutoencoderKL`` folder (a Stable Diffusion VAE a user has) as a difflab
:class:`~difflab.models.AutoencoderKL`:

    vae = autoencoder_from_diffusers("sd-vae-ft-mse/")     # config.json + diffusion_pytorch_model.safetensors
    vae = autoencoder_from_diffusers("stable-diffusion/")  # a pipeline folder: its vae/
    autoencoder_run_from_diffusers("sd-vae-ft-mse/", "runs/sd_vae")   # as a run folder: dl.load("runs/sd_vae")

The files are read directly (JSON and safetensors; no diffusers needed, nothing downloaded). The
two networks are the same computation (the SD design, Rombach et al. 2022), so the conversion is
a renaming of the state dict plus one exact rewrite: diffusers' attention has separate to_q, to_k,
to_v (older files: query, key, value, proj_attn), difflab's the U-Net's fused ``qkv``, stacked
[W_q; W_k; W_v]. The config maps as

    block_out_channels (b_0, ..., b_L)  -> channels = b_0, channel_mult = b_i / b_0
    layers_per_block                    -> num_res_blocks
    norm_num_groups                     -> norm_groups (eps 1e-6, diffusers' fixed value)
    mid_block_add_attention             -> mid_attention
    use_quant_conv, use_post_quant_conv -> the same
    scaling_factor, shift_factor        -> the module's buffers (encode_latents / decode_latents)

What difflab's autoencoder does not compute is refused by name with the reason: another
``_class_name`` (the tiny, asymmetric or temporal VAEs), block types other than
DownEncoderBlock2D / UpDecoderBlock2D, an activation other than SiLU, widths that are not
multiples of the first, per-channel ``latents_mean`` / ``latents_std``. ``force_upcast`` (run the
VAE in float32 under fp16 pipelines) and ``sample_size`` choose how diffusers runs it, not what
it computes, and are not needed: difflab's autoencoder runs in the dtype it is given.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..files import fsync_path
from ..models.autoencoder import AutoencoderKL
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .diffusers_format import read_json_object
from .ema import EMA
from .run_config import render_run_config

__all__ = ["autoencoder_from_diffusers", "autoencoder_run_from_diffusers", "autoencoder_kwargs_from_diffusers",
           "state_from_diffusers"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14
_KNOWN_KEYS = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
               "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
               "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv",
               "use_post_quant_conv", "mid_block_add_attention"}


def _refuse(option: str, why: str) -> ValueError:
    return ValueError(f"cannot load the diffusers AutoencoderKL: {option}: {why}")


def autoencoder_kwargs_from_diffusers(config: dict) -> tuple[dict, float, float]:
    """(kwargs of :class:`~difflab.models.AutoencoderKL`, scaling_factor, shift_factor) of a diffusers
    AutoencoderKL config.json; ValueError naming the first option difflab cannot compute."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise _refuse(f"_class_name {name!r}", "difflab loads diffusers' AutoencoderKL (the Stable Diffusion "
                      "VAE) only; this folder holds another network")
    downs, ups = list(config.get("down_block_types", ["DownEncoderBlock2D"])), \
        list(config.get("up_block_types", ["UpDecoderBlock2D"]))
    widths = list(config.get("block_out_channels", [64]))
    for option, types, want in (("down_block_types", downs, "DownEncoderBlock2D"),
                                ("up_block_types", ups, "UpDecoderBlock2D")):
        bad = [t for t in types if t != want]
        if bad:
            raise _refuse(f"{option} {bad[0]!r}", f"the SD autoencoder's blocks are all {want}")
        if len(types) != len(widths):
            raise _refuse(option, f"{len(types)} blocks for {len(widths)} block_out_channels; one block per width")
    if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise _refuse(f"block_out_channels {widths!r}", "must be positive integers")
    if any(w % widths[0] for w in widths):
        raise _refuse(f"block_out_channels {widths!r}", f"difflab's widths are channels * channel_mult, integer "
                      f"multiples of the first ({widths[0]})")
    act = config.get("act_fn", "silu")
    if act != "silu":
        raise _refuse(f"act_fn {act!r}", "the SD autoencoder (and difflab's) uses SiLU")
    for option in ("latents_mean", "latents_std"):
        if config.get(option) is not None:
            raise _refuse(option, "per-channel latent statistics are not supported; difflab's autoencoder has one "
                          "scaling_factor and one shift_factor")
    kwargs = dict(
        in_channels=int(config.get("in_channels", 3)), out_channels=int(config.get("out_channels", 3)),
        latent_channels=int(config.get("latent_channels", 4)), channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=int(config.get("layers_per_block", 1)),
        mid_attention=bool(config.get("mid_block_add_attention", True)),
        norm_groups=int(config.get("norm_num_groups", 32)), norm_eps=1e-6,
        use_quant_conv=bool(config.get("use_quant_conv", True)),
        use_post_quant_conv=bool(config.get("use_post_quant_conv", True)))
    if isinstance(config.get("sample_size"), int):
        kwargs["image_size"] = config["sample_size"]
    scaling = config.get("scaling_factor", 0.18215)
    shift = config.get("shift_factor") or 0.0
    return kwargs, float(scaling), float(shift)


def _rename(key: str) -> str:
    """difflab's name of a diffusers AutoencoderKL parameter (attention's q, k, v are stacked apart)."""
    rules = (
        (r"encoder\.conv_in\.", "encoder_in."),
        (r"encoder\.conv_norm_out\.", "encoder_norm."),
        (r"encoder\.conv_out\.", "encoder_out."),
        (r"decoder\.conv_in\.", "decoder_in."),
        (r"decoder\.conv_norm_out\.", "decoder_norm."),
        (r"decoder\.conv_out\.", "decoder_out."),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder_levels.\1.blocks.\2."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder_levels.\1.resample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder_levels.\1.blocks.\2."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder_levels.\1.resample."),
        (r"(en|de)coder\.mid_block\.resnets\.0\.", r"\1coder_mid.res1."),
        (r"(en|de)coder\.mid_block\.resnets\.1\.", r"\1coder_mid.res2."),
        (r"(en|de)coder\.mid_block\.attentions\.0\.group_norm\.", r"\1coder_mid.attn.norm."),
        (r"(en|de)coder\.mid_block\.attentions\.0\.to_out\.0\.", r"\1coder_mid.attn.proj."),
    )
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new.replace(".conv_shortcut.", ".skip.")
    return key


def state_from_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """difflab's state dict (without the scale buffers) of a diffusers AutoencoderKL state dict:
    renamed, attention's to_q, to_k, to_v stacked into qkv, 1x1-convolution attention weights
    [C, C, 1, 1] (older files) as the linear maps [C, C] they are."""
    out, qkv = {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)", key)
        if m:
            key = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
        if ".attentions." in key and value.ndim == 4:
            value = value.flatten(1)
        m = re.fullmatch(r"(en|de)coder\.mid_block\.attentions\.0\.(to_q|to_k|to_v)\.(weight|bias)", key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        out[_rename(key)] = value
    for (side, leaf), parts in qkv.items():
        missing = [p for p in ("to_q", "to_k", "to_v") if p not in parts]
        if missing:
            raise ValueError(f"the weights lack {side}coder.mid_block.attentions.0.{missing[0]}.{leaf}: the file is "
                             "incomplete or damaged")
        out[f"{side}coder_mid.attn.qkv.{leaf}"] = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]])
    return out


def _locate(src: Path) -> Path:
    """The AutoencoderKL folder of ``src``: itself (config.json), or a pipeline's vae/."""
    if not src.exists():
        raise FileNotFoundError(f"diffusers folder {str(src)!r} does not exist")
    if not src.is_dir():
        raise ValueError(f"{str(src)!r} is a file; give the folder diffusers' save_pretrained wrote (config.json and "
                         f"{WEIGHTS_NAME}), or a pipeline folder holding vae/")
    if (src / "model_index.json").is_file() and (src / "vae" / "config.json").is_file():
        return src / "vae"
    if (src / "config.json").is_file():
        return src
    raise ValueError(f"{str(src)!r} is not a diffusers AutoencoderKL folder: no config.json (nor a pipeline's "
                     "vae/config.json)")


def autoencoder_from_diffusers(src: Union[str, Path]) -> AutoencoderKL:
    """The diffusers AutoencoderKL saved in folder ``src`` as a difflab autoencoder (float32, eval
    mode, on the CPU), its ``scaling_factor`` and ``shift_factor`` from the config. Weights that
    do not fit the config (a missing, extra or misshapen parameter) raise ValueError naming it."""
    folder = _locate(Path(src))
    config = read_json_object(folder / "config.json", "AutoencoderKL config")
    kwargs, scaling, shift = autoencoder_kwargs_from_diffusers(config)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        hint = f" (it holds {', '.join(others)}: save the model as unsharded safetensors)" if others else ""
        raise FileNotFoundError(f"no weights in {str(folder)!r}: expected {WEIGHTS_NAME}{hint}")
    try:
        theirs = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a bad file either way
        raise ValueError(f"{str(weights)!r} is not a readable safetensors file ({err})") from None
    try:
        model = AutoencoderKL(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot load the diffusers AutoencoderKL: its config.json {str(folder / 'config.json')!r} "
                         f"gives {kwargs}, which difflab's autoencoder refuses: {err}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_from_diffusers(theirs).items()}
    state["scaling_factor"] = torch.tensor(scaling)
    state["shift_factor"] = torch.tensor(shift)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or wrong:
        what = (f"missing {missing[0]!r}" if missing else f"left over {extra[0]!r}" if extra
                else f"{wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, the network {tuple(own[wrong[0]].shape)}")
        raise ValueError(f"the weights {str(weights)!r} do not fit the network its config.json describes ({what}, "
                         f"difflab's name); the folder's two files come from different models, or one is damaged")
    model.load_state_dict(state)
    return model.eval()


def autoencoder_run_from_diffusers(src: Union[str, Path], out: Union[str, Path]) -> Path:
    """Write the diffusers AutoencoderKL of ``src`` as the difflab run folder ``out`` (which must not
    exist): ``config.yaml`` (``model: autoencoder_kl`` with the converted kwargs, ``loss:
    autoencoder``) and one checkpoint, step 0, whose model and EMA weights are the converted ones,
    the scaling factor among them; ``dl.load(out).ema_model`` is the VAE, and a run that names an
    autoencoder checkpoint can name this one. Built in a temporary folder beside ``out`` and renamed
    into place: nothing is written unless everything converts. Returns ``out``."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"out {str(out)!r} exists; name a new folder (nothing is written over)")
    model = autoencoder_from_diffusers(src)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    cfg = TrainConfig.from_dict({"model": {"name": "autoencoder_kl", "kwargs": kwargs},
                                 "loss": "autoencoder", "data": {"name": "folder"}, "sample": {"every": -1},
                                 "ema": {"decay": 0.0}})
    size = model.image_size or 8 * model.downsample_factor
    shape = [model.in_channels, size, size]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "config.yaml").write_text(render_run_config(cfg))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        save_checkpoint(tmp / "checkpoints", 0, config=cfg, model=model, ema=EMA(model, 0.0), optimizer=optimizer,
                        scheduler=schedule, rng=[{"cpu": torch.get_rng_state()}],
                        state={"world_size": 1, "data_stream": None, "sample_shape": shape, "image_shape": shape,
                               "num_classes": None, "elapsed_s": 0.0,
                               "converted_from": {"format": "diffusers", "model": "AutoencoderKL",
                                                  "source": str(Path(src).resolve())}})
        for f in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            fsync_path(f)
        fsync_path(tmp)
        if out.exists():
            raise FileExistsError(f"out {str(out)!r} appeared while converting; nothing was written over it")
        os.rename(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
