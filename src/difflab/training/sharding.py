"""Sharded training and activation checkpointing: for networks that outgrow one GPU.

Two options of the trainer (``TrainConfig.sharding``, ``TrainConfig.activation_checkpointing``),
each a rule about the network's **blocks**, its repeated units (:func:`block_units`):

- **Activation checkpointing** (Chen et al. 2016, "Training deep nets with sublinear memory
  cost"): a block keeps only its inputs for the backward; its inner activations are recomputed
  there by running its forward again (``torch.utils.checkpoint``, generator states restored, so
  dropout draws the same masks). Memory for activations falls from the sum over blocks to about
  one block's, at the cost of about one more forward per step; the gradients are the same.
- **Fully sharded data parallel** (ZeRO-3, Rajbhandari et al. 2020; torch's FSDP2,
  ``torch.distributed.fsdp.fully_shard``): each of K processes keeps 1/K of every parameter,
  of its gradient and of AdamW's moments (dim-0 shards). A block's parameters are all-gathered
  just before its forward (and again for its backward) and freed after; gradients are
  reduce-scattered, each process averaging its own shard. The update is elementwise, so
  updating shards is updating the whole: the K-process run equals one process with the same
  global batch up to summation order, as DDP does. The EMA copy is sharded the same way (its
  update is elementwise too).

Both act on the same units and leave the state dict's keys as they are (the forward is swapped
in place, no wrapper module), so a checkpoint's weights load into a plain network (``dl.load``).

A sharded checkpoint keeps the sharded state -- model, EMA, optimizer -- in a ``dcp/`` folder of
``torch.distributed.checkpoint`` (each process writes its shards; the metadata records the
global shapes), which loads at any number of processes, sharded or not: DCP reshards on
reading. :func:`save_sharded` and :func:`load_sharded` write and read it; :func:`full_weights`
gathers the whole weights for ``model.safetensors`` / ``ema.safetensors``.
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict, set_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from .. import models

__all__ = ["SHARDING_MODES", "DCP_FOLDER", "network", "block_units", "shard_units", "checkpoint_activations",
           "is_checkpointed", "process_mesh", "shard", "is_sharded", "grad_norm", "full_weights", "load_full_weights",
           "save_sharded", "load_sharded", "load_full_optimizer_state"]

SHARDING_MODES = ("none", "fsdp")
DCP_FOLDER = "dcp"  # a checkpoint's sub-folder of torch.distributed.checkpoint files


# --------------------------------------------------------------------------- the blocks
def network(model: nn.Module) -> nn.Module:
    """The network inside the wrappers that keep it as ``.net``: EDM's preconditioning
    (``models.EDMPrecond``), a consistency model (``models.ConsistencyModel``), a super-resolution
    model (``models.LowResConditioned``), a text model (``models.TextConditioned``); ``model``
    itself when it is none of these."""
    for _ in range(8):
        inner = getattr(model, "net", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def block_units(model: nn.Module) -> list[nn.Module]:
    """The network's repeated blocks, in forward order (seen through :func:`network`'s wrappers):

    - a network with a ``blocks`` ModuleList (the DiT's transformer blocks, the MLP's residual
      blocks): those;
    - the U-Net: every step of its down path, its middle (``mid_res1``, ``mid_attn`` and
      ``mid_cross`` where it has them, ``mid_res2``) and every step of its up path;
    - anything else: none (an empty list).
    """
    net = network(model)
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        return list(blocks)
    if isinstance(net, models.UNet):
        middle = [m for m in (net.mid_res1, net.mid_attn, net.mid_cross, net.mid_res2) if m is not None]
        return [*net.down, *middle, *net.up]
    return []


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units of their own (the root, ``model``, takes the rest).

    A unit's parameters are whole only inside its own forward (and backward), so a block
    whose weights the network reads elsewhere cannot be one. The U-Net computes every residual
    block's embedding projection at its top, in one matrix product of all their ``emb_proj``
    weights and ``conv1`` biases (``UNet.block_embeddings``): its whole network is one unit
    (parameters, gradients and moments still sharded between steps; all-gathered for the step).
    Other networks: their :func:`block_units`."""
    if isinstance(network(model), models.UNet):
        return []
    return block_units(model)


# --------------------------------------------------------------- activation checkpointing
def _recomputed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The block's own forward under ``torch.utils.checkpoint`` (non-reentrant; the CPU and
    device generator states saved and restored around the recomputation, so dropout repeats its
    masks). Without autograd recording (sampling, ``torch.no_grad``) there is nothing to save:
    the plain forward."""
    forward = type(self).forward  # the class's forward (FSDP's subclass inherits it)
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether :func:`checkpoint_activations` swapped ``module``'s forward."""
    return getattr(module.__dict__.get("forward"), "__func__", None) is _recomputed_forward


def checkpoint_activations(model: nn.Module) -> list[nn.Module]:
    """Recompute each of ``model``'s blocks (:func:`block_units`) in the backward instead of
    keeping its activations; returns the blocks. In place: each block's ``forward`` becomes a
    method bound to it (so ``copy.deepcopy`` rebinds it to the copy), its parameters, buffers
    and state-dict keys untouched. A network without blocks is refused (ValueError): there
    would be nothing to recompute."""
    units = block_units(model)
    if not units:
        raise ValueError(
            f"activation_checkpointing recomputes a network's blocks, and {type(network(model)).__name__} has "
            "none that difflab knows (a 'blocks' ModuleList, or the U-Net's down, middle and up steps); "
            "set activation_checkpointing: false")
    for unit in units:
        if not is_checkpointed(unit):
            unit.forward = types.MethodType(_recomputed_forward, unit)
    return units


