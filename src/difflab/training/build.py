"""From a config to objects: the network and the diffusion process it is trained under."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .. import models
from ..data.registry import DATA_RANGE
from ..processes import Process
from ..validation import IMAGE_RANGE_TOL
from .config import VLB_LOSSES, TrainConfig

__all__ = ["build_model", "build_process", "data_range", "check_data_range", "text_vocabulary"]


def build_model(cfg: TrainConfig) -> nn.Module:
    """``dl.models.build(cfg.model.name, **cfg.model.kwargs)``, checked against the config.

    A constructor that rejects its arguments (a wrong type, a value out of range) becomes a
    ValueError naming ``model.kwargs``, the model and the kwargs, with the constructor's message.
    Under process "edm" the network is wrapped in EDM's preconditioning,
    ``models.EDMPrecond(net, sigma_data)`` with the process's sigma_data (the network F of
    Karras et al.'s eq. 7; its weights are the state dict's ``net.*``). A consistency model
    (``cfg.consistency_model``) is wrapped in ``models.ConsistencyModel`` (weights ``net.*`` once
    more), and a progressive student carries its noise levels as ``distilled_sigmas``."""
    try:
        model = models.build(cfg.model.name, **cfg.model.kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"config field 'model.kwargs': model {cfg.model.name!r} cannot be built from "
            f"{cfg.model.kwargs!r}: {err}. Check the names, types (integers where sizes are meant) "
            "and ranges of its arguments"
        ) from None
    nc = cfg.model.kwargs.get("num_classes")
    if nc is not None and getattr(model, "num_classes", None) != nc:
        raise ValueError(f"model {cfg.model.name!r} was given num_classes={nc} but has "
                         f"num_classes={getattr(model, 'num_classes', None)}")
    if getattr(model, "context_dim", None) is not None and getattr(model, "tokenizer", None) is None:
        raise ValueError(f"config field 'model.kwargs.context_dim': model {cfg.model.name!r} cross-attends to text, "
                         f"but has no text encoder to make its context from captions: build a text model "
                         "(model.name: text_unet or text_dit, which wrap the network with a tokenizer and a text "
                         "encoder), drop context_dim, or condition on labels (num_classes)")
    if bool(getattr(model, "learn_sigma", False)) != (cfg.loss in VLB_LOSSES):  # (a model's default, too)
        raise ValueError(f"config field 'loss': {cfg.loss!r} with model {cfg.model.name!r} that "
                         f"{'learns' if getattr(model, 'learn_sigma', False) else 'does not learn'} its variance: "
                         "a network with model.kwargs.learn_sigma: true trains with loss: hybrid or vlb (improved "
                         "DDPM), and those losses need it")
    if cfg.diffusion.process == "edm":
        model = models.EDMPrecond(model, sigma_data=build_process(cfg).sigma_data)
    if cfg.consistency_model:  # f(x, sigma_min) = x around the network (its weights: net.*)
        model = models.ConsistencyModel(model, build_process(cfg), cfg.consistency.boundary,
                                        cfg.consistency.net_prediction)
    if cfg.distill.sigmas is not None:  # a progressive student samples on its own levels (dl.sample)
        model.distilled_sigmas = tuple(float(v) for v in cfg.distill.sigmas)
    return model


def text_vocabulary(cfg: TrainConfig, captions: Optional[Sequence[str]], data_name: str) -> None:
    """A text model's word vocabulary, the words of the training ``captions``, into
    ``cfg.model.kwargs["vocab"]`` unless the config gives one: config.yaml then carries the
    tokenizer, so ``dl.load`` rebuilds it with the run. A model whose builder takes no ``vocab``
    (a frozen Hugging Face encoder brings its own tokenizer) is left as it is; a text model with
    neither a vocabulary nor captions is refused."""
    if "vocab" in cfg.model.kwargs or not models.registry.accepts(cfg.model.name, "vocab"):
        return
    if captions is None:
        raise ValueError(f"model {cfg.model.name!r} is a text model but the data {data_name} has no captions to "
                         "learn its words from (use data.name: captioned_digits, or give Trainer(data=(images, "
                         "captions)))")
    cfg.model.kwargs["vocab"] = models.text.build_vocab(captions)


def build_process(cfg: TrainConfig) -> Process:
    """The config's process (``diffusion.process`` with its options), its samplers clipping x0
    estimates to the data's range (:func:`data_range`)."""
    return cfg.diffusion.build_process(clip_x0=data_range(cfg))


def data_range(cfg: TrainConfig) -> Optional[float]:
    """The range |x0| <= c the run's samplers clip their x0 estimates to by default: the config's
    ``sample.clip_x0`` where set, else the range of its data (every image data set: [-1, 1]; the
    2D toy sets: unbounded). The data a run trains on must lie within it: :func:`check_data_range`."""
    if cfg.sample.clip_x0 is not None:
        return cfg.sample.clip_x0
    if cfg.latent.autoencoder is not None:  # latents: the autoencoder's range, unclipped (as Stable Diffusion)
        return None
    return None if cfg.data.name == "toy2d" else DATA_RANGE


def check_data_range(cfg: TrainConfig, x: Tensor, name: str) -> None:
    """Refuse data that reaches beyond the range its run's samplers clip to (:func:`data_range`,
    up to a relative IMAGE_RANGE_TOL for rounding): the range comes from the config (its
    ``sample.clip_x0`` or its data set's name), not from the data, so data given another way
    (``Trainer(data=...)``) in, say, [-3, 3] would otherwise be sampled clamped to [-1, 1].
    ``name`` names the data in the ValueError, which gives the measured range and the fix."""
    clip = data_range(cfg)
    if clip is None or x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    reach = max(-lo, hi)
    if reach <= clip * (1 + IMAGE_RANGE_TOL):
        return
    why = (f"config field sample.clip_x0 = {clip:g}" if cfg.sample.clip_x0 is not None
           else f"sample.clip_x0 unset: the range of image data set {cfg.data.name!r}")
    raise ValueError(
        f"{name} lies in [{lo:.4g}, {hi:.4g}], beyond the range |x0| <= {clip:g} its samples are clipped to "
        f"({why}), so samples would be clamped to [-{clip:g}, {clip:g}]; set sample.clip_x0: {reach:.4g} in "
        f"the config, or scale the data to [-{clip:g}, {clip:g}]")