# --------------------------------------------------------------------------- sharding
def process_mesh(device_type: str) -> DeviceMesh:
    """The one-dimensional mesh of all processes of the default group, on ``device_type``
    ("cpu" with gloo, "cuda" with NCCL): the processes FSDP shards over."""
    return init_device_mesh(device_type, (dist.get_world_size(),))


def shard(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard ``model`` in place with FSDP2 over ``mesh`` (:func:`process_mesh`): each of
    :func:`shard_units` a unit, then the root. Build the optimizer after this (the parameters
    become DTensors of their dim-0 shards). Returns ``model``."""
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard` (its root is an FSDP module)."""
    return isinstance(model, FSDPModule)


def grad_norm(parameters, max_norm: float) -> Tensor:
    """The global L2 norm of the gradients of ``parameters``, ||g|| = sqrt(sum over all shards of
    g_i^2), as a plain tensor; with ``max_norm > 0`` every gradient is then scaled by
    min(1, max_norm / (||g|| + 1e-6)), as ``torch.nn.utils.clip_grad_norm_`` does. Sharded
    gradients (DTensors) give a norm over their shards that every process then holds whole."""
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


# --------------------------------------------------------------------------- state
_FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(model: nn.Module) -> dict[str, Tensor]:
    """The whole weights of a sharded ``model`` (every process must call it: the shards are
    all-gathered), on the CPU of process 0; the other processes get an empty dict."""
    return get_model_state_dict(model, options=_FULL_ON_CPU)


def load_full_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> Optional[str]:
    """Load whole weights (a ``model.safetensors``, every process holding them) into a sharded
    ``model``, each process keeping its shards; every process must call it. Returns None, or --
    weights that do not fit the network -- the first difference (a missing or unexpected key, a
    shape), as ``checkpoint.load_matching`` does for a plain network."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # (DTensors: global shapes)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        return (f"Missing key(s) in state_dict: {', '.join(map(repr, missing[:4]))}" if missing
                else f"Unexpected key(s) in state_dict: {', '.join(map(repr, unexpected[:4]))}")
    for k, shape in expected.items():
        if tuple(weights[k].shape) != shape:
            return (f"size mismatch for {k}: copying a param with shape {list(weights[k].shape)} from "
                    f"checkpoint, the shape in current model is {list(shape)}")
    set_model_state_dict(model, dict(weights), options=StateDictOptions(full_state_dict=True))
    return None


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an unsharded optimizer's ``state_dict()`` (parameters numbered in the order of
    ``model.parameters()``, as the trainer builds its optimizer) into the optimizer of the
    sharded ``model``: each process keeps its shards of the moments. Every process must call it."""
    names = [name for name, _ in model.named_parameters()]
    by_name = {"state": {names[i]: dict(v) for i, v in state["state"].items()},
               "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _dcp(call, state: dict, folder) -> None:
    """``dcp.save`` or ``dcp.load`` of ``state`` at ``folder``, without a process group where
    there is none (one process: then DCP's warning that it assumes so is the intent, silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        call(state, checkpoint_id=str(folder), no_dist=not _distributed())


def save_sharded(folder, model: nn.Module, ema_model: Optional[nn.Module], optimizer: torch.optim.Optimizer) -> None:
    """Write the model's, the EMA's (``ema_model``; None when the EMA is the model itself) and
    the optimizer's state to ``folder`` with ``torch.distributed.checkpoint``: each process its
    own shards (a plain network: process 0 all of it), plus the metadata. Every process calls it
    with the same folder (a file system they share)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if ema_model is not None:
        state["ema"] = get_model_state_dict(ema_model)
    _dcp(dcp.save, state, folder)


def load_sharded(folder, model: nn.Module, ema_model: Optional[nn.Module], optimizer: torch.optim.Optimizer) -> None:
    """Read what :func:`save_sharded` wrote into ``model``, ``ema_model`` and ``optimizer``, at
    any number of processes and whether or not they are sharded (DCP reshards on reading). How
    the optimizer runs (fused, foreach, capturable) stays this run's choice. Every process calls
    it. A state that does not fit the network (another model's) raises ValueError with DCP's
    first reason (a missing key, a shape)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)  # (creates AdamW's moments, zero)
    state = {"model": model_state, "optimizer": optimizer_state}
    if ema_model is not None:
        state["ema"] = get_model_state_dict(ema_model)
    try:
        _dcp(dcp.load, state, folder)
    except dcp.CheckpointException as err:  # (a BaseException: every process's failures, with tracebacks)
        reason = next((exc for exc, _ in err.failures.values()), err)
        raise ValueError(f"{type(reason).__name__}: {' '.join(str(reason).split())}") from None
    for saved, now in zip(state["optimizer"]["param_groups"], optimizer.param_groups):
        saved.update({k: now[k] for k in ("fused", "foreach", "capturable") if k in now})
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if ema_model is not None:
        set_model_state_dict(ema_model, state["ema"])
